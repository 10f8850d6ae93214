"""Leading rows of a tensor, taken again and again as a batch shrinks, with one gradient buffer.

A teacher-forced decoder whose batch is sorted longest target first runs step t on the first
n_t rows only (the others have ended). It reads the attention memory x (B, ...) as x[:n_t] at
every step. Plain slicing would make autograd build a full-size zero gradient for each slice
and add them all up; here each step's gradient is added in place into the first n_t rows of one
buffer, which a root node returns as x's gradient once every step's backward has run (they all
depend on it, as in `nmt.fast.products`).
"""

from __future__ import annotations

import torch

from nmt import fast
from nmt.fast.products import Root


class Prefixes:
    """prefixes(n) is x[:n], with the gradients of all prefixes summed into one buffer."""

    def __init__(self, x: torch.Tensor) -> None:
        self.summed = _Sum()  # the graph's nodes hold this, not self: no reference cycle
        self.tracked = torch.is_grad_enabled() and x.requires_grad and fast.on("rows")
        self.root = Root.apply(x, self.summed) if self.tracked else x

    def __call__(self, n: int) -> torch.Tensor:
        return _Prefix.apply(self.root, n, self.summed) if self.tracked else self.root[:n]


class _Sum:
    grad: torch.Tensor | None = None  # (B, ...) the prefixes' summed gradient

    def finish(self, grad: torch.Tensor | None) -> torch.Tensor | None:
        """x's gradient: the prefixes' sum, plus that of any direct use of the root."""
        total, self.grad = self.grad, None
        if total is None:
            return grad
        return total if grad is None else total.add_(grad)


class _Prefix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, root: torch.Tensor, n: int, summed: _Sum) -> torch.Tensor:
        ctx.n, ctx.summed = n, summed
        ctx.shape, ctx.dtype, ctx.device = root.shape, root.dtype, root.device
        ctx.set_materialize_grads(False)
        return root[:n]

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None) -> tuple[None, None, None]:
        if grad is not None:
            summed = ctx.summed
            if summed.grad is None:
                summed.grad = torch.zeros(ctx.shape, dtype=ctx.dtype, device=ctx.device)
            summed.grad[:ctx.n] += grad
        return None, None, None

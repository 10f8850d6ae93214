"""Leading rows of a tensor, taken again and again as a batch shrinks, with one gradient buffer.

A teacher-forced decoder whose batch is sorted longest target first runs step t on the first
n_t rows only (the others have ended). It reads the attention memory x (B, ...) as x[:n_t] at
every step. Plain slicing would make autograd build a full-size zero gradient for each slice
and add them all up; here each step's gradient is added in place into the first n_t rows of one
buffer, which a root node returns as x's gradient once every step's backward has run (they all
depend on it, as in `nmt.model.deferred`).
"""

from __future__ import annotations

import torch


class Prefixes:
    """prefixes(n) is x[:n], with the gradients of all prefixes summed into one buffer."""

    def __init__(self, x: torch.Tensor) -> None:
        self.grad: torch.Tensor | None = None  # (B, ...) the prefixes' summed gradient
        self.tracked = torch.is_grad_enabled() and x.requires_grad
        self.root = _Root.apply(x, self) if self.tracked else x

    def __call__(self, n: int) -> torch.Tensor:
        return _Prefix.apply(self.root, n, self) if self.tracked else self.root[:n]


class _Root(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, prefixes: Prefixes) -> torch.Tensor:
        ctx.prefixes = prefixes
        ctx.set_materialize_grads(False)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:
        summed, ctx.prefixes.grad = ctx.prefixes.grad, None
        if summed is None:
            return grad, None
        return (summed if grad is None else summed.add_(grad)), None


class _Prefix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, root: torch.Tensor, n: int, prefixes: Prefixes) -> torch.Tensor:
        ctx.n, ctx.prefixes = n, prefixes
        ctx.shape, ctx.dtype, ctx.device = root.shape, root.dtype, root.device
        ctx.set_materialize_grads(False)
        return root[:n]

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None) -> tuple[None, None, None]:
        if grad is not None:
            p = ctx.prefixes
            if p.grad is None:
                p.grad = torch.zeros(ctx.shape, dtype=ctx.dtype, device=ctx.device)
            p.grad[:ctx.n] += grad
        return None, None, None

"""The weight products of a recurrent loop, made cheap on a CPU, chosen by the caller.

A decoder multiplies the same weight W (O, D) by a thin (B, D) input at each of T steps, then,
in the backward pass, its output gradient by W again, and autograd sums T thin products
x_t^T g_t into W's gradient. Thin products are slow on a CPU, because every call re-reads and
re-packs all of W for only B rows. The model computes each such product as
`products.linear(x, W)`, where its caller chose `products`:

  * `PLAIN`: F.linear, the model as written;
  * `for_loop()`, one teacher-forced loop (training, the validation loss): packs W once for
    oneDNN (and W^T once per backward pass), so each step's product reads the packed copy, and
    records each step's x_t and output gradient g_t during the backward pass to compute W's
    gradient as one product over all T * B rows,

        dL/dW = [g_1; ...; g_T]^T [x_1; ...; x_T]          (O, T*B) @ (T*B, D)

    the same sum, up to floating-point rounding. The input gradients g_t W stay per step, as
    the recurrence needs them;
  * `for_inference(int8)`, a translator's: weights packed once, at first use, and kept with
    other values derived from them (`kept`: the decoder's gate table) for as long as the object
    lives, so the weights must not change meanwhile. With `int8`, the weights are packed as
    8-bit integers instead, one scale per output row, and each product quantizes its input on
    the fly (torch's dynamic quantization, fbgemm): faster products, slightly different results.

Anything but fp32 on a CPU (CUDA, autocast) runs F.linear in all of them.

How the gradient is deferred: a loop's first use of a weight passes it through `Root`, an
identity whose backward runs only after every step that used it (they all depend on it), and so
is the one place that sees all the recorded pairs and returns the weight's whole gradient, once.
"""
from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

from nmt import fast

log = logging.getLogger(__name__)

MIN_PACKED = 64  # pack weights whose both dimensions are at least this
T = TypeVar("T")


def _handled(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Plain fp32 products on a CPU; anything else (CUDA, autocast, other dtypes) is F.linear."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


def _packable(weight: torch.Tensor) -> bool:
    return min(weight.shape) >= MIN_PACKED and onednn_packing()


def _probe(name: str, make: Callable[[torch.Tensor], Callable], tolerance: float) -> bool:
    """Whether torch's private operators behind `make` exist and compute F.linear on a small
    case (relative error of the product below `tolerance`); where they do not, says so once
    and the caller falls back to supported ones."""
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(MIN_PACKED, MIN_PACKED, generator=gen), torch.randn(3, MIN_PACKED,
                                                                            generator=gen)
    try:
        with torch.no_grad():
            expected = F.linear(x, w)
            ok = bool((make(w)(x) - expected).norm() <= tolerance * expected.norm())
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        ok = False
    if not ok:
        log.warning("%s: not available in this torch %s; using plain products (slower)", name,
                    torch.__version__)
    return ok


@functools.cache
def onednn_packing() -> bool:
    """oneDNN's packed fp32 products (torch.ops.mkldnn, private) work here."""
    return torch.backends.mkldnn.is_available() and _probe(
        "oneDNN weight packing", lambda w: _Packed(w, 3), 1e-5)


@functools.cache
def int8_products() -> bool:
    """fbgemm's dynamic int8 products (torch.ops.quantized, deprecated) work here."""
    return _probe("8-bit products", _PackedInt8, 0.05)  # 8 bits: about 1% here


class _Packed:
    """A (O, D) weight packed once for oneDNN products with many inputs."""

    def __init__(self, weight: torch.Tensor, rows: int) -> None:
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., O)."""
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.size(-1)).contiguous(),
                                                 self.weight, None, "none", [], "")
        return out.view(*x.shape[:-1], out.size(-1))


def int8_available() -> bool:
    """Whether a translator's int8 products run here (the fast layer on, fbgemm working)."""
    return fast.enabled() and int8_products()


class _PackedInt8:
    """A (O, D) weight quantized to int8 per output row and packed for dynamic-quantized
    products (inference only)."""

    def __init__(self, weight: torch.Tensor) -> None:
        scale = (weight.abs().amax(dim=1).double() / 127).clamp(min=1e-12)  # (O,)
        zero = torch.zeros(weight.size(0), dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao
            warnings.simplefilter("ignore", UserWarning)
            q = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        self.weight = torch.ops.quantized.linear_prepack(q, None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., O)."""
        # reduce_range: 7-bit inputs, so that fbgemm's 16-bit pairwise sums cannot saturate
        return torch.ops.quantized.linear_dynamic(x.contiguous(), self.weight, True)


class Products:
    """The products of the model as written: F.linear, nothing packed, nothing kept."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x (..., D) @ weight (O, D)^T -> (..., O), as F.linear without bias."""
        return F.linear(x, weight)

    def kept(self, weight: torch.Tensor, kind: str, make: Callable[[], T]) -> T | None:
        """A value derived from `weight`, made once and kept; None where nothing is kept."""
        return None


PLAIN = Products()


def for_loop() -> Products:
    """The products of one teacher-forced step loop: a new object per loop."""
    return _StepLoop() if fast.on("products") else PLAIN


def for_inference(int8: bool = False) -> Products:
    """A translator's products: packs made once (8-bit ones with `int8`, where fbgemm works),
    kept while the object lives; the weights must not change meanwhile."""
    return _Inference(int8) if fast.enabled() else PLAIN


class _Inference(Products):
    def __init__(self, int8: bool) -> None:
        self.int8 = int8
        self.values: dict[tuple[int, str], tuple[torch.Tensor, object]] = {}

    def kept(self, weight: torch.Tensor, kind: str, make: Callable[[], T]) -> T | None:
        key = (id(weight), kind)  # the entry holds the weight, so its id stays its own
        if key not in self.values:
            self.values[key] = (weight, make())
        return self.values[key][1]  # type: ignore[return-value]

    def _pack(self, weight: torch.Tensor, rows: int) -> _Packed | _PackedInt8 | None:
        if self.int8 and int8_products():
            return _PackedInt8(weight.detach())
        if fast.on("products") and _packable(weight):
            return _Packed(weight.detach(), rows)
        return None

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not _handled(x, weight) or min(weight.shape) < MIN_PACKED:
            return F.linear(x, weight)
        rows = max(1, x.numel() // x.size(-1))
        pack = self.kept(weight, "int8" if self.int8 else "fp32", lambda: self._pack(weight, rows))
        return F.linear(x, weight) if pack is None else pack(x)


class _Record:
    """One weight's state in a loop: its packed copies and the (input, output gradient) pairs
    of its uses. The alias's graph node holds the record, so the record must not hold the alias
    (the loop does)."""

    def __init__(self, weight: torch.Tensor, x: torch.Tensor) -> None:
        self.rows = max(1, x.numel() // x.size(-1))
        self.packed = _Packed(weight.detach(), self.rows) if _packable(weight) else None
        self.packed_t: _Packed | None = None  # W^T, for the input gradients
        self.inputs: list[torch.Tensor] = []  # each (N_t, D)
        self.grads: list[torch.Tensor] = []  # each (N_t, O)

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight) if self.packed is None else self.packed(x)

    def input_grad(self, grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return grad @ weight
        if self.packed_t is None:
            self.packed_t = _Packed(weight.t(), self.rows)
        return self.packed_t(grad)

    def finish(self, _unused: torch.Tensor | None) -> torch.Tensor | None:
        """The weight's whole gradient, once every use has recorded its pair."""
        if not self.inputs:
            return None
        grad = torch.cat(self.grads).t() @ torch.cat(self.inputs)  # (O, D), one product
        self.inputs.clear()
        self.grads.clear()
        self.packed_t = None
        return grad


class Root(torch.autograd.Function):
    """Root.apply(x, holder) is x (a view), and its backward returns holder.finish(grad): it
    runs after every use of the view, which all depend on it, so the holder can return a
    gradient gathered from them all. Holders must not hold the view (a reference cycle)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, holder) -> torch.Tensor:
        ctx.holder = holder
        ctx.set_materialize_grads(False)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:
        return ctx.holder.finish(grad), None


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, record: _Record) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.record = record
        return record.forward(x, weight)  # (..., O)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        r = ctx.record
        r.inputs.append(x.reshape(-1, x.size(-1)))
        r.grads.append(grad.reshape(-1, grad.size(-1)))
        grad_x = r.input_grad(grad, weight) if ctx.needs_input_grad[0] else None  # (..., D)
        return grad_x, None, None  # the weight's gradient comes from Root


class _StepLoop(Products):
    def __init__(self) -> None:
        self.records: dict[int, tuple[_Record, torch.Tensor]] = {}  # record, alias in the graph

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if not _handled(x, weight):
            return F.linear(x, weight)
        if id(weight) not in self.records:
            record = _Record(weight, x)
            alias = Root.apply(weight, record) if torch.is_grad_enabled() else weight
            self.records[id(weight)] = record, alias
        record, alias = self.records[id(weight)]
        if torch.is_grad_enabled() and weight.requires_grad:
            return _Linear.apply(x, alias, record)
        return record.forward(x, weight)

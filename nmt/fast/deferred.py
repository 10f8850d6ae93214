"""Linear layers applied at every step of a recurrent loop, made cheap on a CPU.

A decoder multiplies the same weight W (O, D) by a thin (B, D) input at each of T steps, then,
in the backward pass, its output gradient by W again, and autograd sums T thin products
x_t^T g_t into W's gradient. Thin products are slow on a CPU, because every call re-reads and
re-packs all of W for only B rows. Inside `step_loop()`, `linear` instead

  * packs W once per loop for oneDNN (and W^T once per backward pass), so each step's product
    reads the packed copy: up to 3x faster for B of 10-25 rows here, less for wider B;
  * records each step's x_t and output gradient g_t during the backward pass and computes W's
    gradient as one product over all T * B rows,

        dL/dW = [g_1; ...; g_T]^T [x_1; ...; x_T]          (O, T*B) @ (T*B, D)

    the same sum, up to floating-point rounding. The input gradients g_t W stay per step, as
    the recurrence needs them.

Outside the block, and inside it for anything but fp32 on a CPU (CUDA, autocast), `linear` is
`F.linear`.

`step_loop(int8=True)`, for inference on a CPU only, packs the weights as 8-bit integers instead,
one scale per output row, and each product quantizes its input on the fly (torch's dynamic
quantization, fbgemm): faster products, slightly different results.

Without gradients, each loop packs its weights once; inside `keep_packs()`, every loop of the
block reuses the same packs (and other values derived from weights, through `kept`: the
decoder's gate table), so the weights must not change there (a translation, a validation).
Packs cannot follow weight updates by themselves: fused optimizers update parameters in place
without bumping their version counter.

How: the first use of a weight in the block passes it through `Root`, an identity whose backward
runs only after every step that used it (they all depend on it), and so is the one place that
sees all the recorded pairs and returns the weight's whole gradient, once.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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


_KEPT: ContextVar[dict | None] = ContextVar("keep_packs", default=None)


@contextmanager
def keep_packs() -> Iterator[None]:
    """Inference packs made in the block are reused by every later loop in it; the weights must
    not change until it ends. Nested blocks share the outermost one's packs."""
    token = _KEPT.set({}) if _KEPT.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _KEPT.reset(token)


def kept(weight: torch.Tensor, kind: str, make: Callable[[], T]) -> T | None:
    """A value derived from `weight`, made once per `keep_packs()` block; None outside one."""
    block = _KEPT.get()
    if block is None or not fast.enabled():
        return None
    key = (id(weight), kind)  # the block holds the weight, so its id stays its own
    if key not in block:
        block[key] = (weight, make())
    return block[key][1]


def _inference_pack(weight: torch.Tensor, rows: int, int8: bool) -> _Packed | _PackedInt8:
    def make() -> _Packed | _PackedInt8:
        if int8 and int8_products():
            return _PackedInt8(weight.detach())
        return _Packed(weight.detach(), rows)

    return kept(weight, "int8" if int8 else "fp32", make) or make()


class _Loop:
    def __init__(self, int8: bool) -> None:
        self.int8 = int8
        self.records: dict[int, tuple[_Record, torch.Tensor]] = {}  # record, alias in the graph


class _Record:
    """One weight's state in the loop: its packed copies and the (input, output gradient) pairs
    of its uses. The alias's graph node holds the record, so the record must not hold the alias
    (the loop does)."""

    def __init__(self, weight: torch.Tensor, x: torch.Tensor, int8: bool) -> None:
        self.rows = max(1, x.numel() // x.size(-1))
        self.packed: _Packed | _PackedInt8 | None = None
        if _packable(weight):
            self.packed = (_Packed(weight.detach(), self.rows) if torch.is_grad_enabled()
                           else _inference_pack(weight, self.rows, int8))
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


_LOOP: ContextVar[_Loop | None] = ContextVar("step_loop", default=None)


@contextmanager
def step_loop(int8: bool | None = None) -> Iterator[None]:
    """Within the block, `linear` packs weights once and defers weight gradients. `int8`
    (inference only; None: as the enclosing block, else False) packs them as 8-bit integers."""
    outer = _LOOP.get()
    token = _LOOP.set(_Loop(bool(outer and outer.int8) if int8 is None else int8))
    try:
        yield
    finally:
        _LOOP.reset(token)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., D) @ weight (O, D)^T -> (..., O), as F.linear without bias."""
    loop = _LOOP.get()
    if loop is None or not fast.enabled() or not _handled(x, weight):
        return F.linear(x, weight)
    if id(weight) not in loop.records:
        record = _Record(weight, x, loop.int8)
        alias = Root.apply(weight, record) if torch.is_grad_enabled() else weight
        loop.records[id(weight)] = record, alias
    record, alias = loop.records[id(weight)]
    if torch.is_grad_enabled() and weight.requires_grad:
        return _Linear.apply(x, alias, record)
    return record.forward(x, weight)

"""8-bit weight products for a search on a CPU (`decode.precision: int8`).

A search multiplies the same weights by a thin input at every step. `products()` gives a
translator `Products` (`nmt.model.operations`) that quantizes each weight of at least
MIN_PACKED x MIN_PACKED to int8 once, at first use, one scale per output row, and packs it for
fbgemm's dynamic-quantized products, which quantize each input on the fly with one scale for
the whole input: faster products, with results that differ from fp32's by about 1%, and that
depend on the other rows of a batch. Packs are kept for as long as the object lives, so the
weights must not change meanwhile.

fbgemm's operators (`torch.ops.quantized`) are deprecated in favour of torchao and private to
torch; `available()` probes them once and says so where they are missing, and a search then
runs in fp32.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch
import torch.nn.functional as F

from nmt import fast
from nmt.model.operations import PLAIN, Products

log = logging.getLogger(__name__)

MIN_PACKED = 64  # quantize weights whose both dimensions are at least this


class _PackedInt8:
    """A (O, D) weight quantized to int8 per output row and packed for dynamic-quantized
    products."""

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


@functools.cache
def _works() -> bool:
    """Whether fbgemm's dynamic int8 products exist here and compute F.linear on a small case
    (relative error below 5%: 8 bits give about 1% here); says so once where they do not."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(MIN_PACKED, MIN_PACKED, generator=gen)
    x = torch.randn(3, MIN_PACKED, generator=gen)
    try:
        with torch.no_grad():
            expected = F.linear(x, w)
            ok = bool((_PackedInt8(w)(x) - expected).norm() <= 0.05 * expected.norm())
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        ok = False
    if not ok:
        log.warning("8-bit products: not available in this torch %s; searching in fp32",
                    torch.__version__)
    return ok


def available() -> bool:
    """Whether a translator's int8 products run here (the fast layer's `int8` piece on, fbgemm
    working)."""
    return fast.on("int8") and _works()


class Int8Products(Products):
    def __init__(self) -> None:
        self.packs: dict[int, tuple[torch.Tensor, _PackedInt8 | None]] = {}

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() or x.device.type != "cpu"
                or not x.dtype == weight.dtype == torch.float32):
            return F.linear(x, weight)
        if id(weight) not in self.packs:  # the entry holds the weight, so its id stays its own
            small = min(weight.shape) < MIN_PACKED
            self.packs[id(weight)] = weight, None if small else _PackedInt8(weight.detach())
        pack = self.packs[id(weight)][1]
        return F.linear(x, weight) if pack is None else pack(x)


def products() -> Products:
    """A translator's int8 products, made once per translator; F.linear where they are not
    available."""
    return Int8Products() if available() else PLAIN

"""8-bit weight products for a search on a CPU (`decode.precision: int8`).

A search multiplies the same weights by a thin input at every step. `quantized(model)` gives a
copy of a built model whose decoder and output layer hold 8-bit weights: each weight of at
least MIN_PACKED x MIN_PACKED that a step multiplies with `F.linear` (the `nn.Linear` layers
and the decoder's recurrent weights; not the attention's projections of the encoder's states,
made once per batch over every source position) is quantized to int8 once, one scale per output
row, packed for fbgemm's dynamic-quantized products, and put in the copy as an `Int8Weight`, a
tensor whose `F.linear` runs the packed product (PyTorch's `__torch_function__` protocol, as
torchao's quantized weights do). The model's code does not change: it calls `F.linear` as in
fp32. The products quantize each input on the fly with one scale for the whole input: faster,
with results that differ from fp32's by about 1%, and that depend on the other rows of a batch.
Products that need a gradient, or take another dtype or device, run as F.linear on the
original weight.

fbgemm's operators (`torch.ops.quantized`) are deprecated in favour of torchao and private to
torch, as is the switch that runs a tensor subclass's other operations as plain ones;
`available()` probes both once and says so where they are missing, and a search then runs in
fp32.
"""

from __future__ import annotations

import functools
import logging
import warnings
from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn

from nmt import fast

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


class Int8Weight(torch.Tensor):
    """A float32 weight (O, D) whose products `F.linear(x, weight)` run with its 8-bit pack
    when no gradient is needed; every other use sees the float32 weight."""

    @staticmethod
    def __new__(cls, weight: torch.Tensor) -> Int8Weight:
        return torch.Tensor._make_subclass(cls, weight.detach(), False)

    def __init__(self, weight: torch.Tensor) -> None:
        self.pack = _PackedInt8(weight.detach())

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and not torch.is_grad_enabled():
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if (isinstance(weight, Int8Weight) and not isinstance(x, Int8Weight)
                    and x.device.type == "cpu" and x.dtype == torch.float32):
                out = weight.pack(x)
                return out if bias is None else out + bias
        with torch._C.DisableTorchFunctionSubclass():  # anything else: the float32 weight
            return func(*args, **kwargs)


ONCE_PER_BATCH = ("key_layer", "value_layer")  # projections of the encoder's states


def _quantize_(module: nn.Module) -> None:
    """Replaces, in place, the large F.linear weights of `module` and its children (but the
    projections of the encoder's states) by Int8Weights; they stop being parameters: the
    module is for searches only."""
    for path, child in module.named_modules():
        if path.rsplit(".", 1)[-1] in ONCE_PER_BATCH:
            continue
        if isinstance(child, nn.Linear):
            names = ["weight"]
        elif isinstance(child, nn.ParameterList):
            names = [name for name, w in child.named_parameters(recurse=False) if w.dim() == 2]
        else:
            continue
        for name in names:
            weight = getattr(child, name)
            if min(weight.shape) >= MIN_PACKED:
                del child._parameters[name]
                setattr(child, name, Int8Weight(weight))


@functools.cache
def _works() -> bool:
    """Whether fbgemm's dynamic int8 products exist here and compute a quantized layer's
    F.linear on a small case (relative error below 5%: 8 bits give about 1% here), while its
    weight's other operations stay plain float32 ones; says so once where they do not."""
    gen = torch.Generator().manual_seed(0)  # the global generator is training's: left alone
    layer = nn.utils.skip_init(nn.Linear, MIN_PACKED, MIN_PACKED)
    nn.init.normal_(layer.weight, generator=gen)
    nn.init.zeros_(layer.bias)
    x = torch.randn(3, MIN_PACKED, generator=gen)
    try:
        with torch.no_grad():
            expected, weight = layer(x), layer.weight.clone()
            _quantize_(layer)
            got, doubled = layer(x), layer.weight * 2
            ok = (isinstance(layer.weight, Int8Weight) and not torch.equal(got, expected)
                  and bool((got - expected).norm() <= 0.05 * expected.norm())
                  and type(doubled) is torch.Tensor and torch.equal(doubled, weight * 2))
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


def quantized(model: nn.Module) -> nn.Module:
    """A copy of `model` for searches, with 8-bit weights in its decoder and output layer
    (`model.decoder`, `model.generator`; each member's, for an ensemble); the model itself where
    int8 products are not available."""
    if not available():
        return model
    copy = deepcopy(model)
    members = copy.models if hasattr(copy, "models") else [copy]
    for member in members:
        _quantize_(member.decoder)
        _quantize_(member.generator)
    return copy

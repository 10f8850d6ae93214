"""The fast layer, apart from the model that reads as the paper. Its pieces, each kept because
it pays at least 5% on top of bf16 in training or in the default search (docs/performance.md):

  kernels   the additive score, the decoder's LSTM cell and the cross-entropy with its gradient
            as fused C++ operators registered with `torch.library` (`nmt.fast.kernels`);
            training and translation build the model with them (`build_model(...,
            kernels.FUSED)`);
  int8      a copy of a built model whose decoder and output layer hold 8-bit weights
            (`nmt.fast.int8.quantized`), which a translator searches in
            `decode.precision: int8` (and `auto`).

The model (`nmt.model`) imports nothing from here: it computes through
`nmt.model.operations` and `F.linear`, and whoever builds or runs it chooses the
implementation, when building it or by transforming the built model.

`NMT_FAST` says which pieces run: unset or 1, all of them; 0, none (the plain PyTorch model,
which the fast paths are tested against: the test suite runs both ways); or a comma-separated
list of the pieces that run (`NMT_FAST=kernels`). Set it before nmt starts; it is read once.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

PIECES = ("kernels", "int8")


def _parse(value: str) -> frozenset[str]:
    if value.strip() in ("", "1"):
        return frozenset(PIECES)
    if value.strip() == "0":
        return frozenset()
    named = {p.strip() for p in value.split(",") if p.strip()}
    for unknown in sorted(named - set(PIECES)):
        log.warning("NMT_FAST: unknown piece %r ignored (pieces: %s)", unknown, ", ".join(PIECES))
    return frozenset(named & set(PIECES))


_ON = _parse(os.environ.get("NMT_FAST", "1"))


def on(piece: str) -> bool:
    """Whether the fast layer's `piece` (one of PIECES) runs."""
    return piece in _ON


def enabled() -> bool:
    """Whether any piece runs (NMT_FAST=0 turns them all off)."""
    return bool(_ON)

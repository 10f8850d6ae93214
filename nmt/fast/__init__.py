"""The fast layer, apart from the model that reads as the paper. Its pieces:

  products  packed weights for the products of a step loop, and in training one product for
            each weight's gradient over all steps (`nmt.fast.products`, the only user of torch's
            private oneDNN and 8-bit operators, each behind a probe);
  kernels   fused element-wise operators, PyTorch custom operators in C++ (`nmt.fast.kernels`):
            the additive score, the decoder's LSTM cell, the cross-entropy with its gradient;
  gates     in search, each target token's contribution to the decoder's gates, looked up in a
            table made once instead of a product per step (`Decoder.embed_inputs`);
  rows      teacher forcing that drops ended rows from later steps (`nmt.fast.rows`).

`NMT_FAST` says which run: unset or 1, all of them; 0, none (the plain PyTorch model, which the
fast paths are tested against: the test suite runs both ways); or a comma-separated list of the
pieces that run (`NMT_FAST=products,kernels`). Set it before nmt starts; it is read once.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

PIECES = ("products", "kernels", "gates", "rows")


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

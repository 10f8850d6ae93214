"""Whether the fast layer runs: fused CPU kernels (`nmt.kernels`), packed and 8-bit products and
deferred weight gradients (`nmt.model.deferred`), the search's gate table, and teacher forcing
that skips ended rows (`nmt.model.decoder`, `nmt.model.rows`).

`NMT_FAST=0` turns all of them off: the plain PyTorch model, which the fast paths are tested
against (the test suite runs both ways). Set it before nmt starts; it is read once.
"""

from __future__ import annotations

import os

_ENABLED = os.environ.get("NMT_FAST", "1") != "0"


def enabled() -> bool:
    return _ENABLED

"""The fast layer, apart from the model that reads as the paper: packed and 8-bit products and
deferred weight gradients (`nmt.fast.deferred`, the only user of torch's private operators),
row prefixes for teacher forcing that skips ended rows (`nmt.fast.rows`), with the fused CPU
kernels (`nmt.kernels`) and the search's gate table. This module says whether it runs.

`NMT_FAST=0` turns all of them off: the plain PyTorch model, which the fast paths are tested
against (the test suite runs both ways). Set it before nmt starts; it is read once.
"""

from __future__ import annotations

import os

_ENABLED = os.environ.get("NMT_FAST", "1") != "0"


def enabled() -> bool:
    return _ENABLED

"""Which torch device a command runs on."""

from __future__ import annotations

import torch

from nmt.errors import UsageError


def pick_device(name: str) -> torch.device:
    """`cpu`, `cuda` (an error without a GPU) or `auto` (CUDA when present)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available (use --device cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)

"""Random-number state of one process: captured and restored whole, so a resumed run draws the
same dropout masks, Gumbel noise and Python/NumPy numbers as a run never interrupted.

Each process of a multi-process run has its own streams (seeded per rank); a checkpoint keeps
one `State` per rank, and each rank restores its own.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture(device: torch.device) -> dict:
    """This process's generators: torch's CPU one, the CUDA one of `device`, Python's, NumPy's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def restore(state: dict, device: torch.device) -> None:
    """Sets the generators `capture` saw (states written before CUDA and NumPy were saved
    restore what they hold)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if state.get("numpy") is not None:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))

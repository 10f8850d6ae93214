"""Numeric precision of training (`nmt.precision` says what runs in which dtype):

    auto   CUDA: bf16 where the GPU supports it, else fp16; CPU: bf16 where the CPU multiplies
           bfloat16 natively (`nmt.precision.cpu_bf16`), else fp32
    fp32   everywhere
    bf16   CUDA, or a CPU (a warning where its bfloat16 is emulated, and slower)
    fp16   CUDA only, with dynamic loss scaling
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch

from nmt import precision as numerics
from nmt.errors import UsageError


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32."""
    if device.type == "cuda":
        if precision == "fp32":
            return None
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "fp16":
        raise UsageError(f"train.precision: 'fp16' needs a CUDA device (use 'auto', 'bf16' or "
                         f"'fp32' on {device.type})")
    return numerics.cpu_dtype(precision, "train.precision")


class Precision:
    def __init__(self, precision: str, device: torch.device) -> None:
        self.device = device
        self.dtype = autocast_dtype(precision, device)
        self.scaler = (torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None)

    def autocast(self) -> AbstractContextManager:
        return numerics.autocast(self.dtype, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter],
             clip_norm: float) -> None:
        """Unscales (fp16), clips the gradient norm and steps."""
        if self.scaler:
            self.scaler.unscale_(optimizer)
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(list(params), clip_norm)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

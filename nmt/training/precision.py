"""Numeric precision of training: fp32, or mixed precision on CUDA (torch.autocast), with a
gradient scaler for fp16 (bf16 has fp32's range and needs none).

    auto   CUDA: bf16 where the GPU supports it, else fp16; CPU: fp32 (exact, the default there)
    fp32   everywhere
    bf16   CUDA only
    fp16   CUDA only, with dynamic loss scaling
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext

import torch

from nmt.errors import UsageError


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise UsageError(f"train.precision: {precision!r} needs a CUDA device "
                         f"(use 'auto' or 'fp32' on {device.type})")
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


class Precision:
    def __init__(self, precision: str, device: torch.device) -> None:
        self.device = device
        self.dtype = autocast_dtype(precision, device)
        self.scaler = (torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None)

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

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

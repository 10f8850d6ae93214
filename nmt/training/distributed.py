"""Data-parallel training on torch.distributed (DistributedDataParallel), launched by torchrun.

    torchrun --nproc-per-node N -m nmt train -c CONFIG      # `nmt train --nproc N` runs this
    torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m nmt train -c CONFIG                               # M machines

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init` joins the process group (gloo on CPU,
nccl on CUDA). Every rank builds the same batch list (same seed and epoch); an update takes the
next world x accumulate batches, and rank r computes batches r, r + world, ... of them. Losses
are scaled so that DDP's gradient average equals the gradient of one single-process update over
all of those batches. Only rank 0 validates, logs and writes files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def from_env() -> Dist:
    """This process's place in a torchrun launch (a single process without torchrun)."""
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))


def init(d: Dist, device: torch.device) -> None:
    if d.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def from_main(d: Dist, value: object) -> object:
    """Rank 0's `value` on every rank."""
    if not d.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_all(d: Dist, value: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a tensor (in place)."""
    if d.enabled:
        dist.all_reduce(value)
    return value


class TrainingLoss(nn.Module):
    """The model's summed training loss as `forward`, so that DDP, which hooks `forward`, can
    wrap it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor,
                tgt_out: torch.Tensor, label_smoothing: float) -> tuple[torch.Tensor, int]:
        return self.model.loss(src, src_len, tgt_in, tgt_out, label_smoothing)


def wrap(loss: TrainingLoss, d: Dist, device: torch.device) -> nn.Module:
    if not d.enabled:
        return loss
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(loss, device_ids=ids)


def launch(nproc: int, args: list[str]) -> int:
    """Runs `nmt <args>` in `nproc` processes on this machine with torchrun; returns its exit
    code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "nmt", *args]
    return subprocess.call(cmd)

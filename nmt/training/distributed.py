"""Data-parallel training on torch.distributed (DistributedDataParallel), launched by torchrun.

    torchrun --nproc-per-node N -m nmt train -c CONFIG      # `nmt train --nproc N` runs this
    torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m nmt train -c CONFIG                               # M machines

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init` joins the process group (gloo on CPU,
nccl on CUDA). Every rank builds the same batch list (same seed and epoch); an update takes the
next world x accumulate batches, and rank r computes batches r, r + world, ... of them. Losses
are scaled so that DDP's gradient average equals the gradient of one single-process update over
all of those batches.

DDP averages gradients, not parameters, so the copies stay one model only while every rank takes
the same steps: every decision that changes training (learning rate, stopping, best checkpoint)
is taken once, by rank 0, and shared (`from_main`), and at each validation the ranks compare
digests of their parameters (`digest`, `gather`). Only rank 0 validates, logs and writes files;
each rank's random-number state is saved as its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
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


def leave(d: Dist) -> None:
    """Ends a torchrun process whose training is done, saved and shut down, without the C++
    destructors of interpreter teardown: Gloo's threads can abort a process there (SIGABRT,
    "terminate called without an active exception") after every file is written."""
    if d.enabled:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


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


def gather(d: Dist, value: object) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    if not d.enabled:
        return [value]
    out: list = [None] * d.world
    dist.all_gather_object(out, value)
    return out


def digest(state: dict[str, torch.Tensor]) -> str:
    """A hash of a state dict's exact bytes (names in order): equal digests, equal tensors."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


_LAUNCHER_LOGGERS = ("torch.distributed.elastic", "torch.distributed.run",
                     "torch.distributed.launcher")


def launch(nproc: int, args: list[str]) -> int:
    """Runs `nmt <args>` in `nproc` processes on this machine, as torchrun does; returns the exit
    code of the first process that failed (each has printed its own one-line error), else 0."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name, logger in list(logging.root.manager.loggerDict.items()):  # the launcher's notices
        if name.startswith(_LAUNCHER_LOGGERS) and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its notice
    options = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "nmt", *args])
    try:
        run(options)
    except SignalException as err:  # Ctrl-C or SIGTERM: passed on to the processes, which save
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        code = failure.exitcode
        return code if code > 0 else 128 - code  # killed by signal N: 128 + N
    return 0

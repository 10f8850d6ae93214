"""Whether a model fits in memory, asked before it is allocated: a hidden size of tens of
thousands should end in one line naming the sizes, not in an allocator's traceback."""

from __future__ import annotations

import os

import torch

from nmt.config import ModelConfig
from nmt.errors import NmtError
from nmt.model.operations import PLAIN_OPERATIONS, Operations
from nmt.model.seq2seq import Seq2Seq, build_model, count_parameters

# Bytes per fp32 parameter while training: the weight, its gradient and Adam's two moments.
TRAINING_BYTES = 4 * 4


class OutOfMemory(NmtError):
    """The model, or a batch, needs more memory than the device has."""


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is an allocator's failure: torch raises RuntimeError on the CPU (`can't
    allocate memory`) and OutOfMemoryError on CUDA."""
    return (isinstance(err, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in str(err) or "out of memory" in str(err).lower())


def available_bytes(device: torch.device) -> int:
    """Memory free for a new allocation: the GPU's free memory, or the system's available
    memory (MemAvailable, else free pages)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _sizes(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> str:
    return (f"model.emb_size {cfg.emb_size}, hidden_size {cfg.hidden_size}, decoder_size "
            f"{cfg.decoder_size}, vocabularies {src_vocab}/{tgt_vocab}")


def allocate_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, device: torch.device,
                   operations: Operations = PLAIN_OPERATIONS) -> Seq2Seq:
    """Builds the model (computing through `operations`) on `device` once its training memory
    is known to fit there; a failed allocation becomes an `OutOfMemory` too."""
    with torch.device("meta"):  # shapes only, no memory
        params = count_parameters(build_model(cfg, src_vocab, tgt_vocab))
    need, have = params * TRAINING_BYTES, available_bytes(device)
    if need > have:
        raise OutOfMemory(f"the model has {params:,} parameters and needs at least "
                          f"{need / 2**30:,.1f} GiB to train (weights, gradients, Adam state); "
                          f"{device.type} has {have / 2**30:,.1f} GiB available "
                          f"({_sizes(cfg, src_vocab, tgt_vocab)})")
    try:
        return build_model(cfg, src_vocab, tgt_vocab, operations).to(device)
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        raise OutOfMemory(f"out of memory while allocating the model of {params:,} parameters "
                          f"({_sizes(cfg, src_vocab, tgt_vocab)})") from None

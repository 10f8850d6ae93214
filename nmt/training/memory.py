"""Whether a model fits in memory, asked before it is allocated: a hidden size of tens of
thousands should end in one line naming the sizes, not in an allocator's traceback. The
parameters are counted from the config with Python's integers, which no size overflows, and no
module is built to count them."""

from __future__ import annotations

import os

import torch

from nmt.config import ModelConfig
from nmt.errors import NmtError
from nmt.model.operations import PLAIN_OPERATIONS, Operations
from nmt.model.seq2seq import Seq2Seq, build_model

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


def _lstm(input_size: int, hidden_size: int) -> int:
    """Parameters of one LSTM layer in one direction: input and recurrent weights of the four
    gates, and nn.LSTM's two biases."""
    return 4 * hidden_size * (input_size + hidden_size + 2)


def parameter_count(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> int:
    """The parameters `build_model(cfg, src_vocab, tgt_vocab)` would have, counted from the
    sizes alone (tied weights once); `tests/test_memory.py` holds it to the built model's
    count for every architecture the config can describe."""
    e, k, h, a = cfg.emb_size, 2 * cfg.hidden_size, cfg.decoder_size, cfg.attention
    encoder = (src_vocab * e + 2 * _lstm(e, cfg.hidden_size)
               + 2 * (cfg.enc_layers - 1) * _lstm(k, cfg.hidden_size))
    context = 0 if a.type == "none" else k
    attention = 0
    if a.type != "none":
        attention = {"additive": (k + h + 1) * a.size, "dot": 0, "general": k * h}[a.score]
        if a.type == "global" and a.coverage:
            attention += a.size  # V, the coverage weights
        elif a.type == "global" and a.heads > 1:
            attention += k * k  # W_V, the values of the heads
        elif a.type == "local-p":
            attention += (h + 1) * a.size  # W_p, v_p
    early = a.wiring == "bahdanau"
    feed = context if early else h if cfg.input_feeding else 0
    layers = cfg.dec_layers
    decoder = (tgt_vocab * e + (e + 1) * 4 * h + 4 * h * (feed + h)
               + (layers - 1) * 4 * h * (2 * h + 1) + (context + h) * h + attention)
    if cfg.layer_norm:  # a gain and a bias per feature: the input part, each layer's parts
        decoder += 2 * (4 * h + layers * 5 * h)
    generator = 0 if cfg.tie_embeddings else h * tgt_vocab
    bridge = 2 * (k + 1) * h if cfg.bridge == "projection" else 0
    return encoder + decoder + generator + bridge


def _gib(size: int) -> str:
    """Bytes in GiB, with one decimal; whole GiB where the bytes are beyond a float's range."""
    return f"{size / 2**30:,.1f}" if size < 2**1000 else f"{size >> 30:,}"


def _sizes(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> str:
    return (f"model.emb_size {cfg.emb_size}, hidden_size {cfg.hidden_size}, decoder_size "
            f"{cfg.decoder_size}, enc_layers {cfg.enc_layers}, dec_layers {cfg.dec_layers}, "
            f"attention.size {cfg.attention.size}, vocabularies {src_vocab}/{tgt_vocab}")


def allocate_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, device: torch.device,
                   operations: Operations = PLAIN_OPERATIONS) -> Seq2Seq:
    """Builds the model (computing through `operations`) on `device` once its training memory
    is known to fit there; a failed allocation becomes an `OutOfMemory` too."""
    params = parameter_count(cfg, src_vocab, tgt_vocab)
    need, have = params * TRAINING_BYTES, available_bytes(device)
    if need > have:
        raise OutOfMemory(f"the model has {params:,} parameters and needs at least "
                          f"{_gib(need)} GiB to train (weights, gradients, Adam state); "
                          f"{device.type} has {_gib(have)} GiB available "
                          f"({_sizes(cfg, src_vocab, tgt_vocab)})")
    try:
        return build_model(cfg, src_vocab, tgt_vocab, operations).to(device)
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        raise OutOfMemory(f"out of memory while allocating the model of {params:,} parameters "
                          f"({_sizes(cfg, src_vocab, tgt_vocab)})") from None

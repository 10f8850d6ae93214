"""Numeric precision of the model's products, for training and translation alike.

    fp32   every operation in float32
    bf16   torch.autocast to bfloat16: the products (the encoder's and decoder's gate products,
           the attention's projections and scores, the output layer) take bfloat16 inputs and
           accumulate in float32; the weights, the optimizer's state, the gradients' reduction,
           the LSTM cell states and their update, the softmaxes and the loss stay float32.
           bfloat16 has float32's range, so no loss scaling
    fp16   CUDA training only: as bf16 with float16, and loss scaling
    int8   CPU translation only: 8-bit weights in the decoder's products (`nmt.fast.int8`)

On a CPU, bf16 pays only where the CPU multiplies bfloat16 natively (x86 `avx512_bf16` or
`amx_bf16`, Arm `bf16`): elsewhere oneDNN emulates it, several times slower than fp32.
`cpu_bf16()` decides, once per machine, by the CPU's flags and a timed product, and caches the
answer beside the fused kernels' build (`nmt.machine.cache_dir`), keyed by the CPU and torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nmt import machine

log = logging.getLogger(__name__)

NATIVE_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX, x86 AVX-512, Arm's BF16
PROBE_SHAPE = (256, 512, 1024)  # m x k @ k x n, about 0.27 GFLOP a product


@dataclass(frozen=True)
class Bf16Support:
    """What the probe found: the CPU flag that promises native bfloat16 products ("" where
    none), and how many times faster a bfloat16 product ran than a float32 one here (0: not
    timed, as without the flag)."""

    flag: str
    speedup: float

    @property
    def native(self) -> bool:
        return bool(self.flag) and self.speedup > 1.0

    def describe(self) -> str:
        if self.native:
            return f"{self.flag}, products {self.speedup:.1f}x fp32 here"
        if self.flag:
            return f"{self.flag}, yet products only {self.speedup:.2f}x fp32 here"
        return f"no {', '.join(NATIVE_FLAGS)} flag: emulated, slower than fp32"


def _time_product(dtype: torch.dtype, reps: int = 5) -> float:
    """The best of `reps` timings of one PROBE_SHAPE product in `dtype`, in seconds."""
    m, k, n = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen).to(dtype), torch.randn(k, n, generator=gen).to(dtype)
    best = float("inf")
    for i in range(reps + 2):  # the first two warm up
        start = time.perf_counter()
        torch.mm(a, b)
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return best


def probe(flags: frozenset[str]) -> Bf16Support:
    """Times the products where a flag promises native bfloat16 (emulated ones are not worth
    the time it takes to learn that they are slow)."""
    flag = next((f for f in NATIVE_FLAGS if f in flags), "")
    if not flag:
        return Bf16Support("", 0.0)
    with torch.no_grad():
        return Bf16Support(flag, _time_product(torch.float32) / _time_product(torch.bfloat16))


def _cache_file() -> Path:
    key = hashlib.sha256("\n".join([machine.cpu_id(), torch.__version__]).encode())
    return machine.cache_dir() / "probes" / f"bf16-{key.hexdigest()[:16]}.json"


@functools.cache
def cpu_bf16() -> Bf16Support:
    """This CPU's bfloat16 products: probed once per machine and torch, then read back."""
    path = _cache_file()
    try:
        return Bf16Support(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    found = probe(machine.cpu_flags())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{id(found)}.tmp")
        tmp.write_text(json.dumps(asdict(found)))
        tmp.replace(path)
    except OSError as err:  # a read-only cache: probe again next time
        log.debug("could not cache the bf16 probe in %s: %s", path, err)
    return found


def cpu_dtype(precision: str, what: str) -> torch.dtype | None:
    """The CPU autocast dtype for `precision` ('auto', 'fp32' or 'bf16'), None for float32;
    logs the choice (`what` names the setting: "train.precision")."""
    if precision == "fp32":
        log.info("%s: fp32", what)
        return None
    support = cpu_bf16()
    if precision == "auto" and not support.native:
        log.info("%s: fp32 (auto; %s)", what, support.describe())
        return None
    if support.native:
        log.info("%s: bf16 (%s)", what, support.describe())
    else:
        log.warning("%s: bf16 on a CPU without native bfloat16 products (%s)", what,
                    support.describe())
    return torch.bfloat16


def autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    """torch.autocast to `dtype` on `device`'s kind; nothing for float32 (None)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)

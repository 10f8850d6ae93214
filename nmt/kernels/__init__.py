"""Fused CPU kernels (`kernels.c`), built with the system C compiler on first use.

    if kernels.usable(proj, q):
        scores = kernels.additive_score(proj, q, v)      # (N, G, S), differentiable
    if kernels.usable(gates, c):
        h, c = kernels.lstm_cell(gates, c)                # (B, H) each, differentiable
    if kernels.usable(logits):
        loss = kernels.cross_entropy(logits, target, eps) # summed, differentiable
    if kernels.usable(x):
        y = kernels.dropout(x, p)                         # training-mode dropout

The library is compiled once per machine into the cache directory (`$NMT_CACHE_DIR`, else
`$XDG_CACHE_HOME/nmt` or `~/.cache/nmt`), for this CPU (`-march=native`), and loaded with
ctypes. Without a C compiler, or with `NMT_FAST=0` (`nmt.fast`), `usable` is False and
callers use their plain PyTorch formula, which computes the same values (tests hold the two to
float32 rounding), except dropout, whose masks come from another generator: a seeded run
repeats exactly either way, but a run with the kernels and one without draw different masks.
The kernels take float32 tensors on the CPU only; CUDA and autocast keep the plain formulas.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from nmt import fast

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-shared", "-fPIC"]
OPENMP = ["-fopenmp"]  # tried first; compilers without OpenMP build a one-thread library

_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "additive_score_forward": [_P, _P, _P, _P, _I, _I, _I, _I, ctypes.c_int],
    "additive_score_backward": [_P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, ctypes.c_int],
    "lstm_cell_forward": [_P, _P, _P, _P, _P, _I, _I, ctypes.c_int],
    "lstm_cell_backward": [_P, _P, _P, _P, _P, _P, _P, _I, _I, ctypes.c_int],
    "cross_entropy_forward": [_P, _P, ctypes.c_float, _P, _P, _I, _I, ctypes.c_int],
    "dropout": [_P, _P, _I, ctypes.c_uint64, ctypes.c_float, ctypes.c_int],
}

_library: ctypes.CDLL | None = None
_tried = False
_loading = threading.Lock()


def cache_dir() -> Path:
    if os.environ.get("NMT_CACHE_DIR"):
        return Path(os.environ["NMT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nmt"


# /proc/cpuinfo lines that -march=native depends on: x86 names the model and flags, ARM the
# implementer, part and features.
_CPU_FIELDS = ("model name", "flags", "Features", "CPU implementer", "CPU architecture",
               "CPU variant", "CPU part", "CPU revision")


def _cpu_id(cpuinfo: str | None = None) -> str:
    """What -march=native depends on: the machine and the first CPU's model and features."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    lines = cpuinfo.split("\n\n")[0].splitlines()
    keep = [line for line in lines if line.startswith(_CPU_FIELDS)]
    return "\n".join([platform.machine(), platform.processor(), *keep])


def _compiler_version(compiler: list[str]) -> str:
    try:
        out = subprocess.run([*compiler, "--version"], capture_output=True, text=True)
    except OSError:
        return ""
    return out.stdout.strip()


def _target(compiler: list[str], extra: list[str]) -> Path:
    """The cached library of this source, flags, build variant, compiler and CPU."""
    key = hashlib.sha256("\n".join([SOURCE.read_text(), *FLAGS, *extra, *compiler,
                                    _compiler_version(compiler), _cpu_id()])
                         .encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / f"kernels-{key}.so"


def _build(compiler: list[str], extra: list[str], target: Path) -> bool:
    """Compiles the library to `target` (atomically: concurrent builds are harmless)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [*compiler, *FLAGS, *extra, "-o", tmp, str(SOURCE), "-lm"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(tmp, target)
            return True
        log.debug("%s failed: %s", " ".join(cmd), result.stderr.strip())
        return False
    except OSError as err:
        log.debug("%s failed: %s", " ".join(cmd), err)
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open(target: Path) -> ctypes.CDLL | None:
    """The library at `target`, or None (a damaged file is removed, to be built again)."""
    try:
        return ctypes.CDLL(str(target))
    except OSError as err:
        log.debug("cannot load %s (%s); rebuilding it", target, err)
        target.unlink(missing_ok=True)
        return None


def _find_or_build() -> ctypes.CDLL | None:
    if not fast.enabled():
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    compiler = shlex.split(cc) if cc else []  # CC may hold a wrapper: "ccache gcc"
    if not compiler:
        log.warning("no C compiler found: fused CPU kernels are off, training is slower")
        return None
    for extra in (OPENMP, []):  # a one-thread build only where OpenMP cannot be had
        target = _target(compiler, extra)
        library = _open(target) if target.exists() else None
        if library is None and _build(compiler, extra, target):
            library = _open(target)
        if library is not None:
            if not extra:
                log.warning("compiled the fused CPU kernels without OpenMP: one thread each")
            log.debug("fused CPU kernels: %s", target)
            return library
    log.warning("could not compile %s: fused CPU kernels are off, training is slower", SOURCE)
    return None


def load() -> ctypes.CDLL | None:
    """The compiled library, building it if needed; None where it cannot be built. The first
    call decides, once, for every thread."""
    global _library, _tried
    with _loading:
        if not _tried:
            library = _find_or_build()
            if library is not None:
                for name, argtypes in _SIGNATURES.items():
                    getattr(library, name).argtypes = argtypes
                    getattr(library, name).restype = None
            _library, _tried = library, True
    return _library


def usable(*tensors: torch.Tensor) -> bool:
    """True where the kernels apply: float32 CPU tensors, no autocast, library built."""
    return (fast.enabled()
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not torch.is_autocast_enabled("cpu") and load() is not None)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


class _AdditiveScore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, proj: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        proj, q, v = proj.contiguous(), q.contiguous(), v.contiguous()
        (n, s, a), g = proj.shape, q.size(1)
        score = proj.new_empty(n, g, s)  # (N, G, S)
        load().additive_score_forward(_ptr(proj), _ptr(q), _ptr(v), _ptr(score), n, g, s, a,
                                      torch.get_num_threads())
        ctx.save_for_backward(proj, q, v)
        return score

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dscore: torch.Tensor) -> tuple[torch.Tensor, ...]:
        proj, q, v = ctx.saved_tensors
        dscore = dscore.contiguous()
        (n, s, a), g = proj.shape, q.size(1)
        threads = torch.get_num_threads()
        dproj, dq, dv_parts = torch.empty_like(proj), torch.empty_like(q), v.new_empty(threads, a)
        load().additive_score_backward(_ptr(proj), _ptr(q), _ptr(v), _ptr(dscore), _ptr(dproj),
                                       _ptr(dq), _ptr(dv_parts), n, g, s, a, threads)
        return dproj, dq, dv_parts.sum(0)


def additive_score(proj: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """proj (N, S, A), q (N, G, A), v (A,) -> (N, G, S) scores
    2 sum_a v[a] sigmoid(proj[n, s, a] + q[n, g, a]), differentiable in all three."""
    return _AdditiveScore.apply(proj, q, v)


class _LSTMCell(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates, c = gates.contiguous(), c.contiguous()
        b, h = c.shape
        h_new, c_new, act = c.new_empty(b, h), c.new_empty(b, h), gates.new_empty(b, 4 * h)
        load().lstm_cell_forward(_ptr(gates), _ptr(c), _ptr(h_new), _ptr(c_new), _ptr(act),
                                 b, h, torch.get_num_threads())
        ctx.save_for_backward(act, c, c_new)
        return h_new, c_new

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh: torch.Tensor, dc_new: torch.Tensor) -> tuple[torch.Tensor, ...]:
        act, c, c_new = ctx.saved_tensors
        dh, dc_new = dh.contiguous(), dc_new.contiguous()
        b, h = c.shape
        dgates, dc = act.new_empty(b, 4 * h), c.new_empty(b, h)
        load().lstm_cell_backward(_ptr(act), _ptr(c), _ptr(c_new), _ptr(dh), _ptr(dc_new),
                                  _ptr(dgates), _ptr(dc), b, h, torch.get_num_threads())
        return dgates, dc


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gates (B, 4H) pre-activations in the order i, f, g, o, c (B, H) -> h', c' (B, H):
    c' = sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c'); differentiable."""
    return _LSTMCell.apply(gates, c)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
        logits, target = logits.contiguous(), target.contiguous()
        n, v = logits.shape
        loss, grad = logits.new_empty(n), torch.empty_like(logits)
        load().cross_entropy_forward(_ptr(logits), _ptr(target), eps, _ptr(loss), _ptr(grad),
                                     n, v, torch.get_num_threads())
        ctx.save_for_backward(grad)
        return loss.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dloss: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * dloss, None, None  # never in place: a second backward sees it again


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """logits (N, V), target (N,) class ids -> the summed cross-entropy with label smoothing
    `eps`, as F.cross_entropy(logits, target, reduction="sum", label_smoothing=eps); its
    gradient is computed in the same pass, so backward runs once per forward."""
    if target.numel() == 0:
        return logits.sum()  # 0, as F.cross_entropy's sum over no rows
    if not (torch.is_grad_enabled() and logits.requires_grad):  # no gradient to build
        return torch.nn.functional.cross_entropy(logits, target, reduction="sum",
                                                 label_smoothing=eps)
    if not 0 <= int(target.min()) <= int(target.max()) < logits.size(1):
        raise IndexError(f"target out of range for {logits.size(1)} classes")
    return _CrossEntropy.apply(logits, target, eps)


def _dropout(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    load().dropout(_ptr(x), _ptr(out), x.numel(), seed, p, torch.get_num_threads())
    return out


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        ctx.p = p
        ctx.seed = int(torch.randint(0, 2 ** 62, (1,)))  # from torch's generator: seeded
        return _dropout(x, p, ctx.seed)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _dropout(grad, ctx.p, ctx.seed), None  # the same mask, rebuilt from the seed


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout: each element zeroed with probability p, the others scaled by
    1 / (1 - p), as F.dropout; the mask comes from a counter-based generator whose seed is
    drawn from torch's, so a seeded run repeats exactly (but draws other masks than F.dropout).
    """
    if p == 0:
        return x
    return _Dropout.apply(x, p)

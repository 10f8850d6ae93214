"""Fused CPU operators (`kernels.cpp`), PyTorch custom operators built on first use, and
`FUSED`, the model's operations (`nmt.model.operations`) computed through them where they apply:

    model = build_model(cfg, src_vocab, tgt_vocab, kernels.FUSED)
    if kernels.usable(proj, q, v):
        scores = kernels.additive_score(proj, q, v)      # (N, G, S, H), differentiable
    if kernels.usable(gates, c):
        h, c = kernels.lstm_cell(gates, c)                # (B, H) each, differentiable
    if kernels.usable(logits):
        loss = kernels.cross_entropy(logits, target, eps) # summed, differentiable

The operators (`torch.ops.nmt.*`) are defined in C++ with their schemas (`TORCH_LIBRARY`), built
with `torch.utils.cpp_extension` for this machine (`-march=native`) into the cache directory
(`$NMT_CACHE_DIR`, else `$XDG_CACHE_HOME/nmt` or `~/.cache/nmt`), in a folder named by a hash of
the source, the flags, the compiler and its version, torch's version and the CPU, under a lock
that concurrent first uses wait on. Their fake implementations (for torch.compile and meta
tensors) and autograd formulas are registered here with `torch.library`.

Without a C++ compiler, or with the kernels switched off (`nmt.fast`), `usable` is False and
`FUSED` computes the plain PyTorch formula, which gives the same values (the tests hold the two
to float32 rounding). The operators compute in float32 on the CPU: under CPU autocast (bf16),
autocast casts their inputs to float32 (`torch.library.register_autocast`); CUDA keeps the
plain formulas.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from nmt import fast, lock
from nmt.machine import cache_dir, cpu_id
from nmt.model.operations import Operations

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.cpp")
FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp-simd"]
# at::parallel_for runs on torch's OpenMP threads only where the operator is built with OpenMP;
# tried first, and a compiler without it builds a one-thread operator.
OPENMP = ["-fopenmp"]

_loaded: bool | None = None  # None: not tried yet
_loading = threading.Lock()


def compiler() -> list[str]:
    """The C++ compiler torch.utils.cpp_extension uses: $CXX (which may hold a wrapper, such as
    "ccache g++"), else c++."""
    return shlex.split(os.environ.get("CXX") or "c++")


def _compiler_version(cxx: list[str]) -> str:
    try:
        out = subprocess.run([*cxx, "--version"], capture_output=True, text=True)
    except OSError:
        return ""
    return out.stdout.strip()


def build_dir(cxx: list[str], extra: list[str] = OPENMP) -> Path:
    """Where this source, these flags, this compiler and torch, and this CPU build to."""
    key = hashlib.sha256("\n".join([SOURCE.read_text(), *FLAGS, *extra, *cxx,
                                    _compiler_version(cxx), torch.__version__, cpu_id()])
                         .encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / key


def _ninja_on_path() -> None:
    """cpp_extension runs `ninja` from PATH; the `ninja` package installs one beside Python."""
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _program(cxx: list[str], folder: Path) -> str:
    """cpp_extension runs $CXX as one program: a command line ("ccache g++") becomes a script."""
    if len(cxx) == 1:
        return cxx[0]
    script = folder / "cxx"
    script.write_text(f'#!/bin/sh\nexec {shlex.join(cxx)} "$@"\n')
    script.chmod(0o755)
    return str(script)


def _build_and_load(cxx: list[str], extra: list[str], folder: Path) -> None:
    from torch.utils import cpp_extension

    _ninja_on_path()
    folder.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("CXX")
    quiet = logging.getLogger("torch.utils.cpp_extension")  # its warnings about the compiler
    level = quiet.level
    try:
        with lock.hold(folder / ".lock", f"the kernel build in {folder}", wait=True):
            os.environ["CXX"] = _program(cxx, folder)
            quiet.setLevel(logging.ERROR)
            cpp_extension.load(name="nmt_kernels", sources=[str(SOURCE)],
                               extra_cflags=FLAGS + extra, extra_ldflags=extra,
                               build_directory=str(folder), is_python_module=False,
                               verbose=False)
    finally:
        quiet.setLevel(level)
        if saved is None:
            os.environ.pop("CXX", None)
        else:
            os.environ["CXX"] = saved


def _find_or_build() -> bool:
    """Loads the operators into torch (building them first where needed) -> whether they are
    there. A damaged build is removed and built once more."""
    if not fast.on("kernels"):
        return False
    cxx = compiler()
    if shutil.which(cxx[0]) is None:
        log.warning("no C++ compiler (%s) found: the fused CPU kernels are off, training is "
                    "slower", cxx[0])
        return False
    for extra in (OPENMP, []):  # a one-thread build only where OpenMP cannot be had
        folder = build_dir(cxx, extra)
        if _build_twice(cxx, extra, folder):
            if not extra:
                log.warning("built the fused CPU kernels without OpenMP: one thread each")
            log.debug("fused CPU kernels: %s", folder)
            return True
    log.warning("could not build %s: the fused CPU kernels are off, training is slower "
                "(--verbose shows the compiler's output)", SOURCE.name)
    return False


def _build_twice(cxx: list[str], extra: list[str], folder: Path) -> bool:
    """Builds and loads; a build that does not load (damaged) is removed and built once more."""
    for attempt in range(2):
        try:
            _build_and_load(cxx, extra, folder)
            return True
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            log.debug("building %s in %s failed: %s", SOURCE.name, folder, err)
            damaged = (folder / "nmt_kernels.so").exists()  # built, but does not load
            if attempt or not damaged:
                return False
            shutil.rmtree(folder, ignore_errors=True)
    return False


def load() -> bool:
    """Whether the operators are registered, building them if needed. The first call decides,
    once, for every thread."""
    global _loaded
    if _loaded is not None:  # decided: no lock on the decoder step's path
        return _loaded
    with _loading:
        if _loaded is None:
            _loaded = _find_or_build()
            if _loaded:
                _register()
    return _loaded


def usable(*tensors: torch.Tensor) -> bool:
    """True where the operators apply: CPU tensors, float32 (or bfloat16 under CPU autocast,
    which casts them to float32 for the operators), operators built."""
    dtypes = (torch.float32, torch.bfloat16) if torch.is_autocast_enabled("cpu") else (
        torch.float32,)
    return (fast.on("kernels")
            and all(t.device.type == "cpu" and t.dtype in dtypes for t in tensors)
            and load())


def additive_score(proj: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """proj (N, S, A), q (N, G, A), v (A,) -> (N, G, S) scores
    2 sum_a v[a] sigmoid(proj[n, s, a] + q[n, g, a]), differentiable in all three.
    With v (H, D), A = H x D: (N, G, S, H), the score of each head h over its features
    [h D, (h + 1) D)."""
    if v.dim() == 1:
        return torch.ops.nmt.additive_score(proj, q, v.view(1, -1)).squeeze(3)
    return torch.ops.nmt.additive_score(proj, q, v)


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gates (B, 4H) pre-activations in the order i, f, g, o, c (B, H) -> h', c' (B, H):
    c' = sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c'); differentiable."""
    h, c_new, _ = torch.ops.nmt.lstm_cell(gates, c)
    return h, c_new


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """logits (N, V), target (N,) class ids -> the summed cross-entropy with label smoothing
    `eps`, as F.cross_entropy(logits, target, reduction="sum", label_smoothing=eps). Its gradient
    is computed in the same pass, where one is wanted (else this is F.cross_entropy)."""
    if target.numel() == 0 or not (torch.is_grad_enabled() and logits.requires_grad):
        return torch.nn.functional.cross_entropy(logits, target, reduction="sum",
                                                 label_smoothing=eps)
    loss, _ = torch.ops.nmt.cross_entropy(logits, target, eps)
    return loss.sum()


def _register() -> None:
    """The operators' fake implementations and autograd formulas."""

    @torch.library.register_fake("nmt::additive_score")
    def _(proj: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return proj.new_empty(proj.size(0), q.size(1), proj.size(1), v.size(0))

    @torch.library.register_fake("nmt::additive_score_backward")
    def _(proj: torch.Tensor, q: torch.Tensor, v: torch.Tensor, dscore: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.empty_like(proj), torch.empty_like(q),
                proj.new_empty(proj.size(0), proj.size(2)))

    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    def backward(ctx, dscore: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        proj, q, v = ctx.saved_tensors
        dproj, dq, dv_rows = torch.ops.nmt.additive_score_backward(proj, q, v, dscore)
        dv = dv_rows.sum(0).view_as(v)  # (H, D): the rows' shares, summed in a fixed order
        return dproj, dq, dv

    torch.library.register_autograd("nmt::additive_score", backward,
                                    setup_context=setup_context)

    @torch.library.register_fake("nmt::lstm_cell")
    def _(gates: torch.Tensor, c: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.empty_like(c), torch.empty_like(c), torch.empty_like(gates)

    @torch.library.register_fake("nmt::lstm_cell_backward")
    def _(act: torch.Tensor, c: torch.Tensor, c_new: torch.Tensor, dh: torch.Tensor,
          dc_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.empty_like(act), torch.empty_like(c)

    def cell_context(ctx, inputs: tuple, output: tuple) -> None:
        _, c = inputs
        _, c_new, act = output
        ctx.save_for_backward(act, c, c_new)

    def cell_backward(ctx, dh: torch.Tensor | None, dc_new: torch.Tensor | None,
                      _dact: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        act, c, c_new = ctx.saved_tensors
        dh = torch.zeros_like(c) if dh is None else dh
        dc_new = torch.zeros_like(c) if dc_new is None else dc_new
        return torch.ops.nmt.lstm_cell_backward(act, c, c_new, dh, dc_new)

    torch.library.register_autograd("nmt::lstm_cell", cell_backward, setup_context=cell_context)

    @torch.library.register_fake("nmt::cross_entropy")
    def _(logits: torch.Tensor, target: torch.Tensor, eps: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
        return logits.new_empty(logits.size(0)), torch.empty_like(logits)

    def ce_context(ctx, inputs: tuple, output: tuple) -> None:
        ctx.save_for_backward(output[1])

    def ce_backward(ctx, dloss: torch.Tensor, _dgrad: torch.Tensor | None
                    ) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * dloss.unsqueeze(1), None, None  # never in place: a second backward too

    torch.library.register_autograd("nmt::cross_entropy", ce_backward, setup_context=ce_context)

    for name in ("additive_score", "lstm_cell", "cross_entropy"):  # float32 under autocast
        torch.library.register_autocast(f"nmt::{name}", "cpu", torch.float32)


class Fused(Operations):
    """The model's additive score, LSTM cell and cross-entropy through the fused operators
    where `usable`, else the formulas of `Operations`."""

    def additive_score(self, proj: torch.Tensor, q: torch.Tensor, v: torch.Tensor
                       ) -> torch.Tensor:
        if proj.dim() == 3 and usable(proj, q, v):  # one pass, no (N, G, S, A) tensor
            return additive_score(proj, q, v)
        return super().additive_score(proj, q, v)

    def lstm_cell(self, gates: torch.Tensor, c: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        if usable(gates, c):
            return lstm_cell(gates, c)
        return super().lstm_cell(gates, c)

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor,
                      label_smoothing: float) -> torch.Tensor:
        if usable(logits):  # the gradient comes out of the same pass
            return cross_entropy(logits, target, label_smoothing)
        return super().cross_entropy(logits, target, label_smoothing)


FUSED = Fused()

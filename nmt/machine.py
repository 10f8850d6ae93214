"""This machine as nmt sees it: its CPU (what builds and probes depend on) and the folder where
nmt caches what it works out once per machine (the fused kernels' build, the bf16 probe)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cache_dir() -> Path:
    """$NMT_CACHE_DIR, else $XDG_CACHE_HOME/nmt, else ~/.cache/nmt."""
    if os.environ.get("NMT_CACHE_DIR"):
        return Path(os.environ["NMT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nmt"


# /proc/cpuinfo lines that -march=native depends on: x86 names the model and flags, ARM the
# implementer, part and features.
_CPU_FIELDS = ("model name", "flags", "Features", "CPU implementer", "CPU architecture",
               "CPU variant", "CPU part", "CPU revision")


def cpuinfo() -> str:
    """The first CPU's block of /proc/cpuinfo ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return ""


def cpu_flags(info: str | None = None) -> frozenset[str]:
    """The first CPU's feature flags (x86 `flags`, Arm `Features`)."""
    words: set[str] = set()
    for line in (cpuinfo() if info is None else info).splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            words.update(value.split())
    return frozenset(words)


def cpu_id(info: str | None = None) -> str:
    """What -march=native depends on: the machine and the first CPU's model and features."""
    lines = (cpuinfo() if info is None else info).split("\n\n")[0].splitlines()
    keep = [line for line in lines if line.startswith(_CPU_FIELDS)]
    return "\n".join([platform.machine(), platform.processor(), *keep])

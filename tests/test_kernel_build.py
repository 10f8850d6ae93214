"""How the fused CPU operators are built, cached and loaded: a cache folder per source, flags,
compiler, torch and CPU; a damaged build rebuilt; a compiler wrapper in CXX; one answer for
every thread. A process registers the operators once, so builds run in new processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from nmt import machine
from nmt.fast import kernels

from conftest import ROOT, fast_only

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: {part}
CPU revision\t: 1
"""


def test_cpu_id_tells_arm_cpus_apart():
    a, b = (machine.cpu_id(ARM_CPUINFO.format(part=p)) for p in ("0xd0c", "0xd40"))
    assert a != b
    assert "Features" in a and "CPU part" in a


def test_cache_folder_follows_compiler_its_version_and_torch(monkeypatch):
    before = kernels.build_dir(["c++"])
    assert kernels.build_dir(["ccache", "c++"]) != before
    monkeypatch.setattr(kernels, "_compiler_version", lambda cxx: "g++ (other) 99.1")
    assert kernels.build_dir(["c++"]) != before
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert kernels.build_dir(["c++"]) != before


@fast_only
def test_a_damaged_build_is_rebuilt_with_a_compiler_wrapper_in_cxx(tmp_path):
    """CXX may be a command line, as `ccache g++` (`env c++` stands in for it here); a cached
    library that does not load is removed and built again; the new process then computes with
    the operator."""
    env = {**os.environ, "NMT_CACHE_DIR": str(tmp_path), "CXX": "env c++"}
    folder = subprocess.run(
        [sys.executable, "-c", "from nmt.fast import kernels; "
         "print(kernels.build_dir(kernels.compiler()))"],
        env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    os.makedirs(folder)
    damaged = os.path.join(folder, "nmt_kernels.so")
    with open(damaged, "wb") as f:
        f.write(b"not a shared library")
    code = ("import torch; from nmt.fast import kernels; assert kernels.load(); "
            "h, c = kernels.lstm_cell(torch.zeros(1, 4), torch.ones(1, 1)); "
            "print(float(c.sum()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout) - 0.5) < 1e-6  # c' = sigmoid(0) * 1 + sigmoid(0) * tanh(0)
    with open(damaged, "rb") as f:
        assert f.read(4) == b"\x7fELF"


def test_threads_loading_at_once_get_the_same_answer(monkeypatch):
    """A second thread must not see "no operators" while the first is still building them,
    and the build runs once."""
    calls = []

    def slow() -> bool:
        calls.append(1)
        time.sleep(0.3)
        return False

    monkeypatch.setattr(kernels, "_loaded", None)
    monkeypatch.setattr(kernels, "_find_or_build", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(kernels.load())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [False, False] and calls == [1]


def test_without_the_kernels_piece_nothing_is_built(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_loaded", None)
    monkeypatch.setattr(kernels.fast, "_ON", frozenset({"int8"}))
    monkeypatch.setenv("NMT_CACHE_DIR", str(tmp_path))
    assert not kernels.load()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value,pieces", [("", {"kernels", "int8"}), ("1", {"kernels", "int8"}),
                                          ("0", set()),
                                          ("kernels, int8", {"kernels", "int8"}),
                                          ("kernels,nonsense", {"kernels"})])
def test_nmt_fast_names_the_pieces_that_run(value, pieces, caplog):
    assert kernels.fast._parse(value) == pieces
    assert ("unknown piece 'nonsense'" in caplog.text) == ("nonsense" in value)

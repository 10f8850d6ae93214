"""How the fused CPU kernels are built, cached and loaded, and the cross-entropy kernel's
autograd contract: a second backward, and no gradient buffer where none is wanted."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import torch.nn.functional as F

from nmt import kernels

needs_kernels = pytest.mark.skipif(kernels.load() is None, reason="no C compiler on this machine")

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: {part}
CPU revision\t: 1
"""


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The kernels module as in a new process, with its cache in tmp_path."""
    monkeypatch.setenv("NMT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_library", None)
    return tmp_path


@needs_kernels
def test_cross_entropy_backward_twice_gives_the_same_gradient():
    torch.manual_seed(0)
    logits = torch.randn(7, 11, requires_grad=True)
    target = torch.randint(0, 11, (7,))
    loss = kernels.cross_entropy(logits, target, 0.1)
    (first,) = torch.autograd.grad(3 * loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(3 * loss, logits)
    reference = logits.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(
        3 * F.cross_entropy(reference, target, reduction="sum", label_smoothing=0.1), reference)
    assert torch.allclose(first, expected, atol=1e-5)
    assert torch.equal(first, second)


def test_cross_entropy_without_gradient_builds_none(monkeypatch):
    """Under inference_mode (validation) the loss comes without the N x V gradient buffer."""
    def no_kernel(*args):
        raise AssertionError("the fused forward builds a gradient")

    monkeypatch.setattr(kernels._CrossEntropy, "apply", no_kernel)
    logits, target = torch.randn(5, 9), torch.randint(0, 9, (5,))
    with torch.inference_mode():
        loss = kernels.cross_entropy(logits, target, 0.1)
    expected = F.cross_entropy(logits, target, reduction="sum", label_smoothing=0.1)
    assert torch.allclose(loss, expected)


def test_cpu_id_tells_arm_cpus_apart():
    a, b = (kernels._cpu_id(ARM_CPUINFO.format(part=p)) for p in ("0xd0c", "0xd40"))
    assert a != b
    assert "Features" in a and "CPU part" in a


def test_cache_key_follows_build_variant_and_compiler_version(monkeypatch):
    cc = ["gcc"]
    assert kernels._target(cc, kernels.OPENMP) != kernels._target(cc, [])
    before = kernels._target(cc, [])
    monkeypatch.setattr(kernels, "_compiler_version", lambda compiler: "gcc (other) 99.1")
    assert kernels._target(cc, []) != before


@needs_kernels
def test_a_compiler_wrapper_in_cc_works(fresh, monkeypatch):
    """CC may be a command line, as `ccache gcc`; `env gcc` stands in for it here."""
    monkeypatch.setenv("CC", "env gcc")
    assert kernels.load() is not None
    assert list((fresh / "kernels").glob("kernels-*.so"))


@needs_kernels
def test_a_damaged_cached_library_is_rebuilt(fresh, monkeypatch):
    monkeypatch.setenv("CC", "gcc")
    target = kernels._target(["gcc"], kernels.OPENMP)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a shared library")
    assert kernels.load() is not None
    assert target.read_bytes()[:4] == b"\x7fELF"


def test_threads_loading_at_once_get_the_same_answer(fresh, monkeypatch):
    """A second thread must not see "no kernels" while the first is still building them."""
    real = kernels._find_or_build

    def slow():
        time.sleep(0.3)
        return real()

    monkeypatch.setattr(kernels, "_find_or_build", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(kernels.load())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] is results[1]
    assert (results[0] is None) == (real() is None)

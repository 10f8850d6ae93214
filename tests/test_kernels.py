"""`nmt.fast.kernels`: the fused CPU operators against the plain PyTorch formulas they replace,
and torch.library's own checks of each operator's registration (schema, fake implementation,
autograd)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt.data.tokenizer import PAD
from nmt.fast import kernels

from conftest import fast_only, padded_batch, small_model

pytestmark = fast_only


def test_the_operators_refuse_what_they_cannot_compute():
    """A wrong dtype raises torch's one-line error, not a wrong result."""
    kernels.load()
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.nmt.lstm_cell(torch.randn(2, 8).double(), torch.randn(2, 2).double())


@pytest.mark.parametrize("wiring,layers", [("luong", 1), ("bahdanau", 2)])
def test_model_with_the_kernels_equals_the_plain_model(monkeypatch, wiring, layers):
    """A model's loss and every gradient agree with and without the kernels."""
    src, lengths = padded_batch()
    tgt_in, tgt_out = torch.randint(4, 30, (3, 6)), torch.randint(4, 30, (3, 6))

    def run(use_kernel: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(kernels, "usable", lambda *tensors: use_kernel)
        torch.manual_seed(4)
        model = small_model("additive", wiring=wiring, dec_layers=layers,
                            operations=kernels.FUSED)
        loss, _ = model.loss(src, lengths, tgt_in, tgt_out, label_smoothing=0.1)
        loss.backward()
        return [loss.detach()] + [p.grad for p in model.parameters()]

    fused, plain = run(True), run(False)
    assert torch.allclose(fused[0], plain[0], rtol=1e-6)
    for f, p in zip(fused[1:], plain[1:]):
        assert torch.allclose(f, p, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("wiring,layers", [("luong", 1), ("bahdanau", 2)])
def test_without_a_compiler_the_plain_formula_is_used(monkeypatch, tmp_path, caplog, wiring,
                                                      layers):
    """Where the operators cannot be built, `usable` is False, no operator is called, and the
    model's plain PyTorch path gives the fused path's loss (relative 1e-6) and every gradient
    (relative 1e-4, absolute 1e-6: float32 sums taken in another order), label smoothing on."""
    assert kernels.load(), "the C++ compiler could not build nmt/fast/kernels.cpp"
    src, lengths = padded_batch()
    torch.manual_seed(7)
    tgt_in, tgt_out = torch.randint(4, 30, (3, 6)), torch.randint(4, 30, (3, 6))
    tgt_out[2, 4:] = PAD  # a shorter target
    calls: list[str] = []

    def spy(name: str):
        real = getattr(kernels, name)

        def counted(*args):
            calls.append(name)
            return real(*args)
        return counted

    for name in ("lstm_cell", "cross_entropy"):
        monkeypatch.setattr(kernels, name, spy(name))

    def run() -> list[torch.Tensor]:
        torch.manual_seed(4)
        model = small_model("additive", wiring=wiring, dec_layers=layers,
                            operations=kernels.FUSED)
        loss, _ = model.loss(src, lengths, tgt_in, tgt_out, label_smoothing=0.1)
        loss.backward()
        return [loss.detach()] + [p.grad for p in model.parameters()]

    fused = run()
    assert set(calls) == {"lstm_cell", "cross_entropy"}  # the reference
    calls.clear()

    monkeypatch.setattr(kernels, "_loaded", None)  # as in a new process
    monkeypatch.setenv("NMT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert not kernels.load()
    assert "fused CPU kernels are off" in caplog.text
    assert not kernels.usable(torch.zeros(1))
    plain = run()
    assert calls == []  # the plain formula alone
    assert torch.allclose(plain[0], fused[0], rtol=1e-6, atol=0)
    assert len(plain) == len(fused)
    for p, f in zip(plain[1:], fused[1:]):
        assert p is not None and torch.allclose(p, f, rtol=1e-4, atol=1e-6), (p - f).abs().max()


def _cell_formula(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@pytest.mark.parametrize("b,h", [(5, 16), (3, 13), (1, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_lstm_cell_and_gradients_equal_the_formula(b, h, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(b * 10 + h)
    gates, c = torch.randn(b, 4 * h) * 4, torch.randn(b, h) * 2
    gates[0, :4] = torch.tensor([40.0, -40.0, 1e4, -1e4][: min(4, 4 * h)])  # saturated gates
    leaves = [t.clone().requires_grad_() for t in (gates, c)]
    exact = [t.double().requires_grad_() for t in (gates, c)]
    dh, dc = torch.randn(b, h), torch.randn(b, h)
    fused = kernels.lstm_cell(*leaves)
    torch.autograd.backward(fused, (dh, dc))
    reference = _cell_formula(*exact)
    torch.autograd.backward(reference, (dh.double(), dc.double()))
    for f, r in zip(fused, reference):
        assert (f.double() - r).abs().max() < 1e-6
    for leaf, ref in zip(leaves, exact):
        assert (leaf.grad.double() - ref.grad).abs().max() < 1e-5 * (1 + ref.grad.abs().max())


def test_lstm_cell_gradient_of_h_alone():
    """Only h' used (the last step): the backward pass gets no gradient for c' and must treat it
    as zero."""
    torch.manual_seed(2)
    gates, c = torch.randn(3, 8, requires_grad=True), torch.randn(3, 2, requires_grad=True)
    kernels.lstm_cell(gates, c)[0].sum().backward()
    exact = [t.detach().double().requires_grad_() for t in (gates, c)]
    _cell_formula(*exact)[0].sum().backward()
    assert torch.allclose(gates.grad.double(), exact[0].grad, atol=1e-6)
    assert torch.allclose(c.grad.double(), exact[1].grad, atol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("n,v", [(7, 50), (3, 13), (1, 1)])
def test_cross_entropy_and_its_gradient_equal_torch(n, v, eps):
    torch.manual_seed(n + v)
    logits, target = torch.randn(n, v) * 10, torch.randint(0, v, (n,))
    logits[0, 0] = 500.0  # far beyond exp's float range: shifted by the row maximum
    fused, exact = logits.clone().requires_grad_(), logits.double().requires_grad_()
    loss = kernels.cross_entropy(fused, target, eps)
    ref = F.cross_entropy(exact, target, reduction="sum", label_smoothing=eps)
    (loss * 3).backward()
    (ref * 3).backward()
    assert abs(loss.item() - ref.item()) < 1e-5 * (1 + abs(ref.item()))
    assert (fused.grad.double() - exact.grad).abs().max() < 1e-6


def test_cross_entropy_of_no_rows_is_zero_and_bad_targets_are_refused():
    assert float(kernels.cross_entropy(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))) == 0
    with pytest.raises(RuntimeError, match="out of range"):
        kernels.cross_entropy(torch.zeros(2, 5, requires_grad=True), torch.tensor([1, 5]))


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
    def no_operator(*args):
        raise AssertionError("the fused forward builds a gradient")

    monkeypatch.setattr(torch.ops.nmt, "cross_entropy", no_operator, raising=False)
    logits, target = torch.randn(5, 9), torch.randint(0, 9, (5,))
    with torch.inference_mode():
        loss = kernels.cross_entropy(logits, target, 0.1)
    expected = F.cross_entropy(logits, target, reduction="sum", label_smoothing=0.1)
    assert torch.allclose(loss, expected)


def test_the_cell_and_cross_entropy_pass_torch_library_opcheck():
    assert kernels.load(), "the C++ compiler could not build nmt/fast/kernels.cpp"
    torch.manual_seed(5)
    gates, c = torch.randn(4, 12), torch.randn(4, 3)
    torch.library.opcheck(torch.ops.nmt.lstm_cell.default,
                          (gates.requires_grad_(), c.requires_grad_()))
    act, c_new = torch.rand(4, 12), torch.randn(4, 3)
    torch.library.opcheck(torch.ops.nmt.lstm_cell_backward.default,
                          (act, c.detach(), c_new, torch.randn(4, 3), torch.randn(4, 3)))
    logits, target = torch.randn(6, 9, requires_grad=True), torch.randint(0, 9, (6,))
    torch.library.opcheck(torch.ops.nmt.cross_entropy.default, (logits, target, 0.1))

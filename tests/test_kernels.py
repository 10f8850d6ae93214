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


def _formula(proj: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The additive score in float64: 2 sum_a v[a] sigmoid(proj[n, s, a] + q[n, g, a]), (N, G, S);
    with v (H, D), each head's sum over its D features, (N, G, S, H)."""
    y = torch.sigmoid(proj.unsqueeze(1) + q.unsqueeze(2))  # (N, G, S, A)
    if v.dim() == 1:
        return 2 * (y @ v)
    return 2 * (y.unflatten(3, tuple(v.shape)) * v).sum(4)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize("n,g,s,a,heads", [(3, 1, 5, 16, 0), (2, 5, 7, 13, 0), (1, 1, 1, 8, 0),
                                           (4, 2, 3, 1, 0), (3, 2, 5, 16, 4), (2, 3, 4, 15, 3),
                                           (2, 1, 3, 6, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_additive_score_and_gradients_equal_the_formula(n, g, s, a, heads, threads):
    """Forward and all three gradients, for groups of queries, feature counts that are not a
    multiple of the vector width, z from -60 to 60, where sigmoid saturates, and v as one
    vector (heads 0) or as one per head, (H, A / H)."""
    assert kernels.load(), "the C++ compiler could not build nmt/fast/kernels.cpp"
    torch.set_num_threads(threads)
    torch.manual_seed(n * 100 + g * 10 + a)
    proj, q = torch.randn(n, s, a) * 20, torch.randn(n, g, a) * 20
    v = torch.randn(a) if heads == 0 else torch.randn(heads, a // heads)
    leaves = [t.clone().requires_grad_() for t in (proj, q, v)]
    exact = [t.double().requires_grad_() for t in (proj, q, v)]
    shape = (n, g, s) if heads == 0 else (n, g, s, heads)
    dscore = torch.randn(shape)
    fused = kernels.additive_score(*leaves)
    fused.backward(dscore)
    reference = _formula(*exact)
    reference.backward(dscore.double())
    assert fused.shape == shape
    assert _rel(fused.detach(), reference.detach()) < 1e-6
    for leaf, ref in zip(leaves, exact):
        assert _rel(leaf.grad, ref.grad) < 1e-5


def test_additive_score_is_finite_and_exact_at_the_extremes():
    """exp is clamped: z of +-1e4 gives sigmoid 1 and 0, never inf or NaN."""
    proj = torch.tensor([[[1e4, -1e4, 88.5, -88.5, 0.0, 30.0, -30.0, 1e-3]]])  # (1, 1, 8)
    q, v = torch.zeros(1, 1, 8), torch.ones(8)
    score = kernels.additive_score(proj, q, v)
    assert torch.allclose(score.double(), _formula(proj.double(), q.double(), v.double()),
                          rtol=1e-6)


def test_additive_score_gradients_stay_finite_where_sigmoid_saturates():
    """At z = -100, exp(-z) is clamped near 1.7e38: the backward pass must form
    exp(-z) sigmoid(z) = 1 - sigmoid(z) before scaling it, or a weight above 1 overflows."""
    proj = torch.tensor([[[-100.0, 100.0, 0.0, 3.0]]], requires_grad=True)  # (1, 1, 4)
    q = torch.zeros(1, 1, 4, requires_grad=True)
    v = torch.full((4,), 4.0, requires_grad=True)
    kernels.additive_score(proj, q, v).sum().backward()
    exact = [t.detach().double().requires_grad_() for t in (proj, q, v)]
    _formula(*exact).sum().backward()
    for leaf, ref in zip((proj, q, v), exact):
        assert torch.isfinite(leaf.grad).all()
        assert torch.allclose(leaf.grad.double(), ref.grad, rtol=1e-5, atol=1e-30)


def test_additive_score_gradients_are_the_same_on_any_thread_count():
    """Each key row's share of dv is summed in a fixed order: runs on 1 and 2 threads agree bit
    for bit, as do repeated runs."""
    torch.manual_seed(3)
    proj, q, v = torch.randn(8, 9, 40), torch.randn(8, 3, 40), torch.randn(40)
    grads = []
    for threads in (2, 1, 2):
        torch.set_num_threads(threads)
        leaves = [t.clone().requires_grad_() for t in (proj, q, v)]
        kernels.additive_score(*leaves).sum().backward()
        grads.append([t.grad for t in leaves])
    assert all(torch.equal(x, y) for later in grads[1:] for x, y in zip(grads[0], later))


@pytest.mark.parametrize("n,g,s,a,heads", [(3, 1, 5, 16, 1), (2, 5, 7, 13, 1), (2, 3, 4, 12, 4)])
def test_the_operators_pass_torch_library_opcheck(n, g, s, a, heads):
    """Schema, fake (meta) implementation, autograd registration and dispatch, as torch.library
    checks them: for the score and for its backward operator."""
    assert kernels.load(), "the C++ compiler could not build nmt/fast/kernels.cpp"
    torch.manual_seed(n + g + s + a)
    proj, q = torch.randn(n, s, a), torch.randn(n, g, a)
    v = torch.randn(heads, a // heads)
    leaves = [t.clone().requires_grad_() for t in (proj, q, v)]
    torch.library.opcheck(torch.ops.nmt.additive_score.default, tuple(leaves))
    torch.library.opcheck(torch.ops.nmt.additive_score.default, (proj, q, v))
    torch.library.opcheck(torch.ops.nmt.additive_score_backward.default,
                          (proj, q, v, torch.randn(n, g, s, heads)))


def test_the_operator_refuses_what_it_cannot_compute():
    """Wrong dtype or disagreeing shapes raise torch's one-line error, not a wrong result."""
    kernels.load()
    proj, q, v = torch.randn(2, 3, 4), torch.randn(2, 1, 4), torch.randn(4)
    with pytest.raises(RuntimeError, match="float32"):
        kernels.additive_score(proj.double(), q.double(), v.double())
    with pytest.raises(RuntimeError, match="disagree"):
        kernels.additive_score(proj, torch.randn(2, 1, 5), v)


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

    for name in ("additive_score", "lstm_cell", "cross_entropy"):
        monkeypatch.setattr(kernels, name, spy(name))

    def run() -> list[torch.Tensor]:
        torch.manual_seed(4)
        model = small_model("additive", wiring=wiring, dec_layers=layers,
                            operations=kernels.FUSED)
        loss, _ = model.loss(src, lengths, tgt_in, tgt_out, label_smoothing=0.1)
        loss.backward()
        return [loss.detach()] + [p.grad for p in model.parameters()]

    fused = run()
    assert set(calls) == {"additive_score", "lstm_cell", "cross_entropy"}  # the reference
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

"""`nmt.kernels`: the fused CPU kernels against the plain PyTorch formulas they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt import fast, kernels
from nmt.data.tokenizer import PAD

from conftest import fast_only, padded_batch, small_model

pytestmark = fast_only


def _formula(proj: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The additive score in float64: 2 sum_a v[a] sigmoid(proj[n, s, a] + q[n, g, a])."""
    return 2 * (torch.sigmoid(proj.unsqueeze(1) + q.unsqueeze(2)) @ v)  # (N, G, S)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize("n,g,s,a", [(3, 1, 5, 16), (2, 5, 7, 13), (1, 1, 1, 8), (4, 2, 3, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_additive_score_and_gradients_equal_the_formula(n, g, s, a, threads):
    """Forward and all three gradients, for groups of queries, feature counts that are not a
    multiple of the vector width, and z from -60 to 60, where sigmoid saturates."""
    assert kernels.load() is not None, "the C compiler could not build nmt/kernels/kernels.c"
    torch.set_num_threads(threads)
    torch.manual_seed(n * 100 + g * 10 + a)
    proj, q = torch.randn(n, s, a) * 20, torch.randn(n, g, a) * 20
    v = torch.randn(a)
    leaves = [t.clone().requires_grad_() for t in (proj, q, v)]
    exact = [t.double().requires_grad_() for t in (proj, q, v)]
    dscore = torch.randn(n, g, s)
    fused = kernels.additive_score(*leaves)
    fused.backward(dscore)
    reference = _formula(*exact)
    reference.backward(dscore.double())
    assert fused.shape == (n, g, s)
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


def test_additive_score_gradients_are_the_same_every_run():
    """Threads add their shares of dv in a fixed order: runs agree bit for bit."""
    torch.set_num_threads(2)
    torch.manual_seed(3)
    proj, q, v = torch.randn(8, 9, 40), torch.randn(8, 3, 40), torch.randn(40)
    grads = []
    for _ in range(3):
        leaves = [t.clone().requires_grad_() for t in (proj, q, v)]
        kernels.additive_score(*leaves).sum().backward()
        grads.append([t.grad for t in leaves])
    assert all(torch.equal(x, y) for later in grads[1:] for x, y in zip(grads[0], later))


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
    with pytest.raises(IndexError):
        kernels.cross_entropy(torch.zeros(2, 5), torch.tensor([1, 5]))


def test_dropout_keeps_1_minus_p_independently_and_backward_uses_the_same_mask():
    torch.set_num_threads(2)
    torch.manual_seed(5)
    x = (torch.rand(1000, 1000) + 0.5).requires_grad_()  # no zeros of its own
    out = kernels.dropout(x, 0.2)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.003  # binomial sd: 0.0004
    assert torch.allclose(out[kept], x.detach()[kept] / 0.8)
    pairs = (kept[:, 1:] & kept[:, :-1]).float().mean().item()  # neighbours independent
    assert abs(pairs - 0.64) < 0.003
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, kept.float() / 0.8)


def test_dropout_masks_follow_torch_seed():
    x = torch.ones(4096)

    def masks(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [kernels.dropout(x, 0.5) != 0 for _ in range(2)]

    first, again, other = masks(1), masks(1), masks(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0], other[0])
    assert kernels.dropout(x, 0.0) is x


@pytest.mark.parametrize("wiring,layers", [("luong", 1), ("bahdanau", 2)])
def test_model_with_the_kernels_equals_the_plain_model(monkeypatch, wiring, layers):
    """A model's loss and every gradient agree with and without the kernels."""
    src, lengths = padded_batch()
    tgt_in, tgt_out = torch.randint(4, 30, (3, 6)), torch.randint(4, 30, (3, 6))

    def run(use_kernel: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(kernels, "usable", lambda *tensors: use_kernel)
        torch.manual_seed(4)
        model = small_model("additive", wiring=wiring, dec_layers=layers)
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
    """Where the library cannot be built, `usable` is False, no kernel is called, and the
    model's plain PyTorch path gives the fused path's loss (relative 1e-6) and every gradient
    (relative 1e-4, absolute 1e-6: float32 sums taken in another order), label smoothing on."""
    assert kernels.load() is not None, "the C compiler could not build nmt/kernels/kernels.c"
    src, lengths = padded_batch()
    torch.manual_seed(7)
    tgt_in, tgt_out = torch.randint(4, 30, (3, 6)), torch.randint(4, 30, (3, 6))
    tgt_out[2, 4:] = PAD  # a shorter target
    calls: list[str] = []

    def spy(name: str):
        kernel = getattr(kernels, name)

        def counted(*args, **kwargs):
            calls.append(name)
            return kernel(*args, **kwargs)
        return counted

    for name in ("additive_score", "lstm_cell", "cross_entropy"):
        monkeypatch.setattr(kernels, name, spy(name))

    def run() -> list[torch.Tensor]:
        torch.manual_seed(4)
        model = small_model("additive", wiring=wiring, dec_layers=layers)
        loss, _ = model.loss(src, lengths, tgt_in, tgt_out, label_smoothing=0.1)
        loss.backward()
        return [loss.detach()] + [p.grad for p in model.parameters()]

    fused = run()
    assert set(calls) == {"additive_score", "lstm_cell", "cross_entropy"}  # the reference
    calls.clear()

    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_library", None)
    monkeypatch.setattr(fast, "_ENABLED", True)
    monkeypatch.setenv("NMT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert kernels.load() is None
    assert "fused CPU kernels are off" in caplog.text
    assert not kernels.usable(torch.zeros(1))
    plain = run()
    assert calls == []  # the plain formulas alone
    assert torch.allclose(plain[0], fused[0], rtol=1e-6, atol=0)
    assert len(plain) == len(fused)
    for p, f in zip(plain[1:], fused[1:]):
        assert p is not None and torch.allclose(p, f, rtol=1e-4, atol=1e-6), (p - f).abs().max()


@pytest.mark.parametrize("layers", [1, 2])
def test_encoder_loop_equals_packed_lstm(monkeypatch, layers):
    """The encoder's own step loop gives nn.LSTM's annotations, final states and gradients,
    padding included (sentences of lengths 7, 4 and 2)."""
    src, lengths = padded_batch()

    def run(use_kernels: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(kernels, "usable", lambda *tensors: use_kernels)
        torch.manual_seed(2)
        encoder = small_model("additive", enc_layers=layers).encoder
        out, (h, c) = encoder(src, lengths)
        (out.pow(2).sum() + (h * c).sum()).backward()
        return [out, h, c] + [p.grad for p in encoder.parameters()]

    loop, packed = run(True), run(False)
    assert loop[0][2, 2:].abs().max() == 0  # padding annotations are zero
    for a, b in zip(loop, packed):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()

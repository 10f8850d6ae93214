"""`nmt.fast.int8`: a quantized copy of a built model, whose 8-bit products are close to fp32
ones, that leaves the model itself alone, and the probe of torch's private int8 operators with
its fallback."""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F

from nmt.config import AttentionConfig, ModelConfig
from nmt.data.tokenizer import BOS
from nmt.fast import int8
from nmt.model.seq2seq import build_model

from conftest import fast_only


def wide_model():
    """A tiny model whose decoder and output layer are wide enough to be quantized."""
    torch.manual_seed(7)
    cfg = ModelConfig(emb_size=64, hidden_size=64, decoder_size=128,
                      attention=AttentionConfig(size=64))
    return build_model(cfg, 80, 80).eval()


def step_log_probs(model, src: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        memory, state = model.encode(src, torch.full((src.size(0),), src.size(1)))
        prev = torch.full((src.size(0),), BOS)
        return model.decode_step(prev, state, memory, 0)[2]  # (B, V)


@fast_only
def test_a_quantized_copy_searches_close_to_fp32_and_leaves_the_model_alone():
    model = wide_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src = torch.randint(4, 80, (6, 9))
    quantized = int8.quantized(model)
    assert quantized is not model
    # the copy's decoder and output layer hold 8-bit weights; the small ones stay as they were
    assert isinstance(quantized.generator.weight, int8.Int8Weight)
    assert isinstance(quantized.decoder.recurrent[0], int8.Int8Weight)
    assert isinstance(quantized.decoder.combine.weight, int8.Int8Weight)
    assert not isinstance(quantized.encoder.rnn.weight_ih_l0, int8.Int8Weight)
    assert not isinstance(quantized.decoder.attention.score.key_layer.weight, int8.Int8Weight)
    exact, approx = step_log_probs(model, src), step_log_probs(quantized, src)
    assert not torch.equal(approx, exact)  # the 8-bit products did run
    assert (approx.exp() - exact.exp()).abs().max() < 0.02
    # the model itself is untouched: its parameters, their values, its results
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(step_log_probs(model, src), exact)


@fast_only
def test_an_int8_weight_is_the_float32_weight_outside_a_search():
    """Products that need a gradient run exactly as F.linear; every other operation sees the
    float32 weight and returns plain tensors."""
    torch.manual_seed(9)
    plain = torch.randn(96, 80)
    weight = int8.Int8Weight(plain)
    x = torch.randn(5, 80)
    with torch.no_grad():
        approx = F.linear(x, weight)
        assert not torch.equal(approx, F.linear(x, plain))
        assert torch.allclose(approx, F.linear(x, plain), atol=0.05 * approx.abs().max())
    exact = F.linear(x.requires_grad_(), weight)
    assert torch.equal(exact, F.linear(x, plain))
    doubled = weight * 2
    assert type(doubled) is torch.Tensor and torch.equal(doubled, plain * 2)


@fast_only
def test_the_probe_falls_back_to_the_plain_model(monkeypatch, caplog):
    """Where torch lacks (or breaks) the int8 operators, the probe says so once and a search
    runs the model itself, with the same results."""

    def broken(*args, **kwargs):
        raise RuntimeError("operator not available")

    int8._works.cache_clear()
    monkeypatch.setattr(int8._PackedInt8, "__init__", broken)
    try:
        assert not int8.available()
        assert not int8.available()  # asked again: the answer is kept, not re-probed
        warnings = [r.message for r in caplog.records if "not available" in r.message]
        assert len(warnings) == 1, warnings
        model = wide_model()
        assert int8.quantized(model) is model
    finally:
        int8._works.cache_clear()


@fast_only
def test_the_probe_leaves_the_global_random_state_alone():
    """The probe runs at a training run's first validation: drawing from the global generator
    there would make a resumed run's dropout differ from an uninterrupted one's."""
    int8._works.cache_clear()
    try:
        before = torch.get_rng_state()
        assert int8._works()
        assert torch.equal(torch.get_rng_state(), before)
    finally:
        int8._works.cache_clear()


@fast_only
def test_the_probe_passes_where_the_operators_work():
    if platform.machine() in ("x86_64", "AMD64"):
        assert int8.available()  # fbgemm ships with torch's CPU builds on x86

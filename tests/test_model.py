"""Model properties: attention masks, padding invariance, step loop equals teacher forcing."""

from __future__ import annotations

import pytest
import torch

from nmt.config import ModelConfig
from nmt.data.tokenizer import BOS, EOS, PAD
from nmt.model.seq2seq import build_model

from conftest import padded_batch, small_model, variant_model


@pytest.mark.parametrize("score", ["additive", "dot", "general"])
def test_attention_is_a_distribution_over_real_tokens(score):
    torch.manual_seed(1)
    model = small_model(score).eval()
    src, lengths = padded_batch()
    tgt_in = torch.randint(4, 30, (3, 5))
    _, weights = model(src, lengths, tgt_in)  # (B, T, S)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 5), atol=1e-6)
    for i, n in enumerate(lengths):
        assert torch.all(weights[i, :, n:] == 0)
        assert torch.all(weights[i, :, :n] > 0)


@pytest.mark.parametrize("layers", [1, 2])
def test_padding_does_not_change_states_or_loss(layers):
    torch.manual_seed(2)
    model = small_model(enc_layers=layers, dec_layers=layers).eval()
    src, lengths = padded_batch()
    tgt_in = torch.tensor([[BOS, 5, 6, 7], [BOS, 8, 9, PAD], [BOS, 10, PAD, PAD]])
    tgt_out = torch.tensor([[5, 6, 7, EOS], [8, 9, EOS, PAD], [10, EOS, PAD, PAD]])
    states, _ = model.encoder(src, lengths)
    batch_loss = [model.loss(src[i:i + 1], lengths[i:i + 1], tgt_in[i:i + 1],
                             tgt_out[i:i + 1])[0] for i in range(3)]
    for i, n in enumerate(lengths.tolist()):
        alone, _ = model.encoder(src[i:i + 1, :n], lengths[i:i + 1])
        assert torch.allclose(alone[0], states[i, :n], atol=1e-6)
        assert torch.all(states[i, n:] == 0)
        t = int((tgt_out[i] != PAD).sum())
        loss_alone, count = model.loss(src[i:i + 1, :n], lengths[i:i + 1], tgt_in[i:i + 1, :t],
                                       tgt_out[i:i + 1, :t])
        assert count == t
        assert torch.allclose(loss_alone, batch_loss[i], atol=1e-5)
    total, count = model.loss(src, lengths, tgt_in, tgt_out)
    assert count == 4 + 3 + 2
    assert torch.allclose(total, sum(batch_loss), atol=1e-5)


@pytest.mark.parametrize("kind", ["none", "global", "local-m", "local-p", "hard", "coverage"])
@pytest.mark.parametrize("wiring", ["luong", "bahdanau"])
def test_step_loop_matches_teacher_forcing(kind, wiring):
    """Search's path (embed one token, step) gives the same states as training's forward."""
    torch.manual_seed(3)
    model = variant_model(kind, dec_layers=2, wiring=wiring).eval()
    src, lengths = padded_batch()
    tgt_in = torch.randint(4, 30, (3, 6))
    att, weights = model(src, lengths, tgt_in)
    memory, state = model.encode(src, lengths)
    for t in range(6):
        state, w = model.decoder.step(model.decoder.embed_inputs(tgt_in[:, t]), state, memory, t)
        assert torch.allclose(state.feed, att[:, t], atol=1e-6)
        assert torch.allclose(w, weights[:, t], atol=1e-6)


@pytest.mark.parametrize("kind", ["none", "global", "local-p", "hard", "coverage"])
@pytest.mark.parametrize("wiring", ["luong", "bahdanau"])
def test_deferred_weight_gradients_equal_per_step_ones(kind, wiring):
    """Training's forward computes weight gradients once over all steps; they equal the
    gradients of the plain step loop, whose products autograd differentiates step by step."""
    torch.manual_seed(4)
    model = variant_model(kind, dec_layers=2, wiring=wiring).eval()
    src, lengths = padded_batch()
    tgt_in = torch.randint(4, 30, (3, 6))
    tgt_out = torch.randint(4, 30, (3, 6))

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    deferred = grads(model.loss(src, lengths, tgt_in, tgt_out)[0])
    memory, state = model.encode(src, lengths)
    att = []
    for t in range(6):
        state, _ = model.decoder.step(model.decoder.embed_inputs(tgt_in[:, t]), state, memory, t)
        att.append(state.feed)
    logits = model.generator(torch.stack(att, dim=1))  # (B, T, V)
    plain = grads(torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(),
                                                    reduction="sum"))
    assert deferred.keys() == plain.keys()
    assert any("recurrent" in n for n in plain)
    for name, grad in plain.items():
        assert torch.allclose(deferred[name], grad, rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("kind", ["none", "global", "local-p", "hard", "coverage"])
@pytest.mark.parametrize("wiring", ["luong", "bahdanau"])
def test_mixed_precision_gradients_are_close_to_fp32_ones(kind, wiring):
    """Under autocast, as training on a GPU runs, the loss trains: every weight gets an fp32
    gradient within half precision of the fp32 one. (fp16 rather than bf16: with bf16's 8-bit
    mantissa, hard attention's argmax flips on near ties and the comparison says nothing.)"""
    torch.manual_seed(5)
    model = variant_model(kind, dec_layers=2, wiring=wiring).eval()
    src, lengths = padded_batch()
    tgt_in, tgt_out = torch.randint(4, 30, (2, 3, 6))

    def grads(autocast: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            loss = model.loss(src, lengths, tgt_in, tgt_out)[0]
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    exact, mixed = grads(False), grads(True)
    assert mixed.keys() == exact.keys()
    errors = []
    for name, grad in exact.items():
        assert mixed[name].dtype == torch.float32, name
        errors.append(float((mixed[name] - grad).norm() / grad.norm()))
        assert errors[-1] < 0.2, (name, errors[-1])  # worst seen: 0.10 (a score's query layer)
    assert sorted(errors)[len(errors) // 2] < 0.01  # typical: 0.0008


def test_tied_embeddings_share_one_matrix():
    model = ModelConfig(emb_size=32, hidden_size=16, decoder_size=32, tie_embeddings=True)
    m = build_model(model, 30, 30)
    assert m.generator.weight is m.decoder.embed.weight

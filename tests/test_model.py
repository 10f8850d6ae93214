"""Model properties: attention masks, padding invariance, step loop equals teacher forcing."""

from __future__ import annotations

import gc
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

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


@pytest.mark.parametrize("kind", ["global", "local-m", "local-p", "coverage", "multihead"])
@pytest.mark.parametrize("wiring", ["luong", "bahdanau"])
def test_loss_counts_the_real_target_positions_only(kind, wiring):
    """The loss and all its gradients equal the cross-entropy of full teacher forcing at the
    real target positions, whatever the padding after them."""
    src, lengths = padded_batch()
    tgt_in = torch.tensor([[BOS, 5, PAD, PAD], [BOS, 8, 9, 4], [BOS, 10, 11, PAD]])
    tgt_out = torch.tensor([[5, EOS, PAD, PAD], [8, 9, 4, EOS], [10, 11, EOS, PAD]])
    torch.manual_seed(3)
    model = variant_model(kind, wiring=wiring)
    params = list(model.parameters())

    def loss_and_grads(loss: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [loss] + [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    loss, count = model.loss(src, lengths, tgt_in, tgt_out, label_smoothing=0.1)
    att, _ = model(src, lengths, tgt_in)  # (B, T, H), every position
    keep = tgt_out != PAD
    full = F.cross_entropy(model.generator(att[keep]), tgt_out[keep], reduction="sum",
                           label_smoothing=0.1)
    assert count == 2 + 4 + 3
    for a, b in zip(loss_and_grads(loss), loss_and_grads(full)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["global", "local-p", "hard", "coverage", "multihead"])
def test_an_update_leaves_no_reference_cycles(kind):
    """Everything an update builds is freed when its last reference goes, without the garbage
    collector: a cycle through the graph would keep packed weights and activations alive
    until a full collection, and memory would grow from update to update. (A first update
    runs before: what a process sets up once, on its first update, is not an update's; and
    the collector runs until it finds nothing, since collecting what earlier tests left can
    leave new garbage, from their finalizers.)"""
    model = variant_model(kind, dropout=0.1)
    src, lengths = padded_batch()
    tgt = torch.tensor([[5, 6, EOS, PAD], [8, 9, 4, EOS], [10, EOS, PAD, PAD]])
    model.loss(src, lengths, tgt, tgt)[0].backward()
    for _ in range(10):
        if gc.collect() == 0:
            break
    gc.disable()
    try:
        loss, _ = model.loss(src, lengths, tgt, tgt)
        loss.backward()
        del loss
        gc.set_debug(gc.DEBUG_SAVEALL)  # what is found stays in gc.garbage, to be named
        found = gc.collect()
        kinds = Counter(type(o).__name__ for o in gc.garbage).most_common(8)
        assert found == 0, kinds
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize("kind", ["none", "global", "local-m", "local-p", "hard", "coverage",
                                  "multihead"])
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


@pytest.mark.parametrize("kind", ["none", "global", "local-p", "hard", "coverage", "multihead"])
@pytest.mark.parametrize("wiring", ["luong", "bahdanau"])
def test_loss_gradients_equal_those_of_the_search_step_loop(kind, wiring):
    """The training loss's gradients (teacher forcing, the output layer once over the real
    tokens) equal those of the search's step loop, one step at a time."""
    torch.manual_seed(4)
    model = variant_model(kind, dec_layers=2, wiring=wiring).eval()
    src, lengths = padded_batch()
    tgt_in = torch.randint(4, 30, (3, 6))
    tgt_out = torch.randint(4, 30, (3, 6))

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    taught = grads(model.loss(src, lengths, tgt_in, tgt_out)[0])
    memory, state = model.encode(src, lengths)
    att = []
    for t in range(6):
        state, _ = model.decoder.step(model.decoder.embed_inputs(tgt_in[:, t]), state, memory, t)
        att.append(state.feed)
    logits = model.generator(torch.stack(att, dim=1))  # (B, T, V)
    plain = grads(torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(),
                                                    reduction="sum"))
    assert taught.keys() == plain.keys()
    assert any("recurrent" in n for n in plain)
    for name, grad in plain.items():
        assert torch.allclose(taught[name], grad, rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("kind", ["none", "global", "local-p", "hard", "coverage", "multihead"])
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


@pytest.mark.parametrize("wiring", ["luong", "bahdanau"])
def test_layer_normalised_decoder_ignores_the_scale_of_its_products(wiring):
    """Ba et al. (2016): each gate pre-activation is normalised, so scaling the decoder's input
    and recurrent weights leaves every state unchanged (without layer norm it does not); the
    search path (one step at a time) still equals teacher forcing."""
    src, lengths = padded_batch()
    tgt_in = torch.randint(4, 30, (3, 6))

    def states_before_and_after_scaling(layer_norm: bool):
        torch.manual_seed(6)
        model = small_model(wiring=wiring, dec_layers=2, layer_norm=layer_norm).eval()
        with torch.no_grad():
            for norm in getattr(model.decoder, "recurrent_norm", []):
                norm.bias.uniform_(-0.5, 0.5)  # not the identity LN of a fresh model
            before, weights = model(src, lengths, tgt_in)
            memory, state = model.encode(src, lengths)
            for t in range(6):
                x = model.decoder.embed_inputs(tgt_in[:, t])
                state, w = model.decoder.step(x, state, memory, t)
                assert torch.allclose(state.feed, before[:, t], atol=1e-5)
                assert torch.allclose(w, weights[:, t], atol=1e-5)
            model.decoder.input_layer.weight.mul_(3)
            for w in model.decoder.recurrent:
                w.mul_(3)
            after, _ = model(src, lengths, tgt_in)
        return before, after

    before, after = states_before_and_after_scaling(layer_norm=True)
    assert (before - after).abs().max() < 2e-3  # (LN's epsilon is not scaled)
    before, after = states_before_and_after_scaling(layer_norm=False)
    assert (before - after).abs().max() > 2e-2

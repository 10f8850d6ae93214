"""Model properties: attention masks, padding invariance, and a learned reversal task."""

from __future__ import annotations

import pytest
import torch

from nmt.config import AttentionConfig, ModelConfig
from nmt.data.tokenizer import BOS, EOS, PAD
from nmt.model.seq2seq import build_model


def small_model(score: str = "additive", dropout: float = 0.0, vocab: int = 30, **kw):
    cfg = ModelConfig(emb_size=16, hidden_size=16, decoder_size=32, dropout=dropout,
                      attention=AttentionConfig(score=score, size=16), **kw)
    return build_model(cfg, vocab, vocab)


def padded_batch():
    torch.manual_seed(0)
    lengths = torch.tensor([7, 4, 2])
    src = torch.full((3, 7), PAD)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(4, 30, (int(n),))
    return src, lengths


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


def test_step_loop_matches_teacher_forcing():
    """Search's path (embed one token, step) gives the same states as training's forward."""
    torch.manual_seed(3)
    model = small_model(dec_layers=2).eval()
    src, lengths = padded_batch()
    tgt_in = torch.randint(4, 30, (3, 6))
    att, weights = model(src, lengths, tgt_in)
    memory, state = model.encode(src, lengths)
    for t in range(6):
        state, w = model.decoder.step(model.decoder.embed_inputs(tgt_in[:, t]), state, memory, t)
        assert torch.allclose(state.feed, att[:, t], atol=1e-6)
        assert torch.allclose(w, weights[:, t], atol=1e-6)


def test_tied_embeddings_share_one_matrix():
    model = ModelConfig(emb_size=32, hidden_size=16, decoder_size=32, tie_embeddings=True)
    m = build_model(model, 30, 30)
    assert m.generator.weight is m.decoder.embed.weight


def reversal_batch(gen: torch.Generator, batch: int = 64, vocab: int = 24):
    lengths = torch.randint(3, 9, (batch,), generator=gen)
    s = int(lengths.max())
    src = torch.full((batch, s), PAD)
    tgt_in = torch.full((batch, s + 1), PAD)
    tgt_out = torch.full((batch, s + 1), PAD)
    for i, n in enumerate(lengths.tolist()):
        x = torch.randint(4, vocab, (n,), generator=gen)
        src[i, :n] = x
        tgt_in[i, 0], tgt_in[i, 1:n + 1] = BOS, x.flip(0)
        tgt_out[i, :n], tgt_out[i, n] = x.flip(0), EOS
    return src, lengths, tgt_in, tgt_out


def test_learns_reversal_with_anti_diagonal_attention():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = small_model(vocab=24)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(400):
        src, lengths, tgt_in, tgt_out = reversal_batch(gen)
        loss, n = model.loss(src, lengths, tgt_in, tgt_out)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    model.eval()
    src, lengths, tgt_in, tgt_out = reversal_batch(gen, batch=200)
    with torch.no_grad():
        att, weights = model(src, lengths, tgt_in)
        pred = model.generator(att).argmax(-1)
    real = tgt_out != PAD
    accuracy = float((pred == tgt_out)[real].float().mean())
    assert accuracy > 0.97
    aligned = total = 0
    for i, n in enumerate(lengths.tolist()):
        looked = weights[i, :n, :n].argmax(-1)  # (n,) most-attended source position per step
        aligned += int((looked == torch.arange(n - 1, -1, -1)).sum())
        total += n
    assert aligned / total > 0.9

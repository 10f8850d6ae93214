"""The fast layer's fused kernels (`nmt.fast.kernels.FUSED`: the additive score, the LSTM cell,
the cross-entropy)
against the plain PyTorch model that `NMT_FAST=0` runs, in one process, with a count of the
kernels' calls, so that a build that failed cannot compare plain with plain. Stated tolerance:
the loss within 1e-5 relative, every gradient within 1e-4 relative (1e-6 absolute),
translations identical and their scores within 1e-4. (int8 search: tests/test_int8.py and
tests/test_inference.py.)"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from nmt import fast
from nmt.data.batching import Dataset, collate
from nmt.fast import kernels
from nmt.inference.translator import Translator

from conftest import fast_only, variant_model

KINDS = ["none", "global", "local-m", "local-p", "hard", "coverage", "multihead"]


def toy_batch(pairs: int = 12, vocab: int = 30):
    gen = np.random.default_rng(4)
    src_len, tgt_len = gen.integers(2, 10, pairs), gen.integers(1, 10, pairs)
    data = Dataset(gen.integers(4, vocab, int(src_len.sum())), src_len,
                   gen.integers(4, vocab, int(tgt_len.sum())), tgt_len)
    return collate(data, np.arange(pairs))


def switch(monkeypatch, on: bool) -> None:
    monkeypatch.setattr(fast, "_ON", frozenset(fast.PIECES if on else ()))


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """The names of the fused kernels called, in order."""
    made: list[str] = []
    for name in ("additive_score", "lstm_cell", "cross_entropy"):
        kernel = getattr(kernels, name)
        monkeypatch.setattr(kernels, name,
                            lambda *a, _k=kernel, _n=name: made.append(_n) or _k(*a))
    return made


def loss_and_grads(model, batch, on: bool, monkeypatch) -> list[torch.Tensor]:
    switch(monkeypatch, on)
    model.zero_grad()
    loss, _ = model.loss(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out, 0.1)
    loss.backward()
    return [loss.detach()] + [None if p.grad is None else p.grad.clone()
                              for p in model.parameters()]


@fast_only
@pytest.mark.parametrize("kind", KINDS + ["layer-norm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_a_training_step_is_the_same_with_and_without_the_fast_layer(kind, layers, monkeypatch,
                                                                     calls):
    torch.manual_seed(2)
    extra = {"layer_norm": True} if kind == "layer-norm" else {}
    kind = "global" if kind == "layer-norm" else kind
    model = variant_model(kind, enc_layers=layers, dec_layers=layers,
                          operations=kernels.FUSED, **extra)
    # hard attention samples per step, from as many rows as the step runs: the two paths draw
    # different noise, so it is compared as at inference (argmax)
    model.train(kind != "hard")
    batch = toy_batch()
    quick = loss_and_grads(model, batch, True, monkeypatch)
    ran = set(calls)  # layer norm has its own cell; `none` has no score, coverage its own
    fused = {"cross_entropy"} | ({"additive_score"} if kind not in ("none", "coverage")
                                 else set())
    assert ran == fused | (set() if extra else {"lstm_cell"}), ran
    calls.clear()
    plain = loss_and_grads(model, batch, False, monkeypatch)
    assert not calls
    assert torch.allclose(quick[0], plain[0], rtol=1e-5, atol=0), (quick[0], plain[0])
    for (name, _), q, p in zip(model.named_parameters(), quick[1:], plain[1:]):
        assert (q is None) == (p is None), name  # (argmax attention passes no gradient)
        assert q is None or torch.allclose(q, p, rtol=1e-4, atol=1e-6), (name, (q - p).abs().max())


@fast_only
@pytest.mark.parametrize("beam", [1, 4])
def test_translations_are_the_same_with_and_without_the_fast_layer(trained_run, beam,
                                                                   monkeypatch, calls):
    sources = (trained_run / "test.en").read_text(encoding="utf-8").splitlines()

    def translate() -> list:
        translator = Translator.from_checkpoint(trained_run / "best.pt")
        translator.decode = replace(translator.decode, precision="fp32")
        return translator.translate(sources, beam=beam)

    switch(monkeypatch, True)
    quick = translate()
    assert set(calls) == {"additive_score", "lstm_cell"}  # search: no loss
    calls.clear()
    switch(monkeypatch, False)
    plain = translate()
    assert not calls
    assert [t.text for t in quick] == [t.text for t in plain]
    assert [t.score for t in quick] == pytest.approx([t.score for t in plain], abs=1e-4)

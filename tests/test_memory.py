"""Model sizes, checked before any tensor exists: the parameter count from the config alone, a
model too large for the device refused before it is built, and sizes beyond any model refused
as config errors by `nmt train`, however large the number."""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict

import pytest
import torch
from typer.testing import CliRunner

from nmt.cli import app
from nmt.config import MAX_LAYERS, MAX_THREADS, MAX_WIDTH, AttentionConfig, ModelConfig, from_dict
from nmt.errors import ConfigError
from nmt.model.seq2seq import build_model, count_parameters
from nmt.training import memory
from nmt.training.memory import OutOfMemory, allocate_model, parameter_count

from conftest import ROOT

runner = CliRunner()


def architectures() -> list[ModelConfig]:
    """Every attention the config accepts, each with 8 of the 32 combinations of the other
    architecture choices (every 4 attentions, all 32), with sizes that all differ, so that a
    size counted in the wrong place shows."""
    attentions = itertools.product(
        ("none", "global", "local-m", "local-p", "hard"), ("additive", "dot", "general"),
        ("luong", "bahdanau"), ({}, {"coverage": True}, {"heads": 2}))
    others = list(itertools.product(("projection", "zeros"), (True, False), (False, True),
                                    (False, True), ((1, 1), (2, 3))))
    found = []
    for i, (kind, score, wiring, extra) in enumerate(attentions):
        for bridge, feeding, norm, tie, layers in others[i % 4::4]:
            raw = {"model": {
                "emb_size": 10 if tie else 7, "hidden_size": 5, "decoder_size": 10,
                "enc_layers": layers[0], "dec_layers": layers[1], "bridge": bridge,
                "input_feeding": feeding, "layer_norm": norm, "tie_embeddings": tie,
                "attention": {"type": kind, "score": score, "wiring": wiring, "size": 8,
                              **extra}}}
            try:
                found.append(from_dict(raw).model)
            except ConfigError:
                continue  # a combination the config refuses
    return found


def test_the_count_from_the_sizes_is_the_built_models():
    models = architectures()
    assert len(models) > 200
    for cfg in models:
        with torch.device("meta"):
            built = count_parameters(build_model(cfg, 17, 23))
        assert parameter_count(cfg, 17, 23) == built, asdict(cfg)


@pytest.fixture
def never_built(monkeypatch):
    """Fails the test if allocate_model builds the model, on any device."""

    def build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(memory, "build_model", build)


@pytest.mark.parametrize("sizes", [
    {"hidden_size": 10**30},
    {"emb_size": 2**63},
    {"decoder_size": 2**63, "attention": AttentionConfig(size=2**63)},
    {"enc_layers": 2**40, "dec_layers": 10**30},
    {"vocab": 2**63},
], ids=["hidden-1e30", "emb-2^63", "decoder-and-attention-2^63", "layers", "vocabulary-2^63"])
def test_a_model_of_any_size_is_refused_before_it_is_built(sizes, never_built):
    """Sizes that no tensor could have, in a ModelConfig made in code (the config's own limits
    are not there to stop them): counted with Python's integers and refused in one line that
    names the count, with nothing built, not even on the meta device."""
    vocab = sizes.get("vocab", 120)
    cfg = ModelConfig(**{key: value for key, value in sizes.items() if key != "vocab"})
    params = parameter_count(cfg, vocab, vocab)
    assert params > 2**63  # beyond any tensor's size
    with pytest.raises(OutOfMemory) as refused:
        allocate_model(cfg, vocab, vocab, torch.device("cpu"))
    message = str(refused.value)
    assert f"the model has {params:,} parameters and needs at least " in message
    assert "\n" not in message and f"vocabularies {vocab}/{vocab}" in message


def test_the_largest_model_the_config_allows_is_refused_at_once(never_built):
    """At the config's limits every size is still an exact count, refused for want of memory
    (not as a config error) without building anything."""
    cfg = ModelConfig(emb_size=MAX_WIDTH, hidden_size=MAX_WIDTH, decoder_size=MAX_WIDTH,
                      enc_layers=MAX_LAYERS, dec_layers=MAX_LAYERS,
                      attention=AttentionConfig(size=MAX_WIDTH, window=MAX_WIDTH))
    assert from_dict({"model": asdict(cfg)}).model == cfg  # the config accepts it
    with pytest.raises(OutOfMemory, match=r"the model has [\d,]+ parameters and needs at least"):
        allocate_model(cfg, 10**6, 10**6, torch.device("cpu"))


HOSTILE = [2**40, 10**30, 2**63]
KEYS = ["model.emb_size", "model.hidden_size", "model.decoder_size", "model.enc_layers",
        "model.dec_layers", "model.attention.size", "model.attention.window",
        "data.vocab_size", "train.threads"]


def train(tmp_path, *sets: str):
    return runner.invoke(app, ["train", "-c", str(ROOT / "configs" / "tiny.yaml"),
                               "--runs-dir", str(tmp_path / "runs"),
                               "--set", f"data.prepared_dir={tmp_path / 'prepared'}",
                               *[x for s in sets for x in ("--set", s)]])


def one_error_line(result) -> str:
    """The single `error:` line that ends stderr, with no traceback before it."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    return errors[0]


@pytest.mark.parametrize("key", KEYS)
def test_train_refuses_a_size_beyond_any_model_in_one_line(key, tmp_path):
    for value in HOSTILE:
        start = time.monotonic()
        result = train(tmp_path, f"{key}={value}")
        assert result.exit_code == 2, (value, result.stdout, result.stderr)
        assert f"{key}: expected " in one_error_line(result) and str(value) in result.stderr
        assert time.monotonic() - start < 10
        assert not (tmp_path / "runs").exists() and not (tmp_path / "prepared").exists()


def test_train_names_every_size_beyond_any_model_at_once(tmp_path):
    result = train(tmp_path, f"model.hidden_size={2**63}", f"model.dec_layers={10**30}",
                   f"model.emb_size={MAX_WIDTH + 1}", f"train.threads={MAX_THREADS + 1}")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    line = one_error_line(result)
    for key in ("model.hidden_size", "model.dec_layers", "model.emb_size", "train.threads"):
        assert f"{key}: expected at most" in line, line

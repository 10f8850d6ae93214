"""Fine-tuning (`train.init_from`): a new run starts from a parent's weights and tokenizer
exactly, records its parent, encodes a new corpus with the parent's SentencePiece models and
learns on it; a parent of another model, vocabulary or language pair is refused in one line;
`init_optimizer` loads Adam's moments; a resumed fine-tune equals an uninterrupted one."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from nmt import checkpoint
from nmt.cli import app
from nmt.config import Config, CorpusConfig, to_dict
from nmt.data.batching import Dataset, collate
from nmt.data.prepare import cache_key, prepare
from nmt.data.tokenizer import Tokenizer
from nmt.errors import ConfigError
from nmt.model.seq2seq import build_model
from nmt.train import resume_config, train
from nmt.training.trainer import Trainer

from conftest import ROOT, TINY_CORPUS, tiny_config

runner = CliRunner()
QUICK = {"valid_every": 10, "valid_max_sentences": 4}


def start_of(monkeypatch) -> dict:
    """Makes `train` stop before its first update; returns what the trainer then held."""
    seen: dict = {}

    def run(self: Trainer):
        seen["weights"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        seen["optimizer"] = self.optimizer.state_dict()
        seen["step"] = self.progress.step
        return self.progress

    monkeypatch.setattr(Trainer, "run", run)
    return seen


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def half_corpus_config(tmp: Path, **train_settings) -> Config:
    """tiny_config on every other pair of the tiny corpus (a new corpus for the parent)."""
    lines = TINY_CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp / "half.tsv").write_text("".join(lines[::2]), encoding="utf-8")
    cfg = tiny_config(tmp, **train_settings)
    return replace(cfg, data=replace(cfg.data, corpora=(CorpusConfig(path="half.tsv"),)))


def test_weights_digest_is_of_the_tensors_in_a_fixed_order():
    a = {"x": torch.arange(6.0).reshape(2, 3), "y": torch.ones(2)}
    b = {"y": torch.ones(2), "x": torch.arange(6.0).reshape(2, 3)}
    assert checkpoint.weights_digest(a) == checkpoint.weights_digest(b)
    c = {"x": a["x"].clone(), "y": torch.tensor([1.0, 1.0 + 2 ** -20])}
    assert checkpoint.weights_digest(a) != checkpoint.weights_digest(c)
    assert checkpoint.weights_digest(a) != checkpoint.weights_digest(
        {"x": a["x"].reshape(3, 2), "y": a["y"]})
    assert len(checkpoint.weights_digest(a)) == 64


def test_starts_from_the_parents_weights_and_records_it(trained_run, tmp_path, monkeypatch):
    parent_file = checkpoint.resolve(trained_run)  # best.pt
    parent = checkpoint.load(parent_file)
    seen = start_of(monkeypatch)
    cfg = tiny_config(tmp_path, init_from=str(trained_run), **QUICK)
    cfg = replace(cfg, model=replace(cfg.model, dropout=0.25))  # changes no weight: allowed
    run = train(cfg, runs_dir=tmp_path / "runs")
    assert seen["step"] == 0
    assert same_tensors(seen["weights"], parent["model"])
    assert seen["optimizer"]["state"] == {}  # init_optimizer false: Adam starts afresh
    record = json.loads((run / "parent.json").read_text())
    assert record == {"init_from": str(trained_run), "path": str(parent_file.resolve()),
                      "step": parent["step"],
                      "weights_sha256": checkpoint.weights_digest(parent["model"])}
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["init_from"] == \
        str(trained_run)
    log = (run / "train.log").read_text()
    assert log.count("fine-tuning from") == 1
    assert f"(step {parent['step']}, weights sha256 {record['weights_sha256'][:16]}" in log


def test_init_optimizer_loads_adams_moments(trained_run, tmp_path, monkeypatch):
    last = checkpoint.load(trained_run / "last.pt")
    moments = last["resume"]["optimizer"]["state"]
    seen = start_of(monkeypatch)
    cfg = tiny_config(tmp_path, init_from=str(trained_run / "last.pt"), init_optimizer=True,
                      lr=0.0003, **QUICK)
    train(cfg, runs_dir=tmp_path / "runs")
    state = seen["optimizer"]["state"]
    assert set(state) == set(moments)
    for i in moments:
        assert torch.equal(state[i]["exp_avg"], moments[i]["exp_avg"])
        assert torch.equal(state[i]["exp_avg_sq"], moments[i]["exp_avg_sq"])
    assert seen["step"] == 0
    assert all(g["lr"] == 0.0003 for g in seen["optimizer"]["param_groups"])


def test_init_optimizer_needs_a_checkpoint_with_moments(trained_run, tmp_path):
    older = [p for p in trained_run.glob("step-*.pt")
             if checkpoint.load(p)["step"] != checkpoint.load(trained_run / "last.pt")["step"]]
    assert older, "the tiny run keeps a validation checkpoint before its last step"
    cfg = tiny_config(tmp_path, init_from=str(older[0]), init_optimizer=True, **QUICK)
    with pytest.raises(ConfigError, match="no Adam moments.*last.pt"):
        train(cfg, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def train_loss(weights: dict, cfg: Config, tokenizer: Tokenizer, data: Dataset) -> float:
    """Mean cross-entropy of the model with `weights` on every pair of `data`."""
    model = build_model(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    model.load_state_dict(weights)
    model.eval()
    batch = collate(data, np.arange(len(data)))
    with torch.no_grad():
        loss, n = model.loss(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out)
    return float(loss) / n


def test_new_corpus_with_the_parents_tokenizer_learns(trained_run, tmp_path):
    cfg = half_corpus_config(tmp_path, init_from=str(trained_run), max_steps=30, **QUICK)
    run = train(cfg, runs_dir=tmp_path / "runs")
    spm = {lang: (trained_run / f"spm.{lang}.model").read_bytes() for lang in ("en", "pt")}
    assert {lang: (run / f"spm.{lang}.model").read_bytes() for lang in spm} == spm
    tokenizer = Tokenizer(spm["en"], spm["pt"])
    own = prepare(cfg.data)  # the same corpora prepared as for a new model: another cache entry
    assert cache_key(cfg.data, tokenizer) != cache_key(cfg.data) and own.path.name == \
        cache_key(cfg.data)
    assert own.spm("en").read_bytes() != spm["en"]  # so the run's models are not trained here
    prepared = prepare(cfg.data, tokenizer=tokenizer)
    assert prepared.path.name == cache_key(cfg.data, tokenizer)
    assert (run / "test.en").read_text() == prepared.text("test", "en").read_text()
    data = Dataset.load(prepared.ids("train"))
    before = train_loss(checkpoint.load(checkpoint.resolve(trained_run))["model"], cfg,
                        tokenizer, data)
    after = train_loss(checkpoint.load(run / "last.pt")["model"], cfg, tokenizer, data)
    assert after < before


def test_resumed_finetune_equals_an_uninterrupted_one(trained_run, tmp_path):
    parent = tmp_path / "parent"
    shutil.copytree(trained_run, parent, symlinks=True)
    settings = {"init_from": str(parent / "last.pt"), "init_optimizer": True}
    full = train(half_corpus_config(tmp_path, max_steps=40, **settings, **QUICK),
                 runs_dir=tmp_path / "a")
    half = train(half_corpus_config(tmp_path, max_steps=20, **settings, **QUICK),
                 runs_dir=tmp_path / "b")
    shutil.rmtree(parent)  # a resumed fine-tune continues from its own last.pt alone
    with pytest.raises(ConfigError, match="train.init_from: cannot change when resuming"):
        resume_config(half, ["train.init_from=elsewhere"])
    resumed = train(resume_config(half, ["train.max_steps=40"]), resume=half)
    a, b = (checkpoint.load(r / "last.pt") for r in (full, resumed))
    assert a["step"] == b["step"] == 40
    assert same_tensors(a["model"], b["model"])
    assert (resumed / "train.log").read_text().count("fine-tuning from") == 1


def cli_train(tmp_path: Path, *extra: str):
    return runner.invoke(app, ["train", "-c", str(ROOT / "configs" / "tiny.yaml"),
                               "--runs-dir", str(tmp_path / "runs"),
                               "--set", f"data.dir={ROOT}",
                               "--set", f"data.prepared_dir={tmp_path / 'prepared'}", *extra])


@pytest.mark.parametrize("extra, expected", [
    (["--set", "model.hidden_size=16"], ["model.hidden_size is 32 there, 16 here"]),
    (["--set", "model.attention.score=dot", "--set", "model.decoder_size=64",
      "--set", "data.vocab_size=100"],
     ['model.attention.score is "additive" there, "dot" here',
      "data.vocab_size is 120 there, 100 here"]),
    (["--set", "data.src_lang=pt", "--set", "data.tgt_lang=en"],
     ['data.src_lang is "en" there, "pt" here', 'data.tgt_lang is "pt" there, "en" here']),
])
def test_another_model_vocabulary_or_pair_is_refused(trained_run, tmp_path, extra, expected):
    result = cli_train(tmp_path, "--init-from", str(trained_run), *extra)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: train.init_from {trained_run}/best.pt:")
    assert all(e in lines[0] for e in expected), lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (["--init-from", "nowhere/run"], "train.init_from nowhere/run: no such run directory"),
    (["--set", "train.init_optimizer=true"], "train.init_optimizer: loads the Adam moments"),
    (["--set", "train.init_from="], "train.init_from: expected a run directory"),
])
def test_bad_init_from_is_one_line(tmp_path, args, message):
    result = cli_train(tmp_path, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_resume_takes_no_init_from(trained_run):
    result = runner.invoke(app, ["train", "--resume", str(trained_run),
                                 "--init-from", str(trained_run)])
    assert result.exit_code == 2
    assert "drop --config/--overwrite/--init-from" in result.stderr


def test_data_prepare_encodes_a_finetune_with_the_parents_models(trained_run, tmp_path):
    """`nmt data prepare` of a fine-tune's config prepares what its `nmt train` will read: the
    cache entry of the parent's SentencePiece models, not one with models of its own."""
    cfg = half_corpus_config(tmp_path, init_from=str(trained_run))
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    result = CliRunner().invoke(app, ["data", "prepare", "--config", str(path)])
    assert result.exit_code == 0, result.output
    spm = {lang: (trained_run / f"spm.{lang}.model").read_bytes() for lang in ("en", "pt")}
    key = cache_key(cfg.data, Tokenizer(spm["en"], spm["pt"]))
    assert key in result.stdout and cache_key(cfg.data) not in result.stdout

"""TensorBoard event files of a training run (`train.tensorboard`): the scalars of metrics.csv
and of the progress lines, read back with TensorBoard's own reader; a one-line error before
training when the package is missing; one writer under several processes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nmt.cli import app
from nmt.errors import ConfigError
from nmt.train import train
from nmt.training.board import Board

from conftest import ROOT, tiny_config, tiny_train_command


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag under `folder` as (step, value) pairs, read as TensorBoard reads them
    (the tests that read events need the package, a development dependency; the test of its
    absence does not)."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_training_writes_the_scalars_tensorboard_shows(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=30, valid_every=10, log_every=5,
                      valid_max_sentences=4, tensorboard=True)
    run = train(cfg, runs_dir=tmp_path / "runs")
    found = scalars(run / "tensorboard")
    assert {"train/loss", "train/lr", "train/tgt_tokens_per_s", "valid/loss", "valid/ppl",
            "valid/bleu", "valid/chrf"} <= set(found)
    assert [step for step, _ in found["train/loss"]] == [5, 10, 15, 20, 25, 30]
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for tag, column in [("valid/loss", "valid_loss"), ("valid/bleu", "bleu"),
                        ("valid/chrf", "chrf")]:
        assert [step for step, _ in found[tag]] == [int(r["step"]) for r in rows]
        assert [v for _, v in found[tag]] == pytest.approx([float(r[column]) for r in rows],
                                                           abs=1e-4 + 0.005)
    assert all(v == pytest.approx(cfg.train.lr) for _, v in found["train/lr"])
    assert all(v > 0 for _, v in found["train/tgt_tokens_per_s"])


def test_a_resumed_run_hides_what_came_after_its_step(tmp_path):
    first = Board(tmp_path)
    first.scalars(1, {"valid/bleu": 1.0})
    first.scalars(2, {"valid/bleu": 2.0})
    first.scalars(3, {"valid/bleu": 3.0})  # written after the last checkpoint, at step 2
    first.close()
    resumed = Board(tmp_path, resume_step=2)
    resumed.scalars(3, {"valid/bleu": 30.0})
    resumed.close()
    assert scalars(tmp_path / "tensorboard")["valid/bleu"] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_without_the_package_training_is_refused_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard fails
    with pytest.raises(ConfigError, match=r"train.tensorboard: needs the tensorboard package"):
        train(tiny_config(tmp_path, tensorboard=True), runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    result = CliRunner().invoke(app, ["train", "-c", str(ROOT / "configs" / "tiny.yaml"),
                                      "--set", "train.tensorboard=true",
                                      "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'nmt[tensorboard]'" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_only_rank_0_writes_under_two_processes(tmp_path):
    run = subprocess.run(tiny_train_command(
        tmp_path, tmp_path / "runs", "--set", "train.tensorboard=true",
        "--set", "train.max_steps=10", "--set", "train.log_every=5", "--nproc", "2"),
        capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    folder = tmp_path / "runs" / "tiny" / "tensorboard"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert [step for step, _ in scalars(folder)["train/loss"]] == [5, 10]

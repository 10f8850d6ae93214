"""Beyond one process: gradient accumulation, precision settings, and a real 2-process gloo run
(torchrun) against a single process with the same global batch."""

from __future__ import annotations

import copy
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt.config import TrainConfig
from nmt.data.batching import Dataset
from nmt.errors import UsageError
from nmt.training import checkpoint
from nmt.training.precision import autocast_dtype
from nmt.training.schedule import Schedule
from nmt.training.trainer import Trainer

from conftest import small_model, tiny_train_command


def toy_dataset(pairs: int = 16, vocab: int = 30) -> Dataset:
    gen = np.random.default_rng(0)
    src_len = gen.integers(2, 9, pairs)
    tgt_len = gen.integers(2, 9, pairs)
    return Dataset(gen.integers(4, vocab, int(src_len.sum())), src_len,
                   gen.integers(4, vocab, int(tgt_len.sum())), tgt_len)


def one_update(model, data: Dataset, group: list[np.ndarray], tmp: Path) -> dict:
    settings = TrainConfig(clip_norm=1.0, label_smoothing=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)  # the step shows the gradient
    trainer = Trainer(model, optimizer, Schedule("constant", 0.01, 0, 0.5, 0, 0.0), data,
                      lambda: None, settings, tmp, {}, torch.device("cpu"))
    loss, tokens = trainer.update(group, 0.01)
    return {"loss": loss, "tokens": tokens, **{k: v.detach().clone()
                                                for k, v in model.state_dict().items()}}


def test_accumulation_equals_one_batch_that_many_times_larger(tmp_path):
    torch.manual_seed(0)
    model = small_model()
    data = toy_dataset()
    index = np.arange(16)
    accumulated = one_update(copy.deepcopy(model), data, [index[:5], index[5:11], index[11:]],
                             tmp_path)
    whole = one_update(copy.deepcopy(model), data, [index], tmp_path)
    assert accumulated["tokens"] == whole["tokens"] == int(data.tgt_len.sum()) + 16
    assert accumulated["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    changed = [k for k in whole if k not in ("loss", "tokens")
               and not torch.equal(whole[k], model.state_dict()[k])]
    assert changed  # the update moved the weights...
    for k in changed:  # ...the same way
        assert torch.allclose(accumulated[k], whole[k], atol=1e-6), k


def test_precision_settings():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    with pytest.raises(UsageError, match="needs a CUDA device"):
        autocast_dtype("bf16", cpu)
    if torch.cuda.is_available():
        assert autocast_dtype("fp16", torch.device("cuda")) == torch.float16


def train_command(tmp: Path, runs: Path, *extra: str) -> list[str]:
    return tiny_train_command(tmp, runs, "--set", "train.log_every=1", *extra)


def losses(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f)]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """2 gloo processes of one batch each per update == 1 process accumulating 2 batches."""
    one = subprocess.run(train_command(tmp_path, tmp_path / "one", "--set", "train.max_steps=20",
                                       "--set", "train.accumulate=2"),
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(train_command(tmp_path, tmp_path / "two", "--set", "train.max_steps=10",
                                       "--nproc", "2"), capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    run = tmp_path / "two" / "tiny"
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["tiny"]
    resumed = subprocess.run([sys.executable, "-m", "nmt", "train", "--resume", str(run),
                              "--set", "train.max_steps=20", "--nproc", "2"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert losses(run) == pytest.approx(losses(tmp_path / "one" / "tiny"), rel=1e-4)
    a = checkpoint.load(run / "last.pt")
    b = checkpoint.load(tmp_path / "one" / "tiny" / "last.pt")
    assert a["step"] == b["step"] == 20
    for k in b["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-4), k
    log = (run / "train.log").read_text()
    assert "2 process(es)" in log
    translated = subprocess.run([sys.executable, "-m", "nmt", "translate", "--checkpoint",
                                 str(run), "The cat sees the ball."],
                                capture_output=True, text=True)
    assert translated.returncode == 0 and translated.stdout.strip(), translated.stderr

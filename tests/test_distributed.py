"""Beyond one process: gradient accumulation, precision settings, and real 2-process gloo runs
(torchrun): against a single process with the same global batch, through a learning-rate decay
with dropout (the ranks must stay one model), and killed then resumed."""

from __future__ import annotations

import copy
import csv
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt import checkpoint
from nmt.config import TrainConfig
from nmt.data.batching import Dataset
from nmt.errors import UsageError
from nmt.precision import cpu_bf16
from nmt.training import distributed
from nmt.training.precision import autocast_dtype
from nmt.training.schedule import Schedule
from nmt.training.trainer import Trainer

from conftest import small_model, tiny_train_command, wait_for


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
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
    native = cpu_bf16().native
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    with pytest.raises(UsageError, match="needs a CUDA device"):
        autocast_dtype("fp16", cpu)
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


# Dropout on, and a decay after the first validation whose BLEU (on 4 sentences, after a few
# updates at a high learning rate) does not improve; validation every 5 updates.
# Validation translates into one token, so BLEU stays 0 and every validation after the first
# decays the rate (rank 0's decision), whatever the updates learn.
DECAYING = ("--set", "model.dropout=0.3", "--set", "train.lr=0.05", "--set", "train.metric=bleu",
            "--set", "train.decay_patience=0", "--set", "train.valid_every=5",
            "--set", "decode.max_len_ratio=0.01", "--set", "decode.max_len_add=1",
            "--set", "train.max_steps=30", "--nproc", "2")


def learning_rates(run: Path) -> dict[int, float]:
    """Step -> the learning rate of the updates up to that validation."""
    with open(run / "metrics.csv", newline="") as f:
        return {int(row["step"]): float(row["lr"]) for row in csv.DictReader(f)}


def replica_digests(run: Path) -> dict[int, str]:
    """Step -> digest of the parameters every rank held there, from the run's log."""
    found = re.findall(r"step (\d+): the 2 processes hold identical parameters \(digest (\w+)\)",
                       (run / "train.log").read_text())
    return {int(step): digest for step, digest in found}


def test_two_processes_stay_one_model_through_a_learning_rate_decay(tmp_path):
    """Only rank 0 validates; the decay it decides must reach rank 1 too, or the copies drift
    apart (DDP averages gradients, not parameters). At every validation the ranks compare
    digests of their parameters; the run fails if they differ."""
    done = subprocess.run(train_command(tmp_path, tmp_path / "runs", *DECAYING),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "tiny"
    lrs = learning_rates(run)
    decayed = [step for step, lr in lrs.items() if lr < 0.05]
    assert decayed, lrs  # the schedule did decay, on rank 0's decision
    digests = replica_digests(run)
    assert sorted(digests) == sorted(lrs) == list(range(5, 31, 5))  # checked at every
    assert decayed[0] in digests  # validation: after updates at the decayed rate, and at the end
    last = checkpoint.load(run / "last.pt")
    assert last["step"] == 30 and digests[30] == distributed.digest(last["model"])


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux /proc), children first."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_two_processes_killed_and_resumed_equal_an_uninterrupted_run(tmp_path):
    """Each rank's random state is saved as its own: a 2-process run with dropout, killed with
    SIGKILL (the whole process group) and resumed, ends with the same weights, bit for bit."""
    ref = subprocess.run(train_command(tmp_path, tmp_path / "ref", *DECAYING),
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    runs = tmp_path / "killed"
    run = runs / "tiny"
    proc = subprocess.Popen(train_command(tmp_path, runs, *DECAYING), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(run / "train.log", "validation at step 10", proc)
    time.sleep(random.Random(3).uniform(0.0, 0.5))
    family = [proc.pid, *descendants(proc.pid)]  # nmt (the launcher) and its 2 workers
    assert len(family) >= 3, family
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert 10 <= checkpoint.load(run / "last.pt")["step"] < 30
    resumed = subprocess.run([sys.executable, "-m", "nmt", "train", "--resume", str(run),
                              "--nproc", "2"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = checkpoint.load(run / "last.pt")
    b = checkpoint.load(tmp_path / "ref" / "tiny" / "last.pt")
    assert a["step"] == b["step"] == 30
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert learning_rates(run) == learning_rates(tmp_path / "ref" / "tiny")

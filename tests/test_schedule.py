"""Learning-rate schedules that know the training budget (`linear`, `cosine`): base when the
warm-up ends, min_lr exactly when max_steps or max_minutes runs out, never rising on the way;
the training time they read survives a resume and is rank 0's under several processes."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nmt import checkpoint
from nmt.cli import app
from nmt.config import TrainConfig, from_dict
from nmt.data.batching import Dataset
from nmt.errors import ConfigError
from nmt.evaluation.validation import Validation
from nmt.train import build_optimizer, resume_config, train
from nmt.training.schedule import Schedule, resumed
from nmt.training.trainer import Trainer

from conftest import ROOT, small_model, tiny_config, tiny_train_command

BASE, FLOOR = 0.01, 1e-4


def budgeted(kind: str, warmup: int = 0, steps: int = 0, seconds: float = 0.0) -> Schedule:
    return Schedule(kind, BASE, warmup, min_lr=FLOOR, max_steps=steps, max_seconds=seconds)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 10])
def test_step_budget_goes_from_base_to_min_lr_without_rising(kind, warmup):
    s = budgeted(kind, warmup, steps=100)
    assert s.lr_at(warmup) == BASE
    assert s.lr_at(100) == FLOOR and s.lr_at(130) == FLOOR
    after = [s.lr_at(step) for step in range(warmup, 131)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert len(set(after[:100 - warmup])) == 100 - warmup  # it decays at every update
    if warmup:
        ramp = [s.lr_at(step) for step in range(1, warmup + 1)]
        assert ramp == sorted(ramp) and ramp[0] < BASE


def test_linear_and_cosine_meet_halfway():
    half = (BASE + FLOOR) / 2
    assert budgeted("linear", steps=100).lr_at(50) == pytest.approx(half)
    assert budgeted("cosine", steps=100).lr_at(50) == pytest.approx(half)
    assert budgeted("cosine", steps=100).lr_at(25) > budgeted("linear", steps=100).lr_at(25)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 10])
def test_a_decay_fraction_holds_the_rate_then_decays_over_the_last_part(kind, warmup):
    s = budgeted(kind, warmup, steps=warmup + 100)
    s.decay_fraction = 0.25  # 100 updates after the warm-up: 75 at BASE, 25 of decay
    assert [s.lr_at(step) for step in range(warmup, warmup + 76)] == [BASE] * 76
    decay = [s.lr_at(step) for step in range(warmup + 75, 131)]
    assert all(a > b for a, b in zip(decay, decay[1:]) if a > FLOOR)
    assert s.lr_at(warmup + 100) == FLOOR and decay[-1] == FLOOR
    full = budgeted(kind, 0, steps=25)  # the same decay, shifted: the whole budget is its 25
    assert [s.lr_at(warmup + 75 + k) for k in range(26)] == pytest.approx(
        [full.lr_at(k) for k in range(26)])
    seconds = budgeted(kind, seconds=100.0)
    seconds.decay_fraction = 0.5
    assert seconds.lr_at(1, 49.0) == BASE and seconds.lr_at(1, 75.0) < BASE
    assert seconds.lr_at(1, 100.0) == FLOOR


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_time_budget_goes_from_base_to_min_lr_without_rising(kind):
    s = budgeted(kind, seconds=60.0)
    assert s.lr_at(1, 0.0) == BASE
    assert s.lr_at(1, 60.0) == FLOOR and s.lr_at(1, 75.0) == FLOOR
    after = [s.lr_at(1 + k, k * 0.5) for k in range(151)]
    assert all(a >= b for a, b in zip(after, after[1:])) and after[-1] == FLOOR


def test_time_budget_decays_from_the_end_of_the_warm_up():
    s = budgeted("linear", warmup=4, seconds=60.0)
    for step in range(1, 5):
        s.advance(step, 3.0 * step)  # the warm-up ends after 12 s
    assert s.warm_seconds == 12.0
    assert s.lr_at(4, 12.0) == BASE
    assert s.lr_at(5, 36.0) == pytest.approx(FLOOR + (BASE - FLOOR) / 2)
    assert s.lr_at(9, 60.0) == FLOOR


def test_with_both_budgets_the_one_further_along_rules():
    both = budgeted("cosine", steps=100, seconds=60.0)
    steps_only, time_only = budgeted("cosine", steps=100), budgeted("cosine", seconds=60.0)
    assert both.lr_at(50, 45.0) == time_only.lr_at(50, 45.0) < steps_only.lr_at(50, 45.0)
    assert both.lr_at(90, 10.0) == steps_only.lr_at(90, 10.0) < time_only.lr_at(90, 10.0)
    assert both.lr_at(100, 10.0) == both.lr_at(20, 60.0) == FLOOR


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_longer_budget_continues_from_the_rate_reached(kind):
    """Resumed with twice the budget, the rate holds where it was until the longer budget's
    decay (its last 20%: from step 160), then falls to min_lr when it runs out; never up."""
    old = replace(budgeted(kind, steps=100), decay_fraction=0.2)
    for at in (90, 100):  # in the decay; at its end
        longer = resumed(old.state_dict(), replace(old, max_steps=200), at, 0.0)
        reached = old.lr_at(at)
        rates = [longer.lr_at(step) for step in range(at, 201)]
        assert rates[:160 - at + 1] == pytest.approx([reached] * (160 - at + 1))
        assert all(a >= b for a, b in zip(rates, rates[1:])) and rates[-1] == FLOOR
    stable = resumed(old.state_dict(), replace(old, max_steps=200), 50, 0.0)
    fresh = replace(old, max_steps=200)  # before the decay, nothing is lost
    assert [stable.lr_at(s) for s in range(50, 201)] == pytest.approx(
        [fresh.lr_at(s) for s in range(50, 201)])


def test_a_new_lr_with_a_longer_budget_starts_again_from_it():
    old = replace(budgeted("linear", steps=100), decay_fraction=0.2)
    again = resumed(old.state_dict(), replace(old, max_steps=200, base_lr=0.005), 100, 0.0)
    assert again.lr_at(101) == pytest.approx(0.005) == again.lr_at(160)
    assert FLOOR < again.lr_at(180) < 0.005 and again.lr_at(200) == FLOOR


def test_an_unchanged_schedule_is_restored_exactly():
    old = budgeted("cosine", warmup=10, steps=100)
    for step in range(1, 41):
        old.advance(step, 0.5 * step)
    old.observe(3.0)
    assert resumed(old.state_dict(), budgeted("cosine", warmup=10, steps=100), 40, 20.0) == old


# -- the trainer, on a fake clock -------------------------------------------------------------

class FakeClock:
    """Stands in for time.perf_counter; the updates below move it on by 6 s each."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def toy_data(pairs: int = 24, vocab: int = 30) -> Dataset:
    gen = np.random.default_rng(0)
    src_len, tgt_len = gen.integers(2, 9, pairs), gen.integers(2, 9, pairs)
    return Dataset(gen.integers(4, vocab, int(src_len.sum())), src_len,
                   gen.integers(4, vocab, int(tgt_len.sum())), tgt_len)


def timed_trainer(run_dir: Path, start: float, stop_after: int = 0) -> tuple[Trainer, list]:
    """A toy trainer on a fake clock whose updates each take 6 s, under `linear` over one
    minute; it records each update's learning rate, and asks to stop after `stop_after`."""
    run_dir.mkdir()
    torch.manual_seed(0)
    model = small_model()
    settings = TrainConfig(batch_tokens=40, lr=BASE, min_lr=FLOOR, schedule="linear",
                           max_minutes=1.0, valid_every=1000, log_every=1000)
    optimizer, schedule = build_optimizer(settings, model)
    trainer = Trainer(model, optimizer, schedule, toy_data(), lambda: Validation(1.0, 0.0, 0.0),
                      settings, run_dir, {"config": {}, "tokenizer": {}}, torch.device("cpu"))
    trainer.clock = clock = FakeClock(start)
    rates: list[float] = []
    update = trainer.update

    def six_seconds(group, lr):
        rates.append(lr)
        clock.now += 6.0
        if len(rates) == stop_after:
            trainer.stop_signal = 15
        return update(group, lr)

    trainer.update = six_seconds
    return trainer, rates


def test_minutes_budget_reaches_min_lr_when_the_time_is_up(tmp_path):
    trainer, rates = timed_trainer(tmp_path / "run", start=100.0)
    progress = trainer.run()
    assert progress.step == 10 and progress.seconds == 60.0  # ten updates of 6 s
    assert rates == pytest.approx([FLOOR + (BASE - FLOOR) * (1 - k / 10) for k in range(10)])
    assert trainer.schedule.lr_at(progress.step, progress.seconds) == FLOOR


def test_resume_restores_the_training_time_the_schedule_reads(tmp_path):
    whole, whole_rates = timed_trainer(tmp_path / "whole", start=0.0)
    whole.run()
    first, first_rates = timed_trainer(tmp_path / "part", start=0.0, stop_after=4)
    first.run()
    saved = checkpoint.load(tmp_path / "part" / "last.pt")
    assert saved["resume"]["progress"]["seconds"] == 24.0
    rest, rest_rates = timed_trainer(tmp_path / "rest", start=5000.0)  # another clock origin
    rest.model.load_state_dict(saved["model"])
    rest.load_resume_state(saved["resume"])
    rest.run()
    assert first_rates + rest_rates == whole_rates
    a, b = whole.model.state_dict(), rest.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind, decay_fraction", [("cosine", 1.0), ("linear", 0.2)])
def test_a_step_budget_resume_ends_with_the_same_weights(tmp_path, kind, decay_fraction):
    """Stopped by an epoch limit, resumed without it: the same budget all along, so the same
    rates and, bit for bit, the same weights (linear 0.2: the default config's shape)."""
    settings = {"schedule": kind, "decay_fraction": decay_fraction, "max_steps": 30,
                "valid_every": 10, "valid_max_sentences": 4}
    full = train(tiny_config(tmp_path, **settings), runs_dir=tmp_path / "a")
    part = train(tiny_config(tmp_path, max_epochs=1, **settings), runs_dir=tmp_path / "b")
    stopped = checkpoint.load(part / "last.pt")["step"]
    assert 0 < stopped < 30
    again = train(resume_config(part, ["train.max_epochs=0"]), resume=part)
    a, b = (checkpoint.load(r / "last.pt")["model"] for r in (full, again))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(full / "metrics.csv", newline="") as f:
        rates = [float(row["lr"]) for row in csv.DictReader(f)]
    assert rates == sorted(rates, reverse=True) and rates[-1] == pytest.approx(1e-5)


STEP_LINE = re.compile(r" step (\d+) loss \S+ lr (\S+) ")


def logged_rates(run: Path) -> dict[int, float]:
    """Each update's learning rate as train.log has it (train.log_every=1), by step."""
    return {int(step): float(lr) for step, lr in STEP_LINE.findall(
        (run / "train.log").read_text())}


def test_two_processes_read_one_clock(tmp_path):
    """Each process measures its own time; the learning rate must follow rank 0's, or the
    copies drift apart (the ranks compare weight digests at each validation). The rate holds,
    then decays over the last half of the time budget, never rising, at every update."""
    run = subprocess.run(tiny_train_command(
        tmp_path, tmp_path / "runs", "--set", "train.schedule=linear",
        "--set", "train.decay_fraction=0.5", "--set", "train.max_minutes=0.1",
        "--set", "train.max_steps=0", "--set", "train.valid_every=5",
        "--set", "train.log_every=1", "--nproc", "2"), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    log = (tmp_path / "runs" / "tiny" / "train.log").read_text()
    rates = logged_rates(tmp_path / "runs" / "tiny")
    steps = sorted(rates)
    assert steps == list(range(1, len(steps) + 1))
    base = rates[1]
    assert base == 0.005 and all(rates[s] >= rates[s + 1] for s in steps[:-1])
    assert rates[steps[-1]] < base / 2  # deep in the decay
    decayed = [s for s in steps if rates[s] < base]
    validations = log.count("validation at step")
    assert log.count("the 2 processes hold identical parameters") == validations
    assert any(int(s) > decayed[0] for s in re.findall(r"validation at step (\d+)", log))


def test_two_processes_resumed_follow_the_uninterrupted_rates(tmp_path):
    """Two processes on a step budget, stopped by an epoch limit in the decay (12 updates of
    two batches make an epoch of the tiny corpus) and resumed: every update's rate is the one
    of an uninterrupted run (one process, accumulate 2: the same updates)."""
    decaying = {"schedule": "linear", "decay_fraction": 0.5, "max_steps": 20, "log_every": 1}
    options = [x for key, value in decaying.items() for x in ("--set", f"train.{key}={value}")]
    part = subprocess.run(tiny_train_command(tmp_path, tmp_path / "runs", *options, "--set",
                                             "train.max_epochs=1", "--nproc", "2"),
                          capture_output=True, text=True)
    assert part.returncode == 0, part.stderr
    run = tmp_path / "runs" / "tiny"
    assert checkpoint.load(run / "last.pt")["step"] == 12
    rest = subprocess.run([sys.executable, "-m", "nmt", "train", "--resume", str(run), "--set",
                           "train.max_epochs=0", "--nproc", "2"], capture_output=True, text=True)
    assert rest.returncode == 0, rest.stderr
    whole = train(tiny_config(tmp_path, valid_every=10, valid_max_sentences=4, accumulate=2,
                              **decaying), runs_dir=tmp_path / "whole")
    expected = logged_rates(whole)
    assert sorted(expected) == list(range(1, 21)) and expected[20] < expected[11] < 0.005
    assert logged_rates(run) == expected


# -- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_budgeted_schedules_need_a_budget(kind):
    with pytest.raises(ConfigError, match=rf"train.schedule: '{kind}' decays over the training "
                                          r"budget: set train.max_steps or train.max_minutes"):
        from_dict({"train": {"schedule": kind}})
    assert from_dict({"train": {"schedule": kind, "max_minutes": 5.0}}).train.schedule == kind


def test_budgeted_schedule_problems_are_named():
    with pytest.raises(ConfigError, match="train.warmup_steps: 100 leaves no update"):
        from_dict({"train": {"schedule": "linear", "max_steps": 100, "warmup_steps": 100}})
    with pytest.raises(ConfigError, match=r"train.decay_fraction: .* in \(0, 1\]"):
        from_dict({"train": {"schedule": "linear", "max_steps": 100, "decay_fraction": 0}})
    with pytest.raises(ConfigError, match=r"train.min_lr: 0.1 is above train.lr \(0.001\)"):
        from_dict({"train": {"schedule": "cosine", "max_steps": 100, "min_lr": 0.1}})


def test_cli_names_the_missing_budget_in_one_line():
    result = CliRunner().invoke(app, ["train", "-c", str(ROOT / "configs" / "tiny.yaml"),
                                      "--set", "train.schedule=cosine",
                                      "--set", "train.max_steps=0"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "train.schedule: 'cosine' decays over the training budget" in result.stderr

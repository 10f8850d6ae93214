"""A resumed run and its `train` settings: a key changed with `--set` takes effect from the
resumed step (the schedule's keys too), an unchanged one is restored exactly so that the resumed
run equals an uninterrupted one, a longer budget never makes the rate jump back up, `patience`
waits for the decay of linear and cosine, and the keys that a run's progress is counted in are
refused."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt import checkpoint
from nmt.cli import app
from nmt.config import TrainConfig
from nmt.evaluation.validation import Validation
from nmt.train import build_optimizer, resume_config, train
from nmt.training.trainer import Trainer

from conftest import small_model, tiny_config
from test_schedule import FakeClock, toy_data

BASE, FLOOR = 0.01, 1e-4
TOY = {"batch_tokens": 40, "lr": BASE, "min_lr": FLOOR, "max_steps": 40, "valid_every": 1000,
       "log_every": 1000}


def toy(run_dir: Path, stop_after: int = 0, seconds: float = 3.0, resume_from: Path | None = None,
        **train) -> tuple[Trainer, list[float]]:
    """A toy trainer (TOY settings updated by `train`, the same validation score every time)
    whose updates each take `seconds` on its clock; it records each update's rate, asks to stop
    (saving last.pt) after `stop_after` updates, and starts from `resume_from`'s last.pt."""
    run_dir.mkdir()
    torch.manual_seed(0)
    model = small_model()
    settings = TrainConfig(**{**TOY, **train})
    optimizer, schedule = build_optimizer(settings, model)
    trainer = Trainer(model, optimizer, schedule, toy_data(), lambda: Validation(1.0, 0.0, 0.0),
                      settings, run_dir, {"config": {}, "tokenizer": {}}, torch.device("cpu"))
    trainer.clock = clock = FakeClock(0.0)
    if resume_from is not None:
        saved = checkpoint.load(resume_from / "last.pt")
        model.load_state_dict(saved["model"])
        trainer.load_resume_state(saved["resume"])
        clock.now = 1000.0  # another process: another clock origin
    rates: list[float] = []
    update = trainer.update

    def recorded(group, lr):
        rates.append(lr)
        clock.now += seconds
        if len(rates) == stop_after:
            trainer.stop_signal = 15
        return update(group, lr)

    trainer.update = recorded
    return trainer, rates


def same_weights(a: Trainer, b: Trainer) -> bool:
    x, y = a.model.state_dict(), b.model.state_dict()
    return all(torch.equal(x[k], y[k]) for k in x)


PLATEAU = {"schedule": "plateau", "valid_every": 4, "decay_patience": 0}  # a decay at step 8
LINEAR = {"schedule": "linear", "decay_fraction": 0.5}  # holds BASE until step 20 of 40


# (settings of the run, the key's value then, its value on resume, resumed after update k);
# at step k the run's progress is the same under either value, so a resumed run that takes the
# new value follows an uninterrupted run configured with it
CASES = {
    "lr": ({"schedule": "constant"}, {"lr": BASE}, {"lr": 0.004}, 10),
    "lr-linear": (LINEAR, {"lr": BASE}, {"lr": 0.004}, 10),
    "schedule": ({"decay_fraction": 0.5}, {"schedule": "constant"}, {"schedule": "linear"}, 10),
    "min_lr": (PLATEAU, {"min_lr": FLOOR}, {"min_lr": 0.002}, 10),
    "min_lr-linear": (LINEAR, {"min_lr": FLOOR}, {"min_lr": 0.001}, 10),
    "warmup_steps": ({"schedule": "constant"}, {"warmup_steps": 0}, {"warmup_steps": 20}, 10),
    "warmup_steps-linear": (LINEAR, {"warmup_steps": 0}, {"warmup_steps": 5}, 10),
    "decay_factor": (PLATEAU, {"decay_factor": 0.5}, {"decay_factor": 0.2}, 10),
    "decay_patience": (PLATEAU, {"decay_patience": 5}, {"decay_patience": 0}, 6),
    "decay_fraction": (LINEAR, {"decay_fraction": 0.25}, {"decay_fraction": 0.5}, 10),
    "max_steps": (LINEAR, {"max_steps": 40}, {"max_steps": 60}, 10),
    "max_minutes": ({**LINEAR, "max_steps": 0}, {"max_minutes": 2.0}, {"max_minutes": 3.0}, 10),
}


@pytest.mark.parametrize("case", CASES)
def test_a_schedule_key_given_on_resume_takes_effect_and_an_unchanged_one_is_restored(
        tmp_path, case):
    settings, value, new_value, k = CASES[case]
    before, after = {**settings, **value}, {**settings, **new_value}
    whole, whole_rates = toy(tmp_path / "whole", **before)
    whole.run()
    other, other_rates = toy(tmp_path / "other", **after)
    other.run()
    part, part_rates = toy(tmp_path / "part", stop_after=k, **before)
    part.run()
    assert part.progress.step == k
    same, same_rates = toy(tmp_path / "same", resume_from=tmp_path / "part", **before)
    same.run()
    assert part_rates + same_rates == whole_rates  # unchanged: exactly the uninterrupted run
    assert same_weights(same, whole)
    changed, changed_rates = toy(tmp_path / "changed", resume_from=tmp_path / "part", **after)
    changed.run()
    assert changed_rates == pytest.approx(other_rates[k:], rel=1e-12, abs=0)
    assert changed_rates != pytest.approx(whole_rates[k:], rel=1e-6)  # the key does matter


def test_adam_betas_given_on_resume_take_effect(tmp_path):
    part, _ = toy(tmp_path / "part", stop_after=10)
    part.run()
    same, _ = toy(tmp_path / "same", resume_from=tmp_path / "part")
    changed, _ = toy(tmp_path / "changed", resume_from=tmp_path / "part", betas=(0.5, 0.9))
    assert [g["betas"] for g in same.optimizer.param_groups] == [(0.9, 0.999)]
    assert [g["betas"] for g in changed.optimizer.param_groups] == [(0.5, 0.9)]
    same.run()
    changed.run()
    assert not same_weights(same, changed)


# -- a longer budget --------------------------------------------------------------------------

@pytest.mark.parametrize("stop_after", [19, 0])  # in the decay; at the end of the budget
def test_a_longer_time_budget_never_makes_the_rate_jump(tmp_path, stop_after):
    """The default config's shape (linear, the last 20% decaying) on a clock where an update
    takes 3 s: a minute's budget, doubled on resume."""
    default = {"schedule": "linear", "decay_fraction": 0.2, "max_steps": 0, "max_minutes": 1.0}
    first, before = toy(tmp_path / "first", stop_after=stop_after, **default)
    first.run()
    assert first.progress.step == (stop_after or 20) and before[-1] < BASE  # it was decaying
    steepest = max(a - b for a, b in zip(before, before[1:]))  # the largest fall of one update
    allowed = steepest * (1 + 1e-9)
    rest, after = toy(tmp_path / "rest", resume_from=tmp_path / "first",
                      **{**default, "max_minutes": 2.0})
    progress = rest.run()
    assert progress.seconds == 120.0 and len(after) == 40 - len(before)
    rates = before + after
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # never rising, across the resume
    assert before[-1] - after[0] <= allowed
    assert all(a - b <= allowed for a, b in zip(after, after[1:]))
    if stop_after:  # held until the longer budget's decay (its last 20%: from 96 s), then down
        assert after[:13] == pytest.approx([after[0]] * 13) and after[-1] < after[0]
    assert rest.schedule.lr_at(progress.step, progress.seconds) == FLOOR


def test_a_run_killed_on_a_time_budget_resumes_from_its_recorded_time(tmp_path):
    """Killed between two saves, the run resumes from the training time recorded at the last
    one: where every update takes as long as before, it repeats the uninterrupted run exactly."""
    timed = {"schedule": "linear", "decay_fraction": 0.5, "max_steps": 0, "max_minutes": 2.0,
             "valid_every": 8}
    whole, whole_rates = toy(tmp_path / "whole", **timed)
    whole.run()
    killed, _ = toy(tmp_path / "killed", **timed)
    update = killed.update

    def dies(group, lr):
        if killed.progress.step == 30:  # last saved at step 24
            raise KeyboardInterrupt
        return update(group, lr)

    killed.update = dies
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert checkpoint.load(tmp_path / "killed" / "last.pt")["step"] == 24
    rest, rest_rates = toy(tmp_path / "rest", resume_from=tmp_path / "killed", **timed)
    rest.run()
    assert rest_rates == whole_rates[24:] and whole_rates[-1] < BASE / 2
    assert same_weights(rest, whole)


# -- patience ---------------------------------------------------------------------------------

def test_patience_counts_only_once_linear_and_cosine_decay(tmp_path):
    stalled = {"valid_every": 2, "patience": 2}  # the score never improves
    linear, rates = toy(tmp_path / "linear", **LINEAR, **stalled)
    progress = linear.run()
    assert progress.step == 24 and rates[-1] < BASE  # two validations into the decay (step 20)
    plateau, _ = toy(tmp_path / "plateau", schedule="plateau", **stalled)
    assert plateau.run().step == 6  # best at 2, worse at 4 and 6


# -- through `nmt train --resume` ---------------------------------------------------------------

def test_resume_logs_each_changed_key_once_and_trains_with_it(tmp_path):
    settings = {"valid_every": 10, "valid_max_sentences": 4}
    run = train(tiny_config(tmp_path, max_steps=10, **settings), runs_dir=tmp_path / "runs")
    train(resume_config(run, ["train.max_steps=20", "train.lr=0.001"]), resume=run)
    train(resume_config(run, ["train.max_steps=30"]), resume=run)  # lr stays 0.001
    log = (run / "train.log").read_text()
    assert log.count("train.lr 0.005 -> 0.001 from step 10") == 1
    assert "train.max_steps 10 -> 20 from step 10" in log
    assert "train.max_steps 20 -> 30 from step 20" in log
    assert log.count("train.lr") == 1
    with open(run / "metrics.csv", newline="") as f:
        rates = {int(row["step"]): float(row["lr"]) for row in csv.DictReader(f)}
    assert rates == {10: 0.005, 20: 0.001, 30: 0.001}


@pytest.mark.parametrize("key, value", [("seed", "2"), ("batch_tokens", "300"),
                                        ("metric", "loss")])
def test_resume_refuses_the_keys_a_run_is_counted_in(trained_run, key, value):
    result = CliRunner().invoke(app, ["train", "--resume", str(trained_run),
                                      "--set", f"train.{key}={value}"])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"train.{key}: cannot change when resuming" in result.stderr

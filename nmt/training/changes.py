"""What `nmt train --resume RUN --set train.KEY=...` may change: every `train` key takes effect
from the resumed step (the schedule's through nmt.training.schedule.resumed, Adam's betas in the
optimizer, the rest where the trainer reads them), except the few that the run's progress is
counted in, which are refused."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from nmt.config import TrainConfig

# the keys a resumed run cannot change, and why
FIXED = {
    "seed": "it orders the epoch in progress",
    "batch_tokens": "the epoch in progress is cut into batches by it",
    "metric": "the best and kept checkpoints are ranked by it",
}


def changed(before: TrainConfig, after: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) of each `train` key that differs."""
    return [(f.name, getattr(before, f.name), getattr(after, f.name)) for f in fields(TrainConfig)
            if getattr(before, f.name) != getattr(after, f.name)]


def refused(before: TrainConfig, after: TrainConfig) -> list[str]:
    """One problem per changed key that a resumed run cannot change."""
    return [f"train.{key}: cannot change when resuming, it stays {old!r} ({FIXED[key]})"
            for key, old, _ in changed(before, after) if key in FIXED]


def described(before: TrainConfig, after: TrainConfig, step: int) -> list[str]:
    """One log line per changed key, e.g. 'train.lr 0.002 -> 0.001 from step 400'."""
    return [f"train.{key} {_plain(old)} -> {_plain(new)} from step {step}"
            for key, old, new in changed(before, after)]


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(list(value)) if isinstance(value, tuple) else str(value)

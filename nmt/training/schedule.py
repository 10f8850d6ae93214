"""Learning-rate schedules as pure functions of the step (and of the training time, for a time
budget) plus a little plateau state.

    constant      lr = base * warmup(step)
    warmup_decay  lr = base * warmup(step) * sqrt(warmup_steps / max(step, warmup_steps))
    plateau       lr = base * warmup(step) * factor ** decays, where `decays` grows by one after
                  `patience` validations without improvement (as ReduceLROnPlateau)
    linear        after the warm-up, lr = min_lr + (base - min_lr) * (1 - f)
    cosine        after the warm-up, lr = min_lr + (base - min_lr) * (1 + cos(pi f)) / 2
                  (Loshchilov and Hutter 2017, SGDR, Eq. 5, one cycle without restart)

warmup(step) = min(1, step / warmup_steps) (1 without warm-up); lr never goes below min_lr.

f in [0, 1] is how much of the decay is done: with d = decay_fraction, the decay takes the last
d of the training budget spent after the warm-up (the rate stays at base before it, as in the
warm-up-stable-decay or trapezoidal schedules of Zhai et al. 2022 and Hägele et al. 2024), so
f = max(0, (spent - (1 - d)) / d), where `spent` is the budget's fraction used since the warm-up
ended. The budget is `max_steps` updates and/or `max_seconds` of training time, and where both
are set, whichever fraction is further along. So `linear` and `cosine` reach min_lr exactly when
the budget runs out.

A resumed run takes every setting from its resumed config and its progress from the checkpoint
(`resumed`). Where that gives linear or cosine another curve after the warm-up (a longer budget,
another decay_fraction, lr, min_lr, warm-up or kind), the rest of the run restarts at step s0
from the rate r0 reached there (or from the new base where `lr` changed) and follows the new
curve's shape, scaled to begin at r0: lr = min_lr + (r0 - min_lr) * shape(step) / shape(s0), with
shape = 1 - f or (1 + cos(pi f)) / 2. It holds r0 until the new decay begins, then falls to
min_lr when the new budget runs out: the rate never jumps back up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

BUDGETED = ("linear", "cosine")  # the schedules that read the training budget
# the fields a config sets (the others are progress, which a resumed run keeps)
SETTINGS = ("kind", "base_lr", "warmup_steps", "factor", "patience", "min_lr", "max_steps",
            "max_seconds", "decay_fraction")
# the settings that draw the curve of linear and cosine
_CURVE = ("kind", "base_lr", "min_lr", "warmup_steps", "max_steps", "max_seconds",
          "decay_fraction")


@dataclass
class Schedule:
    kind: str
    base_lr: float
    warmup_steps: int = 0
    factor: float = 0.5
    patience: int = 2
    min_lr: float = 0.0
    decays: int = 0  # plateau: decays so far
    best: float | None = None  # plateau: best score seen (higher is better)
    bad: int = 0  # plateau: validations since the best
    max_steps: int = 0  # linear, cosine: the budget in updates (0: none)
    max_seconds: float = 0.0  # linear, cosine: the budget in training seconds (0: none)
    warm_seconds: float = 0.0  # training seconds when the warm-up ended (see `advance`)
    decay_fraction: float = 1.0  # linear, cosine: the last part of the budget that decays
    restart_step: int = -1  # linear, cosine: where a resumed run's new curve began (-1: none)
    restart_seconds: float = 0.0  # the training time there
    restart_lr: float = 0.0  # the rate there (r0)

    def lr_at(self, step: int, seconds: float = 0.0) -> float:
        """The learning rate of update `step`, begun after `seconds` of training."""
        warm = min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0
        lr = self.base_lr * warm
        if self.kind == "warmup_decay" and self.warmup_steps:
            lr *= (self.warmup_steps / max(step, self.warmup_steps)) ** 0.5
        elif self.kind == "plateau":
            lr *= self.factor ** self.decays
        elif self.kind in BUDGETED and step >= self.warmup_steps:
            top, shape = self.base_lr, self.shape(step, seconds)
            if 0 <= self.restart_step <= step:
                top, at = self.restart_lr, self.shape(self.restart_step, self.restart_seconds)
                shape = min(1.0, shape / at) if at > 0 else 0.0
            lr = self.min_lr + (top - self.min_lr) * shape
        return max(self.min_lr, lr)

    def shape(self, step: int, seconds: float) -> float:
        """linear, cosine: 1 until the decay begins, falling to 0 when the budget runs out."""
        f = self.decayed(step, seconds)
        return 1 - f if self.kind == "linear" else (1 + math.cos(math.pi * f)) / 2

    def decayed(self, step: int, seconds: float) -> float:
        """f: the part of the decay done, in [0, 1] (0 until it begins, 1 once the budget is
        spent, whatever the rounding)."""
        d, spent = self.decay_fraction, self.spent(step, seconds)
        return 1.0 if spent >= 1 else max(0.0, (spent - (1 - d)) / d)

    def spent(self, step: int, seconds: float) -> float:
        """The fraction of the budget spent since the warm-up ended, in [0, 1]."""
        f = 0.0
        if self.max_steps:
            f = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        if self.max_seconds:
            left = self.max_seconds - self.warm_seconds
            f = max(f, (seconds - self.warm_seconds) / left if left > 0 else 1.0)
        return min(1.0, max(0.0, f))

    def patience_counts(self, step: int, seconds: float) -> bool:
        """Whether a validation without improvement counts towards `train.patience`: always,
        except under linear and cosine before their decay has begun (a stable rate's plateau
        is no sign that the decay will not help)."""
        if self.kind not in BUDGETED:
            return True
        return step >= self.warmup_steps and self.decayed(step, seconds) > 0

    def advance(self, step: int, seconds: float) -> None:
        """Called after each update: remembers the training time at which the warm-up ended,
        where a time budget's decay begins."""
        if step == self.warmup_steps:
            self.warm_seconds = seconds

    def observe(self, score: float) -> None:
        """Feeds one validation score (higher is better) to the plateau rule."""
        if self.kind != "plateau":
            return
        if self.best is None or score > self.best:
            self.best, self.bad = score, 0
            return
        self.bad += 1
        if self.bad > self.patience:
            self.decays += 1
            self.bad = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restores every field (rank 0's schedule on every rank); a resumed run whose config
        may have changed goes through `resumed` instead."""
        for key, value in state.items():
            setattr(self, key, value)


def resumed(saved: dict, configured: Schedule, step: int, seconds: float) -> Schedule:
    """The schedule a run resumed after update `step` (at `seconds` of training) continues
    with: the settings of `configured` (built from the resumed config) and the progress in
    `saved` (plateau counters, when the warm-up ended, an earlier restart). Unchanged settings
    give back the saved schedule exactly; a changed curve of linear or cosine restarts from the
    rate reached (see the module's docstring)."""
    known = {f.name for f in fields(Schedule)}
    old = Schedule(**{k: v for k, v in saved.items() if k in known})
    new = replace(old, **{k: getattr(configured, k) for k in SETTINGS})
    if all(getattr(old, k) == getattr(new, k) for k in _CURVE):
        return new
    new.restart_step = -1
    if old.warmup_steps > step and new.warmup_steps <= step:
        new.warm_seconds = seconds  # the shortened warm-up ends here
    if new.kind not in BUDGETED or step < new.warmup_steps or step < old.warmup_steps:
        return new  # no decay curve to continue: the new settings' formula from here
    r0 = new.base_lr if new.base_lr != old.base_lr else old.lr_at(step, seconds)
    new.restart_step, new.restart_seconds = step, seconds
    new.restart_lr = min(new.base_lr, max(new.min_lr, r0))
    return new

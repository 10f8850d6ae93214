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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

BUDGETED = ("linear", "cosine")  # the schedules that read the training budget
# a resumed run takes its budget (and the part of it that decays) from its config
_FROM_CONFIG = ("max_steps", "max_seconds", "decay_fraction")


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

    def lr_at(self, step: int, seconds: float = 0.0) -> float:
        """The learning rate of update `step`, begun after `seconds` of training."""
        warm = min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0
        lr = self.base_lr * warm
        if self.kind == "warmup_decay" and self.warmup_steps:
            lr *= (self.warmup_steps / max(step, self.warmup_steps)) ** 0.5
        elif self.kind == "plateau":
            lr *= self.factor ** self.decays
        elif self.kind in BUDGETED and step >= self.warmup_steps:
            d = self.decay_fraction
            f = max(0.0, (self.spent(step, seconds) - (1 - d)) / d)
            shape = 1 - f if self.kind == "linear" else (1 + math.cos(math.pi * f)) / 2
            lr = self.min_lr + (self.base_lr - self.min_lr) * shape
        return max(self.min_lr, lr)

    def spent(self, step: int, seconds: float) -> float:
        """The fraction of the budget spent since the warm-up ended, in [0, 1]."""
        f = 0.0
        if self.max_steps:
            f = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        if self.max_seconds:
            left = self.max_seconds - self.warm_seconds
            f = max(f, (seconds - self.warm_seconds) / left if left > 0 else 1.0)
        return min(1.0, max(0.0, f))

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
        """Restores the schedule's state; the budget stays the one this run was configured
        with, so that resuming with a larger `train.max_steps` stretches the decay to it."""
        for key, value in state.items():
            if key not in _FROM_CONFIG:
                setattr(self, key, value)

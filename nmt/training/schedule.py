"""Learning-rate schedules as pure functions of the step plus a little plateau state.

    constant      lr = base * warmup(step)
    warmup_decay  lr = base * warmup(step) * sqrt(warmup_steps / max(step, warmup_steps))
    plateau       lr = base * warmup(step) * factor ** decays, where `decays` grows by one after
                  `patience` validations without improvement (as ReduceLROnPlateau)

warmup(step) = min(1, step / warmup_steps) (1 without warm-up); lr never goes below min_lr.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


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

    def lr_at(self, step: int) -> float:
        warm = min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0
        lr = self.base_lr * warm
        if self.kind == "warmup_decay" and self.warmup_steps:
            lr *= (self.warmup_steps / max(step, self.warmup_steps)) ** 0.5
        elif self.kind == "plateau":
            lr *= self.factor ** self.decays
        return max(self.min_lr, lr)

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
        for key, value in state.items():
            setattr(self, key, value)

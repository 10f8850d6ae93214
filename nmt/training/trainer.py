"""A small training engine: it is given a built model, optimizer, schedule, data, a validation
function and a run directory, and loops. Nothing here knows about configs files or attention.

Everything a run needs to continue bit-for-bit lives in `last.pt`: weights, optimizer, schedule,
`Progress` (step, epoch, position in the epoch's batch order, best scores) and every rank's RNG
state; the batch order itself is a pure function of (seed, epoch), and a batch's contents of
(its pairs, epoch, position), whatever `Collate` makes it.

Under several processes, rank 0 alone validates and decides (learning rate, stopping, best
checkpoint); its schedule and `Progress` are then shared with every rank, so all ranks keep
stepping one model (see nmt.training.distributed).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from nmt import checkpoint
from nmt.config import TrainConfig
from nmt.data.batching import Collate, Dataset, epoch_batches, prepared_ids
from nmt.errors import TrainingError
from nmt.model.seq2seq import Seq2Seq
from nmt.training import distributed, rng
from nmt.training.board import Board
from nmt.training.precision import Precision
from nmt.training.schedule import Schedule, resumed

if TYPE_CHECKING:  # made by nmt.evaluation.validation, which sits above training
    from nmt.evaluation.validation import Validation

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["step", "epoch", "lr", "train_loss", "valid_loss", "valid_ppl", "bleu", "chrf",
                  "tgt_tokens_per_s", "minutes", "valid_minutes"]


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches of the current epoch already done
    best_score: float | None = None  # higher is better (loss is negated)
    best_step: int = 0
    bad_validations: int = 0
    kept: list = field(default_factory=list)  # [score, step] of the step-N.pt files kept
    seconds: float = 0.0  # wall time so far, validation included
    valid_seconds: float = 0.0  # of which spent validating
    tgt_tokens: int = 0
    last_valid_step: int = -1


class Trainer:
    def __init__(self, model: Seq2Seq, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 data: Dataset, validate: Callable[[], Validation], settings: TrainConfig,
                 run_dir: Path, saved: dict, device: torch.device,
                 dist: distributed.Dist = distributed.Dist(),
                 corpus_weights: tuple[float, ...] = (), board: Board | None = None,
                 collate: Collate | None = None) -> None:
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        # makes a training batch from its pair indices; default: their prepared ids
        self.collate = collate or prepared_ids(data)
        self.corpus_weights = corpus_weights  # per data.corpora entry; () or all 1: unweighted
        self.board = board  # TensorBoard event files (rank 0), or None
        self.data, self.validate, self.s = data, validate, settings
        self.run_dir, self.saved, self.device, self.dist = run_dir, saved, device, dist
        self.loss_fn = distributed.wrap(distributed.TrainingLoss(model), dist, device)
        self.precision = Precision(settings.precision, device)
        self.progress = Progress()
        self.stop_signal: int | None = None  # set by a signal handler
        self._bad_in_row = 0  # non-finite losses in a row
        self._last_score: float | None = None  # of the latest validation (rank 0)
        self.clock: Callable[[], float] = time.perf_counter  # training time is measured on it
        self._start = self.clock()  # reset by run(), net of earlier runs' time
        self._widths = data.widths

    # -- state -----------------------------------------------------------------------------
    def resume_state(self) -> dict:
        """Everything but the weights that a resumed run needs; collective under several
        processes (every rank's random state is gathered)."""
        return {"optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "progress": asdict(self.progress),
                "rng": distributed.gather(self.dist, rng.capture(self.device)),
                "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None}

    def load_resume_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the resumed config's, as the rate is
            group["betas"] = tuple(self.s.betas)
        self.progress = Progress(**state["progress"])
        self.schedule.load_state_dict(resumed(state["schedule"], self.schedule, self.progress.step,
                                              self.progress.seconds).state_dict())
        states = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(states) == self.dist.world:
            rng.restore(states[self.dist.rank], self.device)
        else:  # the random streams cannot continue: new ones, still distinct per rank
            if self.dist.main:
                log.warning("saved by %d process(es), resumed by %d: dropout noise is drawn "
                            "anew, so the run will not repeat an uninterrupted one",
                            len(states), self.dist.world)
            torch.manual_seed(self.s.seed * 1000 + self.dist.rank + 7919 * self.progress.step)
        if self.precision.scaler and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])

    def _save(self, name: str, score: float | None = None, resume: dict | None = None) -> Path:
        path = self.run_dir / name
        data = {**self.saved, "model": self.model.state_dict(), "step": self.progress.step,
                "score": score}
        if resume is not None:
            data["resume"] = resume
        checkpoint.save(path, data)
        return path

    def _save_last(self, score: float | None = None) -> None:
        """Writes last.pt (rank 0); every rank must call it, as it gathers their states."""
        resume = self.resume_state()
        if self.dist.main:
            self._save("last.pt", score, resume)

    def _follow_main(self) -> None:
        """Rank 0's schedule and progress on every rank: its decisions become everyone's."""
        if not self.dist.enabled:
            return
        schedule, progress = distributed.from_main(
            self.dist, (self.schedule.state_dict(), asdict(self.progress)))
        self.schedule.load_state_dict(schedule)
        for key, value in progress.items():
            setattr(self.progress, key, value)

    def _check_replicas(self) -> None:
        """Every rank must hold the same parameters; logs their digests, raises if they differ."""
        if not self.dist.enabled:
            return
        digests = distributed.gather(self.dist, distributed.digest(self.model.state_dict()))
        if len(set(digests)) > 1:
            raise TrainingError(f"the {self.dist.world} processes hold different parameters at "
                                f"step {self.progress.step} (digests {', '.join(digests)})")
        log.info("step %d: the %d processes hold identical parameters (digest %s)",
                 self.progress.step, self.dist.world, digests[0])

    # -- loop ------------------------------------------------------------------------------
    def run(self) -> Progress:
        p, s, main = self.progress, self.s, self.dist.main
        bar = tqdm(total=s.max_steps or None, initial=p.step, unit=" step", dynamic_ncols=True,
                   mininterval=1.0, disable=None if main else True)  # no bar off a terminal
        self._start = self.clock() - p.seconds
        window = {"loss": 0.0, "tokens": 0, "time": self.clock(), "tgt": 0}
        group = self.dist.world * s.accumulate  # batches per update, over all ranks
        reason = self._stop_reason()  # a resumed run may have nothing left to do
        while reason is None:
            batches = epoch_batches(self._widths, self.data.corpus, self.corpus_weights,
                                    s.batch_tokens, s.seed, p.epoch)
            while p.batch < len(batches) and reason is None:
                lr = self.schedule.lr_at(p.step + 1, p.seconds)
                done = self.update(batches[p.batch:p.batch + group], lr)
                p.batch += group
                if done is None:
                    continue
                window["loss"] += done[0]
                window["tokens"] += done[1]
                bar.update()
                if main and p.step % s.log_every == 0:
                    self._log(bar, window, lr)
                if p.step % s.valid_every == 0:
                    self._validate(window, lr)
                # rank 0's clock for every rank: a schedule that reads the time stays one
                reason, self.stop_signal, p.seconds = distributed.from_main(
                    self.dist, (self._stop_reason(), self.stop_signal, p.seconds))
                self.schedule.advance(p.step, p.seconds)
            if p.batch >= len(batches) and reason is None:
                p.epoch, p.batch = p.epoch + 1, 0
                if s.max_epochs and p.epoch >= s.max_epochs:
                    reason = f"{p.epoch} epochs done"
        bar.close()
        if self.stop_signal is None and p.last_valid_step != p.step:
            self._validate(window, self.schedule.lr_at(p.step, p.seconds))
        elif self.stop_signal is not None:
            self._save_last()
        if main:
            log.info("stopped: %s (step %d, best %s at step %d)", reason, p.step,
                     _fmt(p.best_score), p.best_step)
        return p

    def update(self, group: list[np.ndarray], lr: float) -> tuple[float, int] | None:
        """One optimizer step on a group of batches (pair indices): this rank's share of them
        (every world-th), accumulated, each loss scaled by the group's target-token count, so
        the step equals one step on all the group's pairs at once. Returns (summed loss, target
        tokens) of the whole group, or None when the loss was not finite and it was skipped.

        The group's batches are the `world x accumulate` batches from position `progress.batch`
        of the epoch's list; a rank collates only its own (each in one part or more), and the
        token count is summed over ranks (a sampled segmentation's length is known only to the
        rank that drew it)."""
        p, s, d = self.progress, self.s, self.dist
        mine = list(range(d.rank, len(group), d.world))
        # a rank left without a batch (at an epoch's end) joins in with a zero-weight one
        weights = [1.0] * len(mine) if mine else [0.0]
        mine = mine or [0]
        parts = [(part, weight) for i, weight in zip(mine, weights)
                 for part in self.collate(group[i], p.epoch, p.batch + i)]
        counted = sum(b.n_tokens for b, weight in parts if weight)  # EOS included
        n_total = int(distributed.sum_all(d, torch.tensor(counted, dtype=torch.int64)))
        for group_param in self.optimizer.param_groups:
            group_param["lr"] = lr
        self.loss_fn.train()
        total = torch.zeros((), dtype=torch.float64)
        for k, (batch, weight) in enumerate(parts):
            batch = batch.to(self.device)
            last = k == len(parts) - 1
            sync = nullcontext() if last or not d.enabled else self.loss_fn.no_sync()
            with sync:
                with self.precision.autocast():
                    loss, _ = self.loss_fn(batch.src, batch.src_len, batch.tgt_in,
                                           batch.tgt_out, s.label_smoothing)
                self.precision.backward(loss * (weight * d.world) / n_total)  # DDP: mean
            total += loss.detach().double().cpu() * weight
        value = float(distributed.sum_all(d, total))
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            self._bad_in_row += 1
            log.warning("non-finite loss at step %d: batch skipped (%d in a row)", p.step + 1,
                        self._bad_in_row)
            if self._bad_in_row >= s.max_bad_steps:
                raise TrainingError(f"loss was not finite for {self._bad_in_row} batches in a "
                                    f"row; stopped (last good checkpoint kept)")
            return None
        self._bad_in_row = 0
        self.precision.step(self.optimizer, self.model.parameters(), s.clip_norm)
        self.optimizer.zero_grad(set_to_none=True)
        p.step += 1
        p.tgt_tokens += n_total
        p.seconds = self.clock() - self._start
        return value, n_total

    def _stop_reason(self) -> str | None:
        p, s = self.progress, self.s
        if self.stop_signal is not None:
            return f"signal {self.stop_signal}"
        if s.max_steps and p.step >= s.max_steps:
            return f"{p.step} steps done"
        if s.max_minutes and p.seconds >= 60 * s.max_minutes:
            return f"{s.max_minutes:g} minutes done"
        if s.patience and p.bad_validations >= s.patience:
            return f"no improvement in {p.bad_validations} validations"
        return None

    def _log(self, bar: tqdm, window: dict, lr: float) -> None:
        elapsed = self.clock() - window["time"]
        rate = (self.progress.tgt_tokens - window["tgt"]) / elapsed if elapsed else 0.0
        window["rate"] = rate
        loss = window["loss"] / max(1, window["tokens"])
        to_valid = self.s.valid_every - self.progress.step % self.s.valid_every
        bar.set_postfix_str(f"loss {loss:.3f} lr {lr:.2e} {rate:,.0f} tok/s valid in {to_valid}")
        log.log(logging.DEBUG if not bar.disable else logging.INFO,
                "step %d loss %.4f lr %.2e %.0f tgt tok/s", self.progress.step, loss, lr, rate)
        if self.board:
            self.board.scalars(self.progress.step, {"train/loss": loss, "train/lr": lr,
                                                    "train/tgt_tokens_per_s": rate})
        window["time"], window["tgt"] = self.clock(), self.progress.tgt_tokens

    def _validate(self, window: dict, lr: float) -> None:
        """Validates and decides on rank 0, shares the decisions, checks that the ranks hold
        one model and saves; every rank calls it."""
        if self.dist.main:
            self._validate_main(window, lr)
        self._follow_main()
        self._check_replicas()
        self._save_last(self._last_score)

    def _validate_main(self, window: dict, lr: float) -> None:
        p, s = self.progress, self.s
        began = self.clock()
        v = self.validate()
        p.valid_seconds += self.clock() - began
        p.seconds = self.clock() - self._start
        score = v.score(s.metric)
        improved = p.best_score is None or score > p.best_score
        if improved:
            p.best_score, p.best_step, p.bad_validations = score, p.step, 0
        elif self.schedule.patience_counts(p.step, p.seconds):  # linear, cosine: decaying
            p.bad_validations += 1
        self.schedule.observe(score)
        p.last_valid_step = p.step
        train_loss = window["loss"] / max(1, window["tokens"])
        row = {"step": p.step, "epoch": p.epoch, "lr": f"{lr:.3g}",
               "train_loss": f"{train_loss:.4f}",
               "valid_loss": f"{v.loss:.4f}", "valid_ppl": f"{math.exp(min(v.loss, 50)):.2f}",
               "bleu": f"{v.bleu:.2f}", "chrf": f"{v.chrf:.2f}",
               "tgt_tokens_per_s":
                   f"{p.tgt_tokens / max(p.seconds - p.valid_seconds, 1e-9):.0f}",
               "minutes": f"{p.seconds / 60:.1f}",
               "valid_minutes": f"{p.valid_seconds / 60:.1f}"}
        self._append_metrics(row)
        if self.board:
            self.board.scalars(p.step, {"valid/loss": v.loss, "valid/ppl": float(row["valid_ppl"]),
                                        "valid/bleu": v.bleu, "valid/chrf": v.chrf})
            self.board.flush()
        log.info("validation at step %d: loss %.3f ppl %s BLEU %.2f chrF %.2f%s", p.step, v.loss,
                 row["valid_ppl"], v.bleu, v.chrf, " (best)" if improved else "")
        window["loss"], window["tokens"] = 0.0, 0
        if improved or s.average_last:  # averaging needs the last ones, better or not
            path = self._save(f"step-{p.step}.pt", score)
            p.kept = [list(x) for x in checkpoint.rotate(
                self.run_dir, [tuple(x) for x in p.kept] + [(score, p.step)], s.keep_best,
                s.average_last)]
        if improved:
            checkpoint.set_best(self.run_dir, path)
        self._last_score = score

    def _append_metrics(self, row: dict) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.2f}"

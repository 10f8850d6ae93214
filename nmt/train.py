"""`nmt train`: turns a config into built objects, a run directory and a `Trainer`, and handles
resuming and signals. The run directory holds everything `translate` and `eval` need.

This module sits on top of the pipeline (data, model, training, inference, evaluation): only
the CLI imports it."""

from __future__ import annotations

import csv
import logging
import random
import shutil
import signal
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import yaml

from nmt import checkpoint, lock
from nmt.config import Config, TrainConfig, from_dict, to_dict
from nmt.data.batching import Dataset, Resegmented, weighted
from nmt.data.prepare import Prepared, prepare
from nmt.data.report import batching_line, composition_line
from nmt.data.sampling import describe
from nmt.device import pick_device
from nmt.errors import CheckpointError, ConfigError, Interrupted, UsageError
from nmt.evaluation.validation import Validation, make_validator
from nmt.fast import kernels
from nmt.inference.search import check_beam
from nmt.model.seq2seq import count_parameters
from nmt.training import averaging, board, changes, distributed, finetune
from nmt.training.memory import allocate_model
from nmt.training.schedule import Schedule
from nmt.training.trainer import Trainer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(t: TrainConfig, model: torch.nn.Module) -> tuple[torch.optim.Adam, Schedule]:
    """Adam and the learning-rate schedule described by `train`. Fused Adam updates all
    parameters in one pass (docs/performance.md says what it buys)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, betas=t.betas, fused=True)
    return optimizer, Schedule(t.schedule, t.lr, t.warmup_steps, t.decay_factor,
                               t.decay_patience, t.min_lr, max_steps=t.max_steps,
                               max_seconds=60 * t.max_minutes, decay_fraction=t.decay_fraction)


LOCK = ".lock"  # in the run directory while a process trains it


def _new_run_dir(cfg: Config, runs_dir: Path, overwrite: bool, stack: ExitStack) -> Path:
    """runs_dir/name, empty, locked for this process until `stack` closes."""
    run_dir = runs_dir / cfg.name
    started = {LOCK, "train.log"}  # all that a start which failed before training leaves
    if run_dir.exists() and any(p.name not in started for p in run_dir.iterdir()) \
            and not overwrite:
        raise UsageError(f"{run_dir} already exists: use --resume {run_dir} to continue it, "
                         f"--overwrite to start again, or another name (--set name=...)")
    run_dir.mkdir(parents=True, exist_ok=True)
    stack.enter_context(lock.hold(run_dir / LOCK, str(run_dir)))
    for path in run_dir.iterdir():  # --overwrite: only once the run is ours
        if path.name == LOCK:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return run_dir


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The run's resolved config with `--set` overrides; data, model and the few train keys
    of nmt.training.changes.FIXED must not change."""
    from nmt.config import apply_overrides, read_yaml

    raw = read_yaml(run_dir / "config.yaml")
    before = from_dict(raw, str(run_dir / "config.yaml"))  # defaults fill keys added since
    cfg = from_dict(apply_overrides(raw, overrides), str(run_dir / "config.yaml"))
    problems = [f"{s}: cannot change when resuming" for s in ("data", "model")
                if getattr(cfg, s) != getattr(before, s)]
    problems += changes.refused(before.train, cfg.train)
    problems += finetune.refused_on_resume(before, cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def train(cfg: Config, runs_dir: Path = Path("runs"), resume: Path | None = None,
          overwrite: bool = False) -> Path:
    """Trains `cfg` (or continues the run in `resume`); returns the run directory. Under
    torchrun every process calls this; rank 0 alone writes files (nmt.training.distributed)."""
    if cfg.train.tensorboard:
        board.require()
    d = distributed.from_env()
    device = pick_device(cfg.train.device)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 products on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    distributed.init(d, device)
    try:
        with ExitStack() as stack:
            return _train(cfg, runs_dir, resume, overwrite, d, device, stack)
    finally:
        distributed.shutdown(d)


def _train(cfg: Config, runs_dir: Path, resume: Path | None, overwrite: bool,
           d: distributed.Dist, device: torch.device, stack: ExitStack) -> Path:
    # a fine-tune starts from its parent once; resumed, from its own last.pt
    parent = finetune.load_parent(cfg) if cfg.train.init_from and not resume else None
    if d.main:
        if resume:
            run_dir = resume
            stack.enter_context(lock.hold(run_dir / LOCK, str(run_dir)))
        else:
            run_dir = _new_run_dir(cfg, runs_dir, overwrite, stack)
        _log_to_file(run_dir / "train.log")
    else:
        logging.getLogger("nmt").setLevel(logging.WARNING)
    state = checkpoint.load(resume / "last.pt") if resume else None
    given = finetune.given_tokenizer(cfg, parent, state)
    if d.main:
        prepared = prepare(cfg.data, tokenizer=given)
    distributed.barrier(d)  # run directory and prepared data exist
    if not d.main:
        run_dir = resume if resume else runs_dir / cfg.name
        prepared = prepare(cfg.data, progress=False, tokenizer=given)
    tok = prepared.tokenizer()
    check_beam(cfg.decode.beam, tok.tgt_vocab_size, "decode.beam")
    seed_everything(cfg.train.seed)
    model = allocate_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, device,
                           kernels.FUSED)
    if d.enabled:
        torch.manual_seed(cfg.train.seed * 1000 + d.rank)  # own dropout noise per process
    optimizer, schedule = build_optimizer(cfg.train, model)
    if parent:
        finetune.load_weights(model, parent)
        if parent.moments is not None:
            finetune.load_moments(optimizer, parent)
    t = cfg.train
    saved = {"config": to_dict(cfg), "tokenizer": {"src": tok.src_model, "tgt": tok.tgt_model}}
    validate = make_validator(model, prepared, cfg, device) if d.main else None
    weights = tuple(c.weight for c in cfg.data.corpora)
    data = Dataset.load(prepared.ids("train"))
    trainer = Trainer(model, optimizer, schedule, data, validate, cfg.train, run_dir, saved,
                      device, d, corpus_weights=weights,
                      collate=_sampling(cfg, prepared, data) if cfg.data.sampling_alpha else None)
    if resume:
        if "resume" not in state:
            raise CheckpointError(f"{run_dir / 'last.pt'}: written by an older nmt; it "
                                  "translates, but its training cannot be resumed")
        model.load_state_dict(state["model"])
        trainer.load_resume_state(state["resume"])
        if d.main:
            _truncate_metrics(run_dir / "metrics.csv", trainer.progress.step)
            _log_changes(run_dir, from_dict(state["config"]), cfg, trainer.progress.step)
        log.info("resuming %s at step %d (epoch %d)", run_dir, trainer.progress.step,
                 trainer.progress.epoch)
    elif d.main:
        _write_run_files(run_dir, cfg, prepared, parent)
    if parent:
        log.info("fine-tuning from %s (step %s, weights sha256 %s…)%s", parent.path, parent.step,
                 parent.digest[:16], ", with its Adam moments" if parent.moments else "")
    if t.tensorboard and d.main:
        trainer.board = board.Board(run_dir, trainer.progress.step if resume else None)
        stack.callback(trainer.board.close)
    log.info("run %s: %s parameters, %d training pairs, device %s, %d threads, %d process(es)",
             run_dir, f"{count_parameters(model):,}", len(trainer.data), device,
             torch.get_num_threads(), d.world)
    log.info("training data: %s; an update takes %d batch(es)",
             batching_line(trainer.data, t.batch_tokens, t.seed, weights), d.world * t.accumulate)
    if weighted(weights):
        log.info("corpus weights: %s", composition_line(
            trainer.data, weights, [c.path for c in cfg.data.corpora]))
    if cfg.data.sampling_alpha:
        log.info("subword sampling in training batches: %s (validation and search: the one "
                 "segmentation)", describe(cfg.data.spm_type, cfg.data.sampling_alpha,
                                           cfg.data.sampling_nbest))
    with _signals(trainer):
        trainer.run()
    if d.main and trainer.stop_signal is None and t.average_last:
        _average_last(trainer, validate, t.average_last, t.metric)
    distributed.barrier(d)  # rank 0 has written its files: no process leaves before the others
    if trainer.stop_signal is not None and not d.main:
        raise SystemExit(128 + trainer.stop_signal)  # rank 0 tells the user
    if trainer.stop_signal is not None:
        raise Interrupted(trainer.stop_signal, f"interrupted at step {trainer.progress.step}; "
                          f"saved {run_dir / 'last.pt'} (continue with --resume {run_dir})")
    return run_dir


def _sampling(cfg: Config, prepared: Prepared, data: Dataset) -> Resegmented:
    """Training batches segmented by subword sampling, seeded by train.seed (docs/quality.md)."""
    d = cfg.data
    samplers = prepared.tokenizer().samplers(d.spm_type, d.sampling_alpha, d.sampling_nbest)
    return Resegmented(data, prepared.lines("train", prepared.src_lang),
                       prepared.lines("train", prepared.tgt_lang),
                       *samplers, cfg.train.seed, cfg.train.batch_tokens)


def _average_last(trainer: Trainer, validate: Callable[[], Validation], k: int,
                  metric: str) -> None:
    """Writes averaged.pt, the mean of the last `k` validation checkpoints, and logs its
    validation scores beside the best checkpoint's."""
    p, run_dir = trainer.progress, trainer.run_dir
    steps = sorted(step for _, step in p.kept)[-k:]
    if len(steps) < k:
        log.warning("train.average_last is %d, but %d validation checkpoint(s) exist: averaging "
                    "those", k, len(steps))
    data = averaging.average([run_dir / f"step-{step}.pt" for step in steps])
    model = trainer.model
    trained = {name: v.detach().clone() for name, v in model.state_dict().items()}
    model.load_state_dict(data["model"])
    v = validate()
    model.load_state_dict(trained)
    data["score"] = v.score(metric)
    checkpoint.save(run_dir / averaging.AVERAGED, data)
    log.info("%s, the mean of steps %s: loss %.3f BLEU %.2f chrF %.2f (best.pt: %s %.2f at "
             "step %d)", averaging.AVERAGED, ", ".join(map(str, steps)), v.loss, v.bleu, v.chrf,
             metric, p.best_score if metric != "loss" else -p.best_score, p.best_step)


def _log_changes(run_dir: Path, before: Config, cfg: Config, step: int) -> None:
    """Logs each train key that the resumed config changes (it takes effect from `step`) and
    keeps config.yaml the config the run now trains with."""
    for line in changes.described(before.train, cfg.train, step):
        log.info("%s", line)
    if before != cfg:
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False).encode()
        checkpoint.atomic_write(run_dir / "config.yaml", lambda f: f.write(text))


def _write_run_files(run_dir: Path, cfg: Config, prepared: Prepared,
                     parent: finetune.Parent | None) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    for lang in (prepared.src_lang, prepared.tgt_lang):
        shutil.copyfile(prepared.spm(lang), run_dir / prepared.spm(lang).name)
        shutil.copyfile(prepared.text("test", lang), run_dir / f"test.{lang}")
    if parent:
        finetune.write_record(run_dir, parent)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops metric rows written after the checkpoint being resumed."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    kept = [r for r in rows if int(r["step"]) <= step]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)


def _log_to_file(path: Path) -> None:
    root = logging.getLogger("nmt")
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)


class _signals:
    """SIGINT/SIGTERM ask the trainer to save and stop; a second signal exits at once (files
    are written atomically, so nothing is left half-written)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def _handle(self, signum, frame) -> None:
        if self.trainer.stop_signal is not None:
            raise SystemExit(128 + signum)
        log.warning("signal %d: saving last.pt and stopping (again to quit at once)", signum)
        self.trainer.stop_signal = signum

    def __enter__(self):
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)


"""The race's peers (OpenNMT-py, Joey NMT from ../shared/bench): their configs, with nmt's recipe
or their own, their launch, their clock and their checkpoints.

A peer's config is the bench's template (the architecture of run-peer.sh) with its placeholders
filled in, then, for nmt's recipe, every knob the peer has that nmt's config sets: token batches,
learning rate, label smoothing, and a decay near the end of the budget, placed from the peer's
speed measured in short untimed runs that validate as often as the timed one will (a decay
placed by the speed without validations starts late). OpenNMT-py decays by steps (halving the
rate four times over the budget's last `decay_fraction`); Joey NMT 2.3.0 has no decay by steps
that works (its `warmupexponentialdecay` is built without its optimizer), so it halves the rate
at each validation that does not improve (`plateau`, patience 1). Joey NMT keeps every
checkpoint (by default it writes only those better than the ones it keeps).

Every toolkit's clock starts at its first update: a peer logs each step, and its clock starts when
its first step is logged; its start-up (imports, vocabulary) is measured and reported apart.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger("race")
STEP = {"joey": re.compile(r"Step:\s+(\d+)"), "onmt": re.compile(r"Step (\d+)/")}
CHECKPOINT = {"joey": re.compile(r"^(\d+)\.ckpt$"), "onmt": re.compile(r"^model_step_(\d+)\.pt$")}
RECIPES = ("nmt", "own")


@dataclass(frozen=True)
class Recipe:
    """The knobs of nmt's training config that a peer can be given."""

    batch_tokens: int  # padded tokens a batch
    lr: float  # Adam's peak rate
    label_smoothing: float
    decay_fraction: float  # the rate decays over this last fraction of the budget (0: never)


@dataclass(frozen=True)
class Launch:
    """What a peer trains on, and how."""

    kind: str  # "onmt" | "joey"
    recipe: str  # "nmt" | "own"
    seed: int
    data: Path  # train/dev/test.{en,pt} as space-separated pieces
    out: Path  # the peer's output folder (emptied first)
    max_pieces: int


@dataclass
class PeerRun:
    """A peer's timed run: its checkpoints as (minute after its first update, copy)."""

    checkpoints: dict[int, tuple[float, Path]]
    startup_s: float  # launch to first update
    ended_early: bool


def render(template: Path, launch: Launch, updates: int, valid_freq: int,
           recipe: Recipe | None) -> dict:
    """The peer's config: the bench template filled in as run-peer.sh fills it, then `recipe`'s
    knobs (None: the peer's own defaults, as in the bench). The peer may make more updates than
    the `updates` expected in its budget, which place its decay; the budget stops it."""
    d, out = launch.data, launch.out
    text = template.read_text()
    for key, value in {"RUN_DIR": out / "run", "MODEL_DIR": out / "model", "TRAIN": d / "train",
                       "DEV": d / "dev", "TEST": d / "test", "SRC": "en", "TGT": "pt",
                       "UPDATES": 10 ** 7, "VALID_FREQ": valid_freq, "LOG_FREQ": 1,
                       "VOC": 32000, "MAXLEN": launch.max_pieces}.items():
        text = text.replace(f"@{key}@", str(value))
    config = yaml.safe_load(text)
    if launch.kind == "onmt":
        config["seed"] = launch.seed
        if recipe:
            config.update(batch_type="tokens", batch_size=recipe.batch_tokens,
                          learning_rate=recipe.lr, label_smoothing=recipe.label_smoothing)
            if recipe.decay_fraction:  # rate x 0.5 at the start of each quarter of the decay
                quarter = max(1, round(updates * recipe.decay_fraction / 4))
                config.update(start_decay_steps=updates - 4 * quarter, decay_steps=quarter,
                              learning_rate_decay=0.5)
    else:
        train = config["training"]
        train["random_seed"] = launch.seed
        # every checkpoint kept, not only the best by Joey's own validation on --peer-dev
        # sentences: the race picks each run's best by its own curve, as it does the others'
        train["keep_best_ckpts"] = -1
        if recipe:
            train.update(batch_type="token", batch_size=recipe.batch_tokens,
                         learning_rate=recipe.lr, label_smoothing=recipe.label_smoothing)
            if recipe.decay_fraction:
                train.update(scheduling="plateau", patience=1, decrease_factor=0.5)
    return config


def start(venvs: Path, launch: Launch, config: dict) -> subprocess.Popen:
    """Writes the config and starts the peer's training (vocabulary first, for OpenNMT-py), its
    output in `out/train.out`, in a process group of its own."""
    shutil.rmtree(launch.out, ignore_errors=True)  # the peers refuse to overwrite earlier output
    (launch.out / "run").mkdir(parents=True)
    path = launch.out / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    bin_ = venvs / launch.kind / "bin"
    if launch.kind == "onmt":
        command = (f'"{bin_}/onmt_build_vocab" -config "{path}" -n_sample -1 '
                   f'> "{launch.out}/build_vocab.out" 2>&1 && exec "{bin_}/onmt_train" '
                   f'-config "{path}"')
    else:
        command = f'exec "{bin_}/python" -m joeynmt train "{path}" --skip-test'
    with open(launch.out / "train.out", "wb") as train_out:
        return subprocess.Popen(["bash", "-c", command], stdout=train_out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def steps_seen(kind: str, out: Path) -> list[int]:
    path = out / "train.out"
    text = path.read_text(errors="replace") if path.exists() else ""
    return [int(s) for s in STEP[kind].findall(text)]


def first_update(launch: Launch, proc: subprocess.Popen, timeout: float = 900) -> float:
    """The wall time (time.time()) at which the peer logged its first step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if steps_seen(launch.kind, launch.out):
            return time.time()
        time.sleep(0.1)
    tail = (launch.out / "train.out").read_text(errors="replace")[-1500:]
    raise RuntimeError(f"{launch.kind} made no update:\n{tail}")


def updates_per_minute(venvs: Path, template: Path, launch: Launch, recipe: Recipe | None,
                       seconds: float, validate_every_s: float) -> float:
    """The peer's speed with its recipe, validations and checkpoints included, from two untimed
    runs: the updates it logs in the `seconds` after its first one without validating, which
    set how often it validates in the second, which runs two validations' time (a validation
    every `validate_every_s` seconds, as the timed run will) and gives the rate."""
    rate = _rate(venvs, template, launch, recipe, seconds, 10 ** 7)
    every = max(1, round(rate * validate_every_s / 60))
    rate = _rate(venvs, template, launch, recipe, 2 * validate_every_s + 5, every)
    log.info("%s: %.1f updates a minute, validating every %d", launch.kind, rate, every)
    return rate


def _rate(venvs: Path, template: Path, launch: Launch, recipe: Recipe | None, seconds: float,
          valid_freq: int) -> float:
    proc = start(venvs, launch, render(template, launch, 10 ** 7, valid_freq, recipe))
    try:
        begin = first_update(launch, proc)
        first = steps_seen(launch.kind, launch.out)[0]
        time.sleep(max(0.0, begin + seconds - time.time()))
        steps = steps_seen(launch.kind, launch.out)
        rate = (steps[-1] - first) / (time.time() - begin) * 60
        if rate <= 0:
            raise RuntimeError(f"{launch.kind} logged too few steps; see {launch.out}/train.out")
        return rate
    finally:
        stop(proc)


def copy_checkpoints(kind: str, source: Path, into: Path, begin: float, done: threading.Event,
                     seen: dict[int, tuple[float, Path]]) -> None:
    """Copies each new checkpoint of `source` once its size has settled (the peers delete
    older ones), with the minute after `begin` (a wall time) its file was last written."""
    into.mkdir(parents=True, exist_ok=True)
    sizes: dict[Path, int] = {}
    while True:
        last_pass = done.is_set()
        for path in source.glob("*") if source.exists() else ():
            m = CHECKPOINT[kind].match(path.name)
            if not m or int(m.group(1)) in seen or path.is_symlink():
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            if stat.st_size and sizes.get(path) == stat.st_size:
                shutil.copyfile(path, into / path.name)
                minute = max(0.0, (stat.st_mtime - begin) / 60)
                seen[int(m.group(1))] = (minute, into / path.name)
            sizes[path] = stat.st_size
        if last_pass:
            return
        time.sleep(0.5)


def timed_run(venvs: Path, template: Path, launch: Launch, recipe: Recipe | None,
              minutes: float, rate: float, points: int, into: Path) -> PeerRun:
    """Trains the peer for `minutes` after its first update, checkpointing `points` times in
    that budget at the measured `rate`; its checkpoints are copied into `into`."""
    updates = max(1, round(rate * minutes))
    valid_freq = max(1, updates // points)
    log.info("%s (seed %d, %s recipe): %g minutes, about %d updates, a checkpoint every %d",
             launch.kind, launch.seed, launch.recipe, minutes, updates, valid_freq)
    launched = time.time()
    proc = start(venvs, launch, render(template, launch, updates, valid_freq, recipe))
    seen: dict[int, tuple[float, Path]] = {}
    try:
        begin = first_update(launch, proc)
        done = threading.Event()
        source = launch.out / ("model" if launch.kind == "joey" else "run")
        watcher = threading.Thread(target=copy_checkpoints, args=(
            launch.kind, source, into, begin, done, seen), daemon=True)
        shutil.rmtree(into, ignore_errors=True)
        watcher.start()
        while time.time() - begin < minutes * 60 and proc.poll() is None:
            time.sleep(0.2)
        ended_early = proc.poll() is not None
        done.set()  # a checkpoint not settled by the end of the budget does not count
        watcher.join()
    finally:
        stop(proc)
    if ended_early:
        log.warning("%s ended %.1f minutes after its first update; see %s/train.out",
                    launch.kind, (time.time() - begin) / 60, launch.out)
    if not seen:
        raise RuntimeError(f"{launch.kind} saved no checkpoint in {minutes:g} minutes")
    return PeerRun({s: v for s, v in seen.items() if v[0] <= minutes}, begin - launched,
                   ended_early)

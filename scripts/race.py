"""Time-to-BLEU race: nmt's default config and the peers of ../shared/bench (Joey NMT,
OpenNMT-py, each with its own RNN recipe in run-peer.sh) trained for the same wall-clock minutes
on the same data and the same SentencePiece pieces, one after the other, then scored on the same
test split with beam 5.

    python scripts/race.py --minutes 20                  # make race
    python scripts/race.py --minutes 2 --toolkits nmt,onmt --test-sentences 200

nmt trains with train.max_minutes set to the budget (its clock: training and validation). A peer
is started with more updates than it can make and stopped when the budget has passed since its
launch (start-up included); its checkpoints, saved every `--points`-th of the updates it makes
in the budget (a short untimed run measures its speed first), are copied as they appear,
with the minute they appeared at. Afterwards every checkpoint of every toolkit is scored the
same way: greedy translations of the first `train.valid_max_sentences` validation sentences,
detokenised, through sacrebleu; nmt's are the ones its validation logged. (The peers' own
validations during training, which cost them time, see `--peer-dev` of those sentences.) Each
toolkit's checkpoint with the best validation BLEU translates the test split with beam 5, and the
systems are compared by paired bootstrap resampling.

Writes to --out: race.md (the table), race.json and race.png (validation BLEU against wall
minutes, one line per toolkit). Prints the table to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import PEERS, export_pieces, median_tokens_per_s, test_pairs

from nmt.config import load_config
from nmt.data.prepare import Prepared, prepare
from nmt.evaluation.metrics import corpus_scores
from nmt.evaluation.plots import bleu_over_time
from nmt.evaluation.significance import paired_bootstrap
from nmt.inference.translator import Translator
from nmt.train import train

ROOT = Path(__file__).resolve().parents[1]
VENVS = Path(os.environ.get("NMT_PEERS", Path(os.environ.get(
    "XDG_CACHE_HOME", Path.home() / ".cache")) / "nmt-peers"))
NAMES = {"nmt": "nmt", "joey": "Joey NMT", "onmt": "OpenNMT-py"}
STEP = {"joey": re.compile(r"Step:\s+(\d+)"), "onmt": re.compile(r"Step (\d+)/")}
CHECKPOINT = {"joey": re.compile(r"^(\d+)\.ckpt$"), "onmt": re.compile(r"^model_step_(\d+)\.pt$")}
log = logging.getLogger("race")


@dataclass
class Entry:
    toolkit: str
    updates: int  # of the checkpoint that was scored
    minutes: float  # wall minutes at which that checkpoint existed
    tgt_tokens_per_s: float  # median of the toolkit's own log intervals
    curve: list[tuple[float, int, float]]  # (minutes, updates, validation BLEU)
    bleu: float = 0.0
    chrf: float = 0.0
    hypotheses: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- nmt


def race_nmt(args: argparse.Namespace, prepared: Prepared, test: tuple[list[str], list[str]]
             ) -> Entry:
    cfg = load_config(args.config, [f"train.max_minutes={args.minutes}", "train.max_steps=0",
                                    *args.overrides])
    log.info("nmt: %s for %g minutes", args.config, args.minutes)
    run = train(cfg, runs_dir=args.runs, overwrite=True)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    curve = [(float(r["minutes"]), int(r["step"]), float(r["bleu"])) for r in rows
             if r["bleu"]]
    best = max(curve, key=lambda point: point[2])
    translator = Translator.from_checkpoint(run / "best.pt")
    hyps = [t.text for t in translator.translate(test[0], beam=5)]
    speeds = [float(r["tgt_tokens_per_s"]) for r in rows if r["tgt_tokens_per_s"]]
    return Entry("nmt", best[1], best[0], statistics.median(speeds), curve, hypotheses=hyps)


# ---------------------------------------------------------------- peers


def peer_env(args: argparse.Namespace, valid_freq: int, log_freq: int) -> dict[str, str]:
    return {**os.environ, "BATCH": "64", "VOC": "32000", "BEAM": "5",
            "MAXLEN": str(args.max_pieces), "VALID_FREQ": str(valid_freq),
            "LOG_FREQ": str(log_freq), "PYTHONWARNINGS": "ignore"}


def start_peer(kind: str, data: Path, out: Path, env: dict[str, str]) -> subprocess.Popen:
    shutil.rmtree(out, ignore_errors=True)  # the peers refuse to overwrite earlier output
    return subprocess.Popen(["bash", str(PEERS / "run-peer.sh"), kind, str(data), str(out),
                             str(10 ** 7)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def steps_seen(kind: str, out: Path) -> list[int]:
    path = out / "train.out"
    text = path.read_text(errors="replace") if path.exists() else ""
    return [int(s) for s in STEP[kind].findall(text)]


def updates_per_minute(kind: str, data: Path, out: Path, args: argparse.Namespace) -> float:
    """The peer's training speed, from an untimed run: the updates between the first step it
    logs and the last one logged `args.calibrate` seconds or more later."""
    proc = start_peer(kind, data, out, peer_env(args, 10 ** 7, 5))
    try:
        seen: list[tuple[float, int]] = []  # (when first seen, step)
        deadline = time.perf_counter() + 900
        while time.perf_counter() < deadline and proc.poll() is None:
            steps = steps_seen(kind, out)
            if steps and (not seen or steps[-1] > seen[-1][1]):
                seen.append((time.perf_counter(), steps[-1]))
            if len(seen) > 1 and seen[-1][0] - seen[0][0] >= args.calibrate:
                rate = (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0]) * 60
                log.info("%s: %.1f updates a minute", kind, rate)
                return rate
            time.sleep(0.2)
        raise RuntimeError(f"{kind} logged too few training steps; see {out / 'train.out'}")
    finally:
        stop(proc)


def copy_checkpoints(kind: str, source: Path, into: Path, start: float, done: threading.Event,
                     seen: dict[int, tuple[float, Path]]) -> None:
    """Copies each new checkpoint of `source` once its size has settled, noting the minute
    it appeared at (the peers delete older ones)."""
    into.mkdir(parents=True, exist_ok=True)
    sizes: dict[Path, int] = {}
    while not done.is_set():
        for path in source.glob("*") if source.exists() else ():
            m = CHECKPOINT[kind].match(path.name)
            if not m or int(m.group(1)) in seen or path.is_symlink():
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size and sizes.get(path) == size:
                shutil.copyfile(path, into / path.name)
                seen[int(m.group(1))] = ((time.perf_counter() - start) / 60, into / path.name)
            sizes[path] = size
        time.sleep(1.0)


def peer_translate(kind: str, out: Path, checkpoint: Path, source: Path, beam: int,
                   prepared: Prepared) -> list[str]:
    """Detokenised translations of the pieces in `source` by a peer's checkpoint."""
    python = VENVS / kind / "bin"
    hyp = out / f"{checkpoint.stem}.beam{beam}.{source.stem}.hyp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    if kind == "joey":
        config = out / f"config.{checkpoint.stem}.beam{beam}.yaml"
        config.write_text((out / "config.yaml").read_text().replace(
            "beam_size: 5", f"beam_size: {beam}").replace(
            "testing:\n", f"testing:\n    load_model: \"{checkpoint}\"\n"))
        with open(source) as stdin, open(hyp, "w") as stdout:
            subprocess.run([str(python / "python"), "-m", "joeynmt", "translate", str(config)],
                           stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL, env=env,
                           check=True)
    else:
        subprocess.run([str(python / "onmt_translate"), "-model", str(checkpoint), "-src",
                        str(source), "-output", str(hyp), "-beam_size", str(beam),
                        "-batch_size", "64", "-batch_type", "sents", "-max_length", "100",
                        "-gpu", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=env, check=True)
    tok = prepared.tokenizer()
    return [tok.tgt.decode_pieces(line.split())
            for line in hyp.read_text(encoding="utf-8").splitlines()]


def race_peer(kind: str, data: Path, args: argparse.Namespace, prepared: Prepared,
              valid_refs: list[str], test: tuple[list[str], list[str]]) -> Entry:
    out = args.runs / kind
    rate = updates_per_minute(kind, data, out, args)
    valid_freq = max(10, round(rate * args.minutes / args.points))
    log.info("%s: %g minutes, a checkpoint every %d updates", kind, args.minutes, valid_freq)
    log_freq = max(1, min(50, valid_freq // 2))  # Joey NMT wants it below valid_freq
    proc = start_peer(kind, data, out, peer_env(args, valid_freq, log_freq))
    start, done, seen = time.perf_counter(), threading.Event(), {}
    source = out / ("model" if kind == "joey" else "run")
    watcher = threading.Thread(target=copy_checkpoints, args=(
        kind, source, args.runs / f"{kind}-checkpoints", start, done, seen), daemon=True)
    watcher.start()
    while time.perf_counter() - start < args.minutes * 60 and proc.poll() is None:
        time.sleep(1.0)
    if proc.poll() is not None:  # it ended before the budget: an error
        tail = (out / "train.out").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{kind} stopped after {(time.perf_counter() - start) / 60:.1f} "
                           f"minutes:\n{tail}")
    stop(proc)
    time.sleep(2.5)  # the last checkpoint settles and is copied, if it was complete
    done.set()
    watcher.join()
    if not seen:
        raise RuntimeError(f"{kind} saved no checkpoint in {args.minutes:g} minutes")
    curve = []
    for step, (minute, checkpoint) in sorted(seen.items()):
        hyps = peer_translate(kind, out, checkpoint, data / "curve.en", 1, prepared)
        (bleu,) = corpus_scores(hyps, valid_refs, ("bleu",))
        curve.append((minute, step, bleu.value))
        log.info("%s: step %d at %.1f min: validation BLEU %.2f", kind, step, minute, bleu.value)
    best = max(curve, key=lambda point: point[2])
    hyps = peer_translate(kind, out, seen[best[1]][1], data / "test.en", 5, prepared)
    speed = subprocess.run([str(VENVS / kind / "bin" / "python"), str(PEERS / "parse_speed.py"),
                            kind, str(out / "train.out")], capture_output=True, text=True)
    return Entry(kind, best[1], best[0], median_tokens_per_s(speed.stdout) or float("nan"),
                 curve, hypotheses=hyps)


# ---------------------------------------------------------------- report


def table(entries: list[Entry], comparison, minutes: float, test_size: int) -> str:
    base = entries[0].toolkit
    lines = [f"Each toolkit trained {minutes:g} minutes on this machine; test split of "
             f"{test_size:,} pairs, beam 5, the checkpoint with the best validation BLEU. "
             f"95% intervals and p-values against {NAMES[base]} by paired bootstrap "
             f"({comparison.resamples} resamples).", "",
             "| toolkit | BLEU | chrF | p (BLEU) | updates | train tgt tok/s | minutes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for e, (bleu, chrf) in zip(entries, comparison.systems):
        p = "" if bleu.p_value is None else f"{bleu.p_value:.4f}"
        lines.append(f"| {NAMES[e.toolkit]} | {bleu.score:.2f} ± {bleu.ci:.2f} "
                     f"| {chrf.score:.2f} ± {chrf.ci:.2f} | {p} | {e.updates:,} "
                     f"| {e.tgt_tokens_per_s:,.0f} | {e.minutes:.1f} |")
    lines += ["", f"BLEU: `{comparison.signatures['bleu']}`",
              f"chrF: `{comparison.signatures['chrf']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "en-pt.yaml")
    ap.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget each")
    ap.add_argument("--toolkits", default="nmt,onmt,joey",
                    help="comma-separated, in the order they train (default: nmt,onmt,joey)")
    ap.add_argument("--points", type=int, default=10, help="peer checkpoints in the budget")
    ap.add_argument("--calibrate", type=float, default=45.0,
                    help="seconds of untimed peer training that measure its speed")
    ap.add_argument("--peer-dev", type=int, default=100,
                    help="validation sentences the peers decode during training (Joey NMT does)")
    ap.add_argument("--test-sentences", type=int, default=0,
                    help="the first N test pairs only (default: the whole test split)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="an override of nmt's config")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "race")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "race")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    toolkits = [t.strip() for t in args.toolkits.split(",") if t.strip()]
    if not toolkits or set(toolkits) - set(NAMES):
        ap.error(f"--toolkits: a comma-separated list of {', '.join(NAMES)}")
    peers = [t for t in toolkits if t != "nmt"]
    missing = [k for k in peers if not (VENVS / k / "bin" / "python").exists()]
    if missing:
        sys.exit(f"race: no {', '.join(missing)} in {VENVS}: run {PEERS / 'setup-peers.sh'}")
    cfg = load_config(args.config, args.overrides)
    args.max_pieces = cfg.data.max_pieces
    prepared = prepare(cfg.data)
    test = test_pairs(prepared, args.test_sentences or 10 ** 9, cfg.data.max_pieces)
    n_valid = cfg.train.valid_max_sentences or 10 ** 9
    valid_refs = prepared.text("valid", "pt").read_text(encoding="utf-8").splitlines()[:n_valid]
    data = args.runs / "pieces"
    export_pieces(prepared, data, test)
    for lang in ("en", "pt"):  # checkpoints are scored on the sentences nmt validates on;
        dev = data / f"dev.{lang}"  # the peers' own validations, which only pick their best
        lines = dev.read_text(encoding="utf-8").splitlines(True)  # checkpoint, on fewer
        (data / f"curve.{lang}").write_text("".join(lines[:n_valid]), encoding="utf-8")
        dev.write_text("".join(lines[:args.peer_dev]), encoding="utf-8")
    entries = []
    for kind in toolkits:
        try:
            entries.append(race_nmt(args, prepared, test) if kind == "nmt" else
                           race_peer(kind, data, args, prepared, valid_refs, test))
        except (RuntimeError, subprocess.CalledProcessError) as err:  # the others still count
            log.error("%s: %s", kind, err)
    if not entries:
        sys.exit("race: no toolkit finished")
    comparison = paired_bootstrap([e.hypotheses for e in entries], test[1], ("bleu", "chrf"))
    for e, (bleu, chrf) in zip(entries, comparison.systems):
        e.bleu, e.chrf = bleu.score, chrf.score
    args.out.mkdir(parents=True, exist_ok=True)
    report = table(entries, comparison, args.minutes, len(test[1]))
    (args.out / "race.md").write_text(report, encoding="utf-8")
    (args.out / "race.json").write_text(json.dumps(
        {"minutes": args.minutes, "config": str(args.config), "overrides": args.overrides,
         "signatures": comparison.signatures,
         "entries": [{k: v for k, v in asdict(e).items() if k != "hypotheses"}
                     for e in entries]}, indent=1) + "\n", encoding="utf-8")
    bleu_over_time({NAMES[e.toolkit]: [(m, b) for m, _, b in e.curve] for e in entries},
                   args.out / "race.png",
                   title=f"Validation BLEU (greedy) against wall minutes, {args.minutes:g} each")
    sys.stdout.write(report)
    log.info("wrote %s/{race.md,race.json,race.png}", args.out)


if __name__ == "__main__":
    main()

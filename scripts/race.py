"""Time-to-BLEU race: nmt's default config and the peers of ../shared/bench (OpenNMT-py, Joey NMT)
trained for the same wall-clock minutes on the same data and the same SentencePiece pieces, one
after the other, then scored on the same test split with beam 5.

    python scripts/race.py --minutes 20                  # make race
    python scripts/race.py --minutes 2 --seeds nmt=1,onmt=1 --test-sentences 200
    python scripts/race.py --recipe own                  # the peers on their own defaults

A fair race: every peer gets nmt's recipe wherever it has the knob (`--recipe nmt`, the default;
see race_peers.py), and every toolkit's clock starts at its first update and includes its
validations. nmt stops itself when train.max_minutes has passed; a peer is stopped the budget
after its first logged step, having checkpointed `--points` times in the budget at the speed a
short untimed run measured, so that it loses at most 1/points of the budget after its last
checkpoint. Several seeds per toolkit (`--seeds`) show the spread between runs beside the
bootstrap interval.

Afterwards every checkpoint of every run is scored the same way: greedy translations of the
first `train.valid_max_sentences` validation sentences, detokenised, through sacrebleu; nmt's
are the ones its validation logged. Each run's checkpoint with the best validation BLEU
translates the test split with beam 5, and the runs are compared with the first by paired
bootstrap resampling.

`--reuse` scores again the runs of the race recorded in --out/race.json (their files still in
--runs) and trains only the runs it lacks (another seed, another toolkit): nmt's best checkpoint
translates the test split again, a peer's test translations are read back, and each keeps its
entry (updates, curve, load, when it trained: the table's last column).

Writes to --out: race.md (the table), race.json and race.png (validation BLEU against minutes
after the first update, one line per run). Prints the table to stdout.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml
from bench import PEERS, export_pieces, median_tokens_per_s, test_pairs
from race_peers import RECIPES, Launch, PeerRun, Recipe, timed_run, updates_per_minute

from nmt.config import Config, load_config
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
log = logging.getLogger("race")


@dataclass
class Entry:
    toolkit: str
    recipe: str  # "nmt" | "own"
    seed: int
    updates: int  # of the checkpoint that was scored
    minutes: float  # minutes after the first update at which that checkpoint existed
    last_checkpoint: float  # the minute of the run's last checkpoint within the budget
    startup_s: float | None  # launch to first update (None: nmt, in this process)
    tgt_tokens_per_s: float  # median of the toolkit's own log intervals
    curve: list[tuple[float, int, float]]  # (minutes, updates, validation BLEU)
    bleu: float = 0.0
    chrf: float = 0.0
    load: float = 0.0  # the machine's mean 1-minute load average while it trained
    trained: str = ""  # when it began to train (YYYY-MM-DD HH:MM, local time)
    hypotheses: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{NAMES[self.toolkit]} seed {self.seed}"


class Load:
    """The machine's 1-minute load average, sampled every 10 s while a run trains: on this
    2-core machine about 2 is the run alone, more is other work beside it."""

    def __enter__(self) -> Load:
        self.samples: list[float] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(10.0):
            self.samples.append(os.getloadavg()[0])

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def mean(self) -> float:
        return statistics.mean(self.samples) if self.samples else float("nan")


# ---------------------------------------------------------------- nmt


def race_nmt(args: argparse.Namespace, seed: int, prepared: Prepared,
             test: tuple[list[str], list[str]]) -> Callable[[], Entry]:
    """Trains nmt for the budget; returns what scores the run afterwards."""
    cfg = load_config(args.config, [f"train.max_minutes={args.minutes}", "train.max_steps=0",
                                    f"train.seed={seed}", *args.overrides])
    log.info("nmt (seed %d): %s for %g minutes", seed, args.config, args.minutes)
    run = train(cfg, runs_dir=args.runs / f"nmt-seed{seed}", overwrite=True)
    return lambda: score_nmt(run, seed, test)


def score_nmt(run: Path, seed: int, test: tuple[list[str], list[str]]) -> Entry:
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    curve = [(float(r["minutes"]), int(r["step"]), float(r["bleu"])) for r in rows
             if r["bleu"]]
    best = max(curve, key=lambda point: point[2])
    speeds = [float(r["tgt_tokens_per_s"]) for r in rows if r["tgt_tokens_per_s"]]
    return Entry("nmt", "nmt", seed, best[1], best[0], curve[-1][0], None,
                 statistics.median(speeds), curve, hypotheses=nmt_test(run, test))


def nmt_test(run: Path, test: tuple[list[str], list[str]]) -> list[str]:
    """The run's best checkpoint's translations of the test split, beam 5."""
    translator = Translator.from_checkpoint(run / "best.pt")
    return [t.text for t in translator.translate(test[0], beam=5)]


# ---------------------------------------------------------------- peers


def nmt_recipe(cfg: Config) -> Recipe:
    t = cfg.train
    decays = t.schedule in ("linear", "cosine")
    return Recipe(t.batch_tokens, t.lr, t.label_smoothing, t.decay_fraction if decays else 0.0)


def peer_translate(kind: str, out: Path, checkpoint: Path, source: Path, beam: int,
                   prepared: Prepared) -> list[str]:
    """Detokenised translations of the pieces in `source` by a peer's checkpoint."""
    python = VENVS / kind / "bin"
    hyp = out / f"{checkpoint.stem}.beam{beam}.{source.stem}.hyp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    if kind == "joey":
        config = yaml.safe_load((out / "config.yaml").read_text())
        config["testing"].update(beam_size=beam, load_model=str(checkpoint))
        path = out / f"config.{checkpoint.stem}.beam{beam}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        with open(source) as stdin, open(hyp, "w") as stdout:
            subprocess.run([str(python / "python"), "-m", "joeynmt", "translate", str(path)],
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


def race_peer(kind: str, seed: int, data: Path, args: argparse.Namespace, prepared: Prepared,
              valid_refs: list[str], test: tuple[list[str], list[str]]) -> Callable[[], Entry]:
    """Trains a peer for the budget; returns what scores its checkpoints afterwards."""
    template = PEERS / f"{kind}.template.yaml"
    recipe = nmt_recipe(args.cfg) if args.recipe == "nmt" else None
    launch = Launch(kind, args.recipe, seed, data, args.runs / f"{kind}-seed{seed}",
                    args.max_pieces)
    if kind not in args.rates:  # its speed, once a toolkit
        args.rates[kind] = updates_per_minute(VENVS, template, launch, recipe, args.calibrate,
                                              args.minutes * 60 / args.points)
    run = timed_run(VENVS, template, launch, recipe, args.minutes, args.rates[kind],
                    args.points, args.runs / f"{kind}-seed{seed}-checkpoints")
    return lambda: score_peer(kind, seed, data, args, prepared, valid_refs, launch, run)


def score_peer(kind: str, seed: int, data: Path, args: argparse.Namespace, prepared: Prepared,
               valid_refs: list[str], launch: Launch, run: PeerRun) -> Entry:
    curve = []
    for step, (minute, checkpoint) in sorted(run.checkpoints.items()):
        hyps = peer_translate(kind, launch.out, checkpoint, data / "curve.en", 1, prepared)
        (bleu,) = corpus_scores(hyps, valid_refs, ("bleu",))
        curve.append((minute, step, bleu.value))
        log.info("%s: step %d at %.1f min: validation BLEU %.2f", kind, step, minute, bleu.value)
    best = max(curve, key=lambda point: point[2])
    hyps = peer_translate(kind, launch.out, run.checkpoints[best[1]][1], data / "test.en", 5,
                          prepared)
    speed = subprocess.run([str(VENVS / kind / "bin" / "python"), str(PEERS / "parse_speed.py"),
                            kind, str(launch.out / "train.out")], capture_output=True, text=True)
    return Entry(kind, args.recipe, seed, best[1], best[0], curve[-1][0], run.startup_s,
                 median_tokens_per_s(speed.stdout) or float("nan"), curve, hypotheses=hyps)


# ---------------------------------------------------------------- reuse


def reusable(args: argparse.Namespace, test: tuple[list[str], list[str]]
             ) -> dict[tuple[str, int], Callable[[], Entry]]:
    """What scores each run of the race in --out/race.json whose files are still in --runs,
    by (toolkit, seed); exits where that race had another budget or recipe."""
    path = args.out / "race.json"
    if not path.exists():
        sys.exit(f"race: --reuse: no earlier race in {path}")
    earlier = json.loads(path.read_text())
    if (earlier["minutes"], earlier["recipe"]) != (args.minutes, args.recipe):
        sys.exit(f"race: --reuse: {path} is a race of {earlier['minutes']:g} minutes with the "
                 f"{earlier['recipe']!r} recipe, not {args.minutes:g} with {args.recipe!r}")
    args.rates.update(earlier.get("rates", {}))
    found = {}
    for recorded in earlier["entries"]:
        kind, seed = recorded["toolkit"], recorded["seed"]
        if kind == "nmt":
            run = args.runs / f"nmt-seed{seed}" / args.cfg.name
            if (run / "best.pt").exists():
                found[kind, seed] = functools.partial(
                    reused, recorded, functools.partial(nmt_test, run, test))
        else:
            hyps = sorted((args.runs / f"{kind}-seed{seed}").glob("*.beam5.test.hyp"))
            if len(hyps) == 1:
                found[kind, seed] = functools.partial(
                    reused, recorded, functools.partial(read_back, hyps[0], args))
    for kind, seed in found:
        log.info("%s seed %d: reused from %s", NAMES[kind], seed, path)
    return found


def reused(recorded: dict, hypotheses: Callable[[], list[str]]) -> Entry:
    """A recorded entry with its test translations made again (or read back)."""
    keep = {f.name for f in fields(Entry)} - {"bleu", "chrf", "hypotheses"}
    entry = Entry(**{k: v for k, v in recorded.items() if k in keep}, hypotheses=hypotheses())
    entry.curve = [tuple(point) for point in entry.curve]
    return entry


def read_back(hyp: Path, args: argparse.Namespace) -> list[str]:
    """A peer's detokenised test translations, from the pieces it wrote."""
    tok = args.prepared.tokenizer()
    lines = hyp.read_text(encoding="utf-8").splitlines()
    if len(lines) != args.test_size:
        sys.exit(f"race: --reuse: {hyp} has {len(lines):,} translations; this test split has "
                 f"{args.test_size:,} pairs")
    return [tok.tgt.decode_pieces(line.split()) for line in lines]


# ---------------------------------------------------------------- report


def seeds(spec: str) -> list[tuple[str, int]]:
    """`nmt=2,onmt=2,joey=1` -> the runs, in that order: (toolkit, seed), seeds from 1."""
    runs = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, n = part.partition("=")
        if kind not in NAMES or not n.isdigit() or int(n) < 1:
            raise ValueError(part)
        runs += [(kind, seed) for seed in range(1, int(n) + 1)]
    return runs


def table(entries: list[Entry], comparison, minutes: float, test_size: int) -> str:
    recipes = {e.recipe for e in entries if e.toolkit != "nmt"}
    lines = [f"Each run trained {minutes:g} minutes after its first update (validations "
             f"included) on this machine; the peers with "
             f"{'nmt' + chr(39) + 's recipe' if recipes == {'nmt'} else 'their own recipes'}. "
             f"Test split of "
             f"{test_size:,} pairs, beam 5, each run's checkpoint with the best validation BLEU. "
             f"95% intervals and p-values against {entries[0].label} by paired bootstrap "
             f"({comparison.resamples} resamples).", "",
             "| run | BLEU | chrF | p (BLEU) | updates | train tgt tok/s | best at min "
             "| last checkpoint min | start-up s | load | trained at |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for e, (bleu, chrf) in zip(entries, comparison.systems):
        p = "" if bleu.p_value is None else f"{bleu.p_value:.4f}"
        startup = "" if e.startup_s is None else f"{e.startup_s:.0f}"
        lines.append(f"| {e.label} | {bleu.score:.2f} ± {bleu.ci:.2f} "
                     f"| {chrf.score:.2f} ± {chrf.ci:.2f} | {p} | {e.updates:,} "
                     f"| {e.tgt_tokens_per_s:,.0f} | {e.minutes:.1f} | {e.last_checkpoint:.1f} "
                     f"| {startup} | {e.load:.1f} | {e.trained} |")
    lines.append("")
    for kind in NAMES:
        runs = [(e, bleu) for e, (bleu, _) in zip(entries, comparison.systems)
                if e.toolkit == kind]
        if len(runs) > 1:
            scores = [bleu.score for _, bleu in runs]
            lines.append(f"- {NAMES[kind]}: BLEU {statistics.mean(scores):.2f} over "
                         f"{len(runs)} seeds, spread {max(scores) - min(scores):.2f} (max - min) "
                         f"beside a bootstrap interval of ± "
                         f"{statistics.mean(b.ci for _, b in runs):.2f}")
    lines += ["", f"BLEU: `{comparison.signatures['bleu']}`",
              f"chrF: `{comparison.signatures['chrf']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "en-pt.yaml")
    ap.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget each")
    ap.add_argument("--seeds", default="nmt=2,onmt=2,joey=1",
                    help="runs per toolkit, in the order they train (default: nmt=2,onmt=2,joey=1)")
    ap.add_argument("--recipe", choices=RECIPES, default="nmt",
                    help="the peers' recipe: nmt's knobs (default) or their own defaults")
    ap.add_argument("--points", type=int, default=20, help="peer checkpoints in the budget")
    ap.add_argument("--calibrate", type=float, default=45.0,
                    help="seconds of untimed peer training that measure its speed")
    ap.add_argument("--peer-dev", type=int, default=100,
                    help="validation sentences the peers decode during training (Joey NMT does)")
    ap.add_argument("--test-sentences", type=int, default=0,
                    help="the first N test pairs only (default: the whole test split)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="an override of nmt's config")
    ap.add_argument("--reuse", action="store_true",
                    help="score the runs of the race in --out/race.json again instead of "
                         "training them; train only the runs it lacks")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "race")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "race")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        runs = seeds(args.seeds)
    except ValueError as err:
        ap.error(f"--seeds: {err} is not TOOLKIT=N with a toolkit of {', '.join(NAMES)}")
    peers = {kind for kind, _ in runs if kind != "nmt"}
    missing = [k for k in sorted(peers) if not (VENVS / k / "bin" / "python").exists()]
    if missing:
        sys.exit(f"race: no {', '.join(missing)} in {VENVS}: run {PEERS / 'setup-peers.sh'}")
    args.cfg = cfg = load_config(args.config, args.overrides)
    args.max_pieces, args.rates = cfg.data.max_pieces, {}
    args.prepared = prepared = prepare(cfg.data)
    test = test_pairs(prepared, args.test_sentences or 10 ** 9, cfg.data.max_pieces)
    args.test_size = len(test[1])
    n_valid = cfg.train.valid_max_sentences or 10 ** 9
    valid_refs = prepared.lines("valid", prepared.tgt_lang)[:n_valid]
    data = args.runs / "pieces"
    export_pieces(prepared, data, test)
    for lang in ("en", "pt"):  # checkpoints are scored on the sentences nmt validates on;
        dev = data / f"dev.{lang}"  # the peers' own validations, which only pick their best
        lines = dev.read_text(encoding="utf-8").splitlines(True)  # checkpoint, on fewer
        (data / f"curve.{lang}").write_text("".join(lines[:n_valid]), encoding="utf-8")
        dev.write_text("".join(lines[:args.peer_dev]), encoding="utf-8")
    earlier = reusable(args, test) if args.reuse else {}
    scorers = []  # every run trains first, one after the other; then each is scored
    for kind, seed in runs:
        if (kind, seed) in earlier:
            scorers.append((earlier[kind, seed], None))
            continue
        try:
            with Load() as load:
                began = time.strftime("%Y-%m-%d %H:%M")
                scorers.append((race_nmt(args, seed, prepared, test) if kind == "nmt" else
                                race_peer(kind, seed, data, args, prepared, valid_refs, test),
                                (load, began)))
        except (RuntimeError, subprocess.CalledProcessError) as err:  # the others still count
            log.error("%s seed %d: %s", kind, seed, err)
    entries = []
    for scorer, trained in scorers:
        try:
            entries.append(scorer())
            if trained is not None:
                entries[-1].load, entries[-1].trained = trained[0].mean(), trained[1]
        except (RuntimeError, subprocess.CalledProcessError) as err:
            log.error("scoring: %s", err)
    if not entries:
        sys.exit("race: no run finished")
    comparison = paired_bootstrap([e.hypotheses for e in entries], test[1], ("bleu", "chrf"))
    for e, (bleu, chrf) in zip(entries, comparison.systems):
        e.bleu, e.chrf = bleu.score, chrf.score
    args.out.mkdir(parents=True, exist_ok=True)
    report = table(entries, comparison, args.minutes, len(test[1]))
    (args.out / "race.md").write_text(report, encoding="utf-8")
    (args.out / "race.json").write_text(json.dumps(
        {"minutes": args.minutes, "config": str(args.config), "overrides": args.overrides,
         "recipe": args.recipe, "rates": args.rates, "signatures": comparison.signatures,
         "entries": [{k: v for k, v in asdict(e).items() if k != "hypotheses"}
                     for e in entries]}, indent=1) + "\n", encoding="utf-8")
    bleu_over_time({e.label: [(m, b) for m, _, b in e.curve] for e in entries},
                   args.out / "race.png", title=f"Validation BLEU (greedy) against minutes "
                   f"after the first update, {args.minutes:g} each")
    sys.stdout.write(report)
    log.info("wrote %s/{race.md,race.json,race.png}", args.out)


if __name__ == "__main__":
    main()

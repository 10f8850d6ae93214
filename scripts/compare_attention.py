"""Trains every attention variant with the same budget and compares them on one test split:
the experiment of Bahdanau et al. (2014, Fig. 2), where a fixed-length context vector forgets
long sentences and attention does not.

    python scripts/compare_attention.py                     # short budget: under an hour on CPU
    python scripts/compare_attention.py --steps 20000 --out docs/compare-gpu   # on a GPU
    python scripts/compare_attention.py --reuse             # re-evaluate the trained runs
    python scripts/compare_attention.py --variants none,global-concat --minutes 60 \
        --set train.schedule=cosine --set train.threads=1   # a budget with its own schedule

Writes to --out: results.md (variant, parameters, BLEU, chrF, train tokens/s, translate
sentences/s), results.json, bleu-by-length.png and attention.png (one long sentence of our
own, seen by every variant). The test split is the one `nmt train` holds out. Because most of
its sentences are short, a second set, `joined`, concatenates every three consecutive test
pairs into one (sources with sources, references with references) to reach the lengths where a
fixed-length vector should fail; its BLEU is reported apart and the by-length plot covers both.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nmt.config import Config, apply_overrides, from_dict, read_yaml
from nmt.evaluation.evaluate import evaluate, read_test_set
from nmt.evaluation.metrics import corpus_scores
from nmt.evaluation.plots import attention_grid, bleu_by_length
from nmt.inference.explain import attention_record
from nmt.inference.translator import Translator
from nmt.model.seq2seq import count_parameters
from nmt.train import train

log = logging.getLogger("compare")

# name -> model.attention settings (the rest comes from the base config)
VARIANTS: dict[str, dict[str, str]] = {
    "none": {"type": "none"},
    "global-concat-bahdanau": {"type": "global", "score": "additive", "wiring": "bahdanau"},
    "global-concat": {"type": "global", "score": "additive"},
    "global-concat-coverage": {"type": "global", "score": "additive", "coverage": "true"},
    "global-dot": {"type": "global", "score": "dot"},
    "global-general": {"type": "global", "score": "general"},
    "local-m": {"type": "local-m", "score": "general"},
    "local-p": {"type": "local-p", "score": "general"},
    "hard": {"type": "hard", "score": "general"},
}
BUCKETS = ((1, 10), (11, 20), (21, 30), (31, 40), (41, 50), (51, None))
METRICS = ("bleu", "chrf")
# The heatmaps' sentence: long, ordinary, and not from any corpus.
EXAMPLE = ("When I came home last night, the children had already eaten their dinner and were "
           "watching a film with their grandmother in the living room.")


@dataclass
class Outcome:
    variant: str
    parameters: int
    steps: int
    train_tokens_per_s: float
    bleu: float
    chrf: float
    joined_bleu: float
    sentences_per_s: float
    by_length: list[tuple[str, float, int]] = field(default_factory=list)  # (bucket, BLEU, n)


def variant_config(base: dict, name: str, budget: list[str]) -> Config:
    settings = [f"model.attention.{k}={v}" for k, v in VARIANTS[name].items()]
    return from_dict(apply_overrides(base, [f"name=compare-{name}", *settings, *budget]))


def joined(sources: list[str], refs: list[str], n: int = 3) -> tuple[list[str], list[str]]:
    """Every `n` consecutive pairs as one long pair."""
    k = len(sources) // n * n
    return ([" ".join(sources[i:i + n]) for i in range(0, k, n)],
            [" ".join(refs[i:i + n]) for i in range(0, k, n)])


def buckets(sources: list[str], hyps: list[str], refs: list[str]) -> list[tuple[str, float, int]]:
    out = []
    for lo, hi in BUCKETS:
        idx = [i for i, s in enumerate(sources) if lo <= len(s.split()) <= (hi or 10**9)]
        if len(idx) >= 10:
            (bleu,) = corpus_scores([hyps[i] for i in idx], [refs[i] for i in idx], ("bleu",))
            out.append((f"{lo}+" if hi is None else f"{lo}-{hi}", bleu.value, len(idx)))
    return out


def train_tokens_per_s(run_dir: Path) -> tuple[int, float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return int(last["step"]), float(last["tgt_tokens_per_s"])


def assess(name: str, run_dir: Path, beam: int) -> tuple[Outcome, Translator]:
    translator = Translator.from_checkpoint(run_dir / "best.pt")
    sources, refs = read_test_set(run_dir / "test.en", run_dir / "test.pt", None)
    test = evaluate(translator, sources, refs, beam, METRICS, run_dir / "compare.test.hyp.txt",
                    name, progress=False)
    long_src, long_refs = joined(sources, refs)
    long = evaluate(translator, long_src, long_refs, beam, ("bleu",),
                    run_dir / "compare.joined.hyp.txt", name, progress=False)
    hyps = Path(test.hypotheses).read_text(encoding="utf-8").splitlines()
    long_hyps = Path(long.hypotheses).read_text(encoding="utf-8").splitlines()
    steps, tok_s = train_tokens_per_s(run_dir)
    outcome = Outcome(name, count_parameters(translator.model), steps, tok_s,
                      test.scores[0].value, test.scores[1].value, long.scores[0].value,
                      test.sentences_per_s,
                      buckets(sources + long_src, hyps + long_hyps, refs + long_refs))
    log.info("%s: BLEU %.2f chrF %.2f joined BLEU %.2f", name, outcome.bleu, outcome.chrf,
             outcome.joined_bleu)
    return outcome, translator


def table(outcomes: list[Outcome]) -> str:
    lines = ["| variant | parameters | steps | BLEU | chrF | joined BLEU | train tgt tok/s "
             "| translate sent/s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for o in outcomes:
        lines.append(f"| {o.variant} | {o.parameters:,} | {o.steps:,} | {o.bleu:.2f} "
                     f"| {o.chrf:.2f} | {o.joined_bleu:.2f} | {o.train_tokens_per_s:,.0f} "
                     f"| {o.sentences_per_s:.1f} |")
    labels = [b for b, _, _ in outcomes[0].by_length] if outcomes else []
    lines += ["", "BLEU by source length (words; test split and joined set together):", "",
              "| variant | " + " | ".join(labels) + " |",
              "|---|" + "---:|" * len(labels)]
    for o in outcomes:
        lines.append(f"| {o.variant} | " + " | ".join(f"{b:.2f}" for _, b, _ in o.by_length)
                     + " |")
    if outcomes:
        lines.append("| sentences | " + " | ".join(str(n) for _, _, n in outcomes[0].by_length)
                     + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/compare.yaml"))
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated subset of: " + ", ".join(VARIANTS))
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="updates per variant (default: the config's)")
    budget.add_argument("--minutes", type=float, help="training minutes per variant instead")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every variant, e.g. train.schedule=cosine")
    ap.add_argument("--runs", type=Path, default=Path("runs/compare"))
    ap.add_argument("--out", type=Path, default=Path("docs/compare"))
    ap.add_argument("--example", default=EXAMPLE, help="the sentence of the attention heatmaps")
    ap.add_argument("--reuse", action="store_true", help="evaluate existing runs, no training")
    ap.add_argument("--plots-only", action="store_true",
                    help="redraw the figures and results.md from --out/results.json and the runs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    base = read_yaml(args.config)
    overrides = []
    if args.steps is not None:
        overrides = [f"train.max_steps={args.steps}", "train.max_minutes=0"]
    elif args.minutes is not None:
        overrides = [f"train.max_minutes={args.minutes}", "train.max_steps=0"]
    overrides += args.overrides
    args.out.mkdir(parents=True, exist_ok=True)
    saved = {}
    if args.plots_only:
        saved = {o["variant"]: Outcome(**o) for o in
                 json.loads((args.out / "results.json").read_text(encoding="utf-8"))}
        names = [n for n in names if n in saved]
    outcomes, panels = [], []
    for name in names:
        cfg = variant_config(base, name, overrides)
        run_dir = args.runs / cfg.name
        if name in saved:
            outcome, translator = saved[name], Translator.from_checkpoint(run_dir / "best.pt")
        else:
            if not args.reuse:
                run_dir = train(cfg, runs_dir=args.runs, overwrite=True)
            outcome, translator = assess(name, run_dir, cfg.decode.beam)
        outcomes.append(outcome)
        tr = translator.translate([args.example], beam=1, keep_attention=True)[0]
        record = attention_record(translator, tr)
        panels.append((f"{name} (BLEU {outcome.bleu:.1f})", record["word_attention"],
                       record["source_words"], record["target_words"]))
    (args.out / "results.md").write_text(table(outcomes), encoding="utf-8")
    if not saved:
        (args.out / "results.json").write_text(
            json.dumps([o.__dict__ for o in outcomes], indent=1) + "\n", encoding="utf-8")
    bleu_by_length({o.variant: [(b, s) for b, s, _ in o.by_length] for o in outcomes},
                   args.out / "bleu-by-length.png",
                   title="BLEU by source length (test split + joined test pairs)")
    attention_grid(panels, args.out / "attention.png")
    sys.stdout.write(table(outcomes))
    log.info("wrote %s/{results.md,results.json,bleu-by-length.png,attention.png}", args.out)


if __name__ == "__main__":
    main()

"""Levers of quality per CPU-hour: variants of a config trained for the same wall-clock minutes,
side by side, and compared on one split by paired bootstrap.

    python scripts/levers.py --minutes 15                       # every lever, validation split
    python scripts/levers.py --levers baseline,cosine --minutes 60 --split test
    python scripts/levers.py --levers "" --variant previous:train.schedule=plateau \
        --variant default: --minutes 60 --split test      # two configs of your own

Each variant is `--config` (default configs/en-pt.yaml) with a few `--set` overrides (LEVERS,
or `--variant NAME:KEY=VALUE,...`). `--jobs` variants train at a time, each on cores / jobs
threads, so that the ones beside each other share the machine alike; every variant gets
`train.max_minutes` = `--minutes` (its clock counts training and validation). Then each
variant's best checkpoint (and its `averaged.pt`, where `train.average_last` made one)
translates the split (validation by default: tune there, report the test split once per
candidate kept) with the config's beam, and the systems are compared with the first one by
paired bootstrap (sacrebleu's). Per corpus of the config, BLEU is also reported on the split's
pairs that came from it.

Writes to --out: levers.md (the table) and levers.json; prints the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nmt.config import apply_overrides, from_dict, read_yaml
from nmt.data.prepare import prepare
from nmt.evaluation.evaluate import evaluate
from nmt.evaluation.metrics import corpus_scores
from nmt.evaluation.significance import paired_bootstrap
from nmt.inference.translator import Translator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_attention import train_tokens_per_s  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("levers")

# name -> overrides of the base config
LEVERS: dict[str, list[str]] = {
    "baseline": [],
    "plateau": ["train.schedule=plateau", "train.decay_fraction=1.0"],
    "cosine": ["train.schedule=cosine", "train.decay_fraction=1.0"],
    "lr0.003": ["train.lr=0.003"],
    "tied": ["model.emb_size=512", "model.tie_embeddings=true"],
    "dropout0.1": ["model.dropout=0.1"],
    "dropout0.3": ["model.dropout=0.3"],
    "ls0.2": ["train.label_smoothing=0.2"],
    "sampling": ["data.sampling_alpha=0.1", "data.sampling_nbest=64"],
    "batch4000": ["train.batch_tokens=4000", "train.lr=0.003"],
    "enc2": ["model.enc_layers=2"],
    "hidden384": ["model.hidden_size=384", "model.decoder_size=768"],
    "layernorm": ["model.layer_norm=true"],
    "heads4": ["model.attention.heads=4"],
}


@dataclass
class Outcome:
    name: str
    overrides: list[str]
    checkpoint: str
    updates: int
    tgt_tokens_per_s: float
    bleu: float
    chrf: float
    ci: float = 0.0  # half-width of BLEU's 95% bootstrap interval
    p_value: float | None = None  # against the first system
    by_corpus: dict[str, float] = field(default_factory=dict)


def shown(path: Path) -> Path:
    """`path` relative to the repository where it lies in it (for the committed tables)."""
    path = path.absolute()  # not resolve(): best.pt is a link, and its name is what counts
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def parse_variants(args: argparse.Namespace) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in filter(None, args.levers.split(",")):
        if name not in LEVERS:
            sys.exit(f"--levers: unknown lever {name!r} (valid: {', '.join(LEVERS)})")
        out[name] = LEVERS[name]
    for spec in args.variant:
        name, _, sets = spec.partition(":")
        out[name] = [s for s in sets.split(",") if s]
    if not out:
        sys.exit("nothing to train: give --levers and/or --variant")
    return out


def train_all(variants: dict[str, list[str]], args: argparse.Namespace) -> None:
    """Trains the variants `--jobs` at a time, each in its own process."""
    if not variants:
        return
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    args.runs.mkdir(parents=True, exist_ok=True)

    def train_one(name: str, sets: list[str]) -> int:
        cmd = [sys.executable, "-m", "nmt", "train", "--config", str(args.config),
               "--runs-dir", str(args.runs), "--overwrite", "--set", f"name={name}",
               "--set", f"train.max_minutes={args.minutes}",
               "--set", f"train.threads={threads}", "--set", "train.max_steps=0"]
        for s in args.overrides + sets:
            cmd += ["--set", s]
        log.info("training %s: %s", name, " ".join(sets) or "(the config as it is)")
        with (args.runs / f"{name}.log").open("w") as logf:
            code = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT).returncode
        log.info("%s: done (exit %d)", name, code)
        return code

    with ThreadPoolExecutor(args.jobs) as pool:
        codes = dict(zip(variants, pool.map(train_one, variants, variants.values())))
    failed = [f"{name} (exit {code}; see {args.runs / (name + '.log')})"
              for name, code in codes.items() if code]
    if failed:
        sys.exit("training failed: " + ", ".join(failed))


def split_corpora(config: Path, overrides: list[str], split: str
                  ) -> tuple[list[str], list[str], list[int], list[str]]:
    """The split's sources, references, each pair's corpus index (-1: unknown) and the corpus
    names, from the base config's prepared data."""
    cfg = from_dict(apply_overrides(read_yaml(config), overrides))
    prepared = prepare(cfg.data, progress=False, origins=True)
    sources = prepared.lines(split, prepared.src_lang)
    refs = prepared.lines(split, prepared.tgt_lang)
    corpus = [-1] * len(sources)
    ids = np.load(prepared.ids(split))
    for line, c in zip(ids["line"], ids["corpus"]):
        corpus[int(line)] = int(c)
    names = [Path(c.path).name.split(".")[0] for c in cfg.data.corpora]
    return sources, refs, corpus, names


def assess(variants: dict[str, list[str]], args: argparse.Namespace
           ) -> tuple[list[Outcome], str]:
    """Each variant's outcome, and the bootstrap's BLEU signature ("" for one system)."""
    sources, refs, corpus, names = split_corpora(args.config, args.overrides, args.split)
    outcomes, outputs, signature = [], [], ""
    for name, sets in variants.items():
        run = args.runs / name
        updates, tok_s = train_tokens_per_s(run)
        for ckpt in ("best.pt", "averaged.pt"):
            if not (run / ckpt).exists():
                continue
            translator = Translator.from_checkpoint(run / ckpt)
            r = evaluate(translator, sources, refs, translator.decode.beam, ("bleu", "chrf"),
                         run / f"{args.split}.hyp.{ckpt}.txt", str(run / ckpt), progress=False)
            label = name if ckpt == "best.pt" else f"{name} (averaged)"
            slices = {}
            for i, corpus_name in enumerate(names):
                idx = [k for k, c in enumerate(corpus) if c == i]
                if idx:
                    (bleu,) = corpus_scores([r.outputs[k] for k in idx], [refs[k] for k in idx],
                                            ("bleu",))
                    slices[corpus_name] = round(bleu.value, 2)
            outcomes.append(Outcome(label, sets, str(shown(run / ckpt)), updates, tok_s,
                                    r.scores[0].value, r.scores[1].value, by_corpus=slices))
            outputs.append(r.outputs)
            log.info("%s: BLEU %.2f chrF %.2f %s", label, r.scores[0].value, r.scores[1].value,
                     slices)
    if len(outputs) > 1:
        comparison = paired_bootstrap(outputs, refs, ("bleu",))
        for o, (bleu,) in zip(outcomes, comparison.systems):
            o.ci, o.p_value = bleu.ci, bleu.p_value
        signature = comparison.signatures["bleu"]
    return outcomes, signature


def table(outcomes: list[Outcome], signature: str, args: argparse.Namespace) -> str:
    corpora = list(outcomes[0].by_corpus)
    head = ["variant", "overrides", "updates", "train tgt tok/s", f"{args.split} BLEU (95% CI)",
            "chrF", "p vs first", *corpora]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for o in outcomes:
        p = "" if o.p_value is None else f"{o.p_value:.3f}"
        cells = [o.name, " ".join(f"`{s}`" for s in o.overrides) or "(config)",
                 f"{o.updates:,}", f"{o.tgt_tokens_per_s:,.0f}", f"{o.bleu:.2f} ± {o.ci:.2f}",
                 f"{o.chrf:.2f}", p, *(f"{o.by_corpus.get(c, 0):.2f}" for c in corpora)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"`{shown(args.config)}`, {args.minutes:g} minutes each, {args.jobs} at a time; "
                 f"{args.split} split, beam of the config; BLEU `{signature}`.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs/en-pt.yaml")
    ap.add_argument("--levers", default=",".join(LEVERS),
                    help=f"comma-separated, from: {', '.join(LEVERS)}")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="a variant of your own (repeat for more)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for every variant (e.g. train.valid_every=200)")
    ap.add_argument("--minutes", type=float, default=15.0, help="training minutes per variant")
    ap.add_argument("--jobs", type=int, default=2, help="variants trained at a time")
    ap.add_argument("--split", choices=("valid", "test"), default="valid")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs/levers")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/levers")
    ap.add_argument("--reuse", action="store_true",
                    help="assess the variants that have a run already instead of training them")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    variants = parse_variants(args)
    train_all({name: sets for name, sets in variants.items()
               if not (args.reuse and (args.runs / name / "best.pt").exists())}, args)
    outcomes, signature = assess(variants, args)
    text = table(outcomes, signature, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "levers.md").write_text(text, encoding="utf-8")
    (args.out / "levers.json").write_text(json.dumps(
        {"config": str(shown(args.config)), "minutes": args.minutes, "jobs": args.jobs,
         "split": args.split, "signature": signature,
         "outcomes": [asdict(o) for o in outcomes]}, indent=1) + "\n", encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()

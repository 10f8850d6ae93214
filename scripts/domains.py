"""BLEU per corpus: several checkpoints translate one split of a config, and each corpus's share
of it is scored and compared with the first checkpoint by paired bootstrap (sacrebleu's). What
fine-tuning on one domain gains there, and what it forgets on the others.

    python scripts/domains.py --config configs/en-pt.yaml runs/en-pt runs/en-pt-chat

The split (test by default) is the one `--config` prepares, with the corpus each pair came from;
every checkpoint translates it with its own beam and precision. Writes domains.md and
domains.json to --out; prints the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from nmt.evaluation.significance import paired_bootstrap
from nmt.inference.translator import load_translator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from levers import shown, split_corpora  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("bleu", "chrf")
log = logging.getLogger("domains")


def translations(paths: list[Path], sources: list[str]) -> tuple[list[list[str]], str]:
    """Each checkpoint's translations of `sources`, and the target language."""
    outputs, target = [], ""
    for path in paths:
        translator = load_translator(path)
        target = translator.languages[1]
        log.info("%s: translating %d sentences, beam %d", path, len(sources),
                 translator.decode.beam)
        outputs.append([t.text for t in translator.translate(sources, progress=True)])
    return outputs, target


def compare(outputs: list[list[str]], refs: list[str], corpus: list[int], names: list[str],
            target: str) -> tuple[list[dict], str]:
    """One row per corpus (and one for the whole split): its pair count and, per checkpoint,
    BLEU with the half-width of its 95% bootstrap interval and p against the first, and chrF."""
    slices = [("all", list(range(len(refs))))]
    slices += [(name, [k for k, c in enumerate(corpus) if c == i]) for i, name in enumerate(names)]
    rows, signature = [], ""
    for name, idx in slices:
        if not idx:
            continue
        systems = [[hyps[k] for k in idx] for hyps in outputs]
        ref = [refs[k] for k in idx]
        result = paired_bootstrap(systems, ref, METRICS, target_lang=target)
        signature = result.signatures["bleu"]
        scores = [{m: {"score": i.score, "ci": i.ci, "p": i.p_value}
                   for m, i in zip(METRICS, system)} for system in result.systems]
        rows.append({"corpus": name, "pairs": len(idx), "systems": scores})
    return rows, signature


def table(rows: list[dict], labels: list[str], signature: str, split: str) -> str:
    head = ["corpus", "pairs"]
    for i, label in enumerate(labels):
        head += [f"{label} BLEU", f"{label} chrF"] + (["p"] if i else [])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        cells = [row["corpus"], f"{row['pairs']:,}"]
        for i, s in enumerate(row["systems"]):
            cells += [f"{s['bleu']['score']:.2f} ± {s['bleu']['ci']:.2f}",
                      f"{s['chrf']['score']:.2f}"]
            if i:
                cells.append(f"{s['bleu']['p']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"{split} split; each checkpoint's beam and precision; BLEU ± the half-width "
              f"of its 95% bootstrap interval; p: BLEU against {labels[0]} by paired bootstrap; "
              f"BLEU `{signature}`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", type=Path, nargs="+",
                    help="run directories or checkpoint files; the first is the baseline")
    ap.add_argument("--config", type=Path, default=ROOT / "configs/en-pt.yaml",
                    help="the config whose prepared split and corpora are scored")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--split", choices=("valid", "test"), default="test")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/domains")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    sources, refs, corpus, names = split_corpora(args.config, args.overrides, args.split)
    outputs, target = translations(args.checkpoints, sources)
    rows, signature = compare(outputs, refs, corpus, names, target)
    labels = [str(shown(p)) for p in args.checkpoints]
    text = table(rows, labels, signature, args.split)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "domains.md").write_text(text, encoding="utf-8")
    (args.out / "domains.json").write_text(json.dumps(
        {"config": str(shown(args.config)), "split": args.split, "checkpoints": labels,
         "signature": signature, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()

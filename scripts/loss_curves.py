"""Training loss per update of several runs, from their train.log, in one plot, and how far each
run's curve lies from the first's.

    python scripts/loss_curves.py runs/a runs/b runs/c --labels fp32,fp32-seed2,bf16 --out x.png

A logged loss is the mean over the updates since the last validation. Each run after the first
is summarised by the mean, mean absolute and largest difference from the first at the same
updates, after the first `--skip` updates: give a second seed of the first run's setting to see
how far curves lie apart by chance alone.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_LINE = re.compile(r"INFO step (\d+) loss ([0-9.]+) ")


def losses(run: Path) -> dict[int, float]:
    """{update: logged loss} of a run's train.log."""
    found = {}
    for line in (run / "train.log").read_text().splitlines():
        m = _LINE.search(line)
        if m:
            found[int(m.group(1))] = float(m.group(2))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--labels", help="comma-separated, one per run (default: folder names)")
    ap.add_argument("--skip", type=int, default=100, help="updates left out of the summary")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else [r.name for r in args.runs]
    curves = [losses(r) for r in args.runs]
    first = curves[0]
    steps = [s for s in sorted(first) if s > args.skip and all(s in c for c in curves)]
    print(f"updates {steps[0]}-{steps[-1]}, {len(steps)} log points")
    for label, curve in zip(labels[1:], curves[1:]):
        diffs = [curve[s] - first[s] for s in steps]
        print(f"{label} - {labels[0]}: mean {statistics.mean(diffs):+.4f}, mean |d| "
              f"{statistics.mean(abs(d) for d in diffs):.4f}, largest |d| "
              f"{max(abs(d) for d in diffs):.4f}")
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curve in zip(labels, curves):
        ax.plot(sorted(curve), [curve[s] for s in sorted(curve)], label=label, linewidth=1)
    ax.set_xlabel("update")
    ax.set_ylabel("training loss (per target token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

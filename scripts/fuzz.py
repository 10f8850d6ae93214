"""Fuzzing: runs the property-based tests of tests/test_properties.py (corpus readers, config
loader, tokenizer round trip) on many generated inputs and reports how many were tried and how
many broke a contract (an unexpected exception or a wrong result).

    python scripts/fuzz.py                  # 2,500 inputs per property, 10,000 in all
    python scripts/fuzz.py --examples 10000 # more
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = re.compile(r"- (\d+) passing, (\d+) failing, and (\d+) invalid test cases")
TEST = re.compile(r"^tests/test_properties.py::(\w+):")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=2500, help="generated inputs per property")
    args = ap.parse_args()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_properties.py", "-q", "-p",
         "no:cacheprovider", "--hypothesis-profile", "fuzz", "--hypothesis-show-statistics"],
        cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "NMT_FUZZ_EXAMPLES": str(args.examples)})
    counts: dict[str, list[int]] = {}
    name = None
    for line in proc.stdout.splitlines():
        if m := TEST.match(line):
            name = m.group(1)
        elif (m := CASES.search(line)) and name:
            totals = counts.setdefault(name, [0, 0, 0])
            for i in range(3):
                totals[i] += int(m.group(i + 1))
    print(f"{'property':58} {'inputs':>8} {'failing':>8}")
    for name, (passing, failing, _) in counts.items():
        print(f"{name:58} {passing + failing:>8,} {failing:>8,}")
    tried = sum(p + f for p, f, _ in counts.values())
    failed = sum(f for _, f, _ in counts.values())
    print(f"{'total':58} {tried:>8,} {failed:>8,}   ({time.perf_counter() - start:.0f} s)")
    if proc.returncode != 0 or not counts:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

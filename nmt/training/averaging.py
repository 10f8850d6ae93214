"""Checkpoint averaging: one checkpoint whose float parameters are the element-wise mean of
several checkpoints' of one model, as Vaswani et al. (2017, §6.1) report their base models: "a
single model obtained by averaging the last 5 checkpoints". The checkpoints should be nearby
points of one training run; those of different models have nothing to average.

The checkpoints must share the model config, the tokenizer and the seed (`force` lets those
differ, never the parameters' names and shapes); their other train and decode settings may
differ (a resumed run may have changed them), and the newest checkpoint's are kept. The steps
averaged are logged on one line, a warning where they are not consecutive validations (the
`step-N.pt` of a run without `train.average_last` are its best ones, possibly far apart). The
result is a plain checkpoint without training state: `nmt translate` and `nmt eval` load it,
`nmt train --resume` does not.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from nmt import checkpoint
from nmt.errors import UsageError

log = logging.getLogger(__name__)

AVERAGED = "averaged.pt"  # in the run directory, beside best.pt
_STEP_FILE = re.compile(r"step-(\d+)\.pt")


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's step-N.pt files as (N, path), oldest first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("step-*.pt")
             if (m := _STEP_FILE.fullmatch(p.name))]
    return sorted(found)


def select(run_dir: Path, last: int = 0, best: int = 0) -> list[Path]:
    """The `last` newest or the `best` highest-scoring step-N.pt files of a run directory."""
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a run directory (--last and --best choose among its "
                         f"step-N.pt checkpoints)")
    found = step_checkpoints(run_dir)
    want, option = (last, "--last") if last else (best, "--best")
    if len(found) < want:
        raise UsageError(f"{run_dir} holds {len(found)} step-N.pt checkpoint(s), fewer than "
                         f"{option} {want} (keep more in training with train.average_last or "
                         f"train.keep_best)")
    if last:
        return [path for _, path in found[-last:]]
    scored = [(checkpoint.load(path).get("score"), step, path) for step, path in found]
    unscored = [path.name for score, _, path in scored if score is None]
    if unscored:
        raise UsageError(f"{run_dir}: {unscored[0]} holds no validation score, so --best cannot "
                         f"rank it (use --last)")
    scored.sort(key=lambda x: (-x[0], x[1]))
    return [path for _, _, path in scored[:best]]


def _difference(a: Any, b: Any, path: str) -> str | None:
    """The first dotted key whose values differ between two plain-data configs, as text."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _difference(a.get(key), b.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {b!r} against {a!r}"


def _what_differs(first: dict, other: dict) -> str | None:
    """The first of model config, tokenizer and seed that differs between two checkpoints."""
    differs = _difference(first["config"].get("model"), other["config"].get("model"), "model")
    if differs:
        return f"another model config ({differs})"
    if first["tokenizer"] != other["tokenizer"]:
        return "another tokenizer (SentencePiece models differ)"
    seeds = [data["config"].get("train", {}).get("seed") for data in (first, other)]
    if seeds[0] != seeds[1]:
        return f"another seed (train.seed: {seeds[1]!r} against {seeds[0]!r})"
    return None


def _check_same_model(first: dict, other: dict, names: tuple[Path, Path], force: bool) -> None:
    """Refuses to average checkpoints of different models or runs (a one-line UsageError);
    `force` lets the config, tokenizer and seed differ (logged), never the parameters' shapes."""
    where = f"{names[1]} does not match {names[0]}"
    found = _what_differs(first, other)
    if found and not force:
        raise UsageError(f"{where}: {found}; --force averages them anyway")
    a, b = first["model"], other["model"]
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise UsageError(f"{where}: other parameter names or shapes")
    if found:
        log.warning("%s: %s (averaged anyway: --force)", where, found)


def average(paths: list[Path], force: bool = False) -> dict:
    """The checkpoint data whose float tensors are the mean of those of `paths` (summed in
    float64, so the mean of two is exact to the stored precision); other tensors, the config and
    the decode settings come from the newest (highest step) checkpoint. `force`: see
    `_check_same_model`."""
    if not paths:
        raise UsageError("no checkpoint to average")
    first = newest = checkpoint.load(paths[0])
    sums = {k: v.double() for k, v in first["model"].items() if v.is_floating_point()}
    sources = [{"file": str(paths[0]), "step": first.get("step")}]
    for path in paths[1:]:
        data = checkpoint.load(path)
        _check_same_model(first, data, (paths[0], path), force)
        for k in sums:
            sums[k] += data["model"][k].double()
        sources.append({"file": str(path), "step": data.get("step")})
        if (data.get("step") or 0) >= (newest.get("step") or 0):
            newest = data
    model = {k: (sums[k] / len(paths)).to(v.dtype) if k in sums else v.clone()
             for k, v in newest["model"].items()}
    return {"config": newest["config"], "tokenizer": newest["tokenizer"], "model": model,
            "step": newest.get("step"), "score": None, "averaged": sources}


def write_average(paths: list[Path], output: Path, force: bool = False) -> Path:
    """Averages `paths` into `output` (written atomically); returns `output`."""
    inputs = {p.resolve() for p in paths}
    if output.resolve() in inputs:
        raise UsageError(f"--output {output} is one of the checkpoints being averaged")
    data = average(paths, force)
    checkpoint.save(output, data)
    steps = [s["step"] for s in data["averaged"]]
    every = data["config"].get("train", {}).get("valid_every")
    said = f"averaged {len(paths)} checkpoint(s) (steps {', '.join(map(str, steps))}) into {output}"
    if every and not consecutive(steps, every):
        log.warning("%s: not consecutive validations (one every %d updates), so far apart in "
                    "training (keep the last ones with train.average_last)", said, every)
    else:
        log.info("%s", said)
    return output


def consecutive(steps: list[int | None], every: int) -> bool:
    """Whether the steps are successive validations, `every` updates apart at most (a run's last
    validation may come sooner)."""
    known = sorted(s for s in steps if s is not None)
    return all(b - a <= every for a, b in zip(known, known[1:]))


def average_command(paths: list[Path], last: int, best: int, output: Path | None,
                    force: bool = False) -> Path:
    """`nmt average`: a run directory with --last/--best, or checkpoint files."""
    if last and best:
        raise UsageError("give --last K or --best K, not both")
    if not paths:
        raise UsageError("give a run directory (with --last K or --best K) or checkpoint files")
    dirs = [p for p in paths if p.is_dir()]
    if dirs and len(paths) > 1:
        raise UsageError(f"{dirs[0]} is a run directory: give one run directory, or only "
                         f"checkpoint files")
    if dirs:
        if not (last or best):
            raise UsageError(f"{dirs[0]}: with a run directory, give --last K or --best K")
        chosen = select(dirs[0], last, best)
        return write_average(chosen, output or dirs[0] / AVERAGED, force)
    if last or best:
        raise UsageError("--last and --best choose from a run directory, not from files")
    return write_average(paths, output or paths[0].parent / AVERAGED, force)

"""Self-describing checkpoints: atomic writes, safe loading, rotation of the best ones.

A checkpoint is a plain dict of tensors and plain data (never a pickled module), loaded with
`torch.load(weights_only=True)`:

    format, version      "nmt-checkpoint", CHECKPOINT_VERSION
    config               the resolved config as plain data
    tokenizer            {"src": bytes, "tgt": bytes} SentencePiece models
    model                state_dict
    step, score          update count and validation score when written
    resume               (last.pt only) optimizer, schedule, trainer progress and RNG states

Run directory: last.pt (resumable), step-N.pt for the best `keep_best` validations and the last
`average_last` ones, best.pt (a symlink to the best of them), averaged.pt (the mean of the last
`average_last`, nmt.training.averaging), config.yaml, spm.*.model, train.log, metrics.csv, and
for a fine-tuned run parent.json (nmt.training.finetune).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from nmt.errors import CheckpointError, NmtError

FORMAT = "nmt-checkpoint"
CHECKPOINT_VERSION = 2


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Calls write(file) on a temp file beside `path`, fsyncs it and renames it into place, so a
    crash leaves either the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:  # full disk, quota, I/O error: the old file stays as it was
        Path(tmp).unlink(missing_ok=True)
        raise NmtError(f"{path}: cannot write ({err.strerror or err})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: Path, data: dict[str, Any]) -> None:
    data = {"format": FORMAT, "version": CHECKPOINT_VERSION, **data}
    atomic_write(path, lambda f: torch.save(data, f))


def load(path: Path | str) -> dict[str, Any]:
    """Loads and checks a checkpoint; every failure is a one-line CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if not path.is_file():  # a FIFO would block, a device never end
        raise CheckpointError(f"{path}: not a regular file, expected a checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsafe content"
        raise CheckpointError(f"{path}: refused, not a plain nmt checkpoint ({first})") from None
    except Exception as err:  # garbage makes the unpickler raise KeyError, IndexError, ...
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({detail})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an nmt checkpoint")
    if data.get("version") == 1 and isinstance(data.get("model"), dict):
        data = _from_version_1(data)
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')} is not "
                              f"supported (this nmt reads version {CHECKPOINT_VERSION})")
    for key in ("config", "tokenizer", "model"):
        if key not in data:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    return data


_V1_SCORE = re.compile(r"^decoder\.attention\.(key_layer|query_layer|v)\.")


def _from_version_1(data: dict) -> dict:
    """Version 1 stored the decoder's recurrent weights as (in, 4H), version 2 as (4H, in), and
    early version-1 checkpoints kept the additive score's layers in the attention module. The
    weights are converted; the optimizer state is dropped, so the run cannot be resumed."""
    model = {}
    for k, v in data["model"].items():
        if k.startswith("decoder.recurrent."):
            v = v.t().contiguous()
        model[_V1_SCORE.sub(r"decoder.attention.score.\1.", k)] = v
    return {**{k: v for k, v in data.items() if k != "resume"}, "model": model,
            "version": CHECKPOINT_VERSION}


def weights_digest(model: dict[str, torch.Tensor]) -> str:
    """The sha256 of a state dict: each tensor's name, dtype, shape and bytes, by name (so the
    order the dict was built in does not count); equal digests, equal weights."""
    h = hashlib.sha256()
    for name in sorted(model):
        tensor = model[name].detach().cpu().contiguous()
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def set_best(run_dir: Path, target: Path) -> None:
    """Points run_dir/best.pt at `target` atomically."""
    tmp = run_dir / ".best.pt.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target.name, tmp)
    os.replace(tmp, run_dir / "best.pt")
    _fsync_dir(run_dir)


def rotate(run_dir: Path, kept: list[tuple[float, int]], keep: int,
           keep_last: int = 0) -> list[tuple[float, int]]:
    """Keeps the `keep` best (score, step) checkpoints (higher is better) and the `keep_last`
    newest; deletes the others. Returns those kept, best first."""
    kept = sorted(kept, key=lambda x: (-x[0], x[1]))
    newest = set(sorted(step for _, step in kept)[-keep_last:]) if keep_last else set()
    stay = [x for rank, x in enumerate(kept) if rank < keep or x[1] in newest]
    for score_step in kept:
        if score_step not in stay:
            (run_dir / f"step-{score_step[1]}.pt").unlink(missing_ok=True)
    return stay


def resolve(path: Path | str) -> Path:
    """A checkpoint file, or a run directory (its best.pt, else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).exists():
                return path / name
        raise CheckpointError(f"{path}: no best.pt or last.pt in this run directory")
    return path


def latest_run(runs_dir: Path = Path("runs")) -> Path:
    """The most recently modified run directory that holds a checkpoint."""
    runs = [d for d in runs_dir.glob("*") if d.is_dir()
            and ((d / "best.pt").exists() or (d / "last.pt").exists())] if runs_dir.is_dir() else []
    if not runs:
        raise CheckpointError(f"no trained run found in {runs_dir}/ (train one with `nmt train "
                              f"--config CONFIG`, or pass --checkpoint)")
    return max(runs, key=lambda d: max(f.stat().st_mtime for f in d.glob("*.pt")))

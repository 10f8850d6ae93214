"""Fine-tuning (`train.init_from`): a new run that starts from a trained model, its parent.

The parent gives the weights and the tokenizer (its SentencePiece models encode the new corpora,
nmt.data.prepare), and with `train.init_optimizer` Adam's moments; the step, the schedule, the
learning rate and the best scores start fresh, as in any new run. So the parent's model config
(dropout aside: it changes no weight), vocabulary settings and languages must be the config's.

The run directory records the parent in parent.json: `train.init_from` as given, the absolute
path of the checkpoint loaded, its step and the sha256 of its weights (`weights_digest`). A
resumed fine-tune continues from its own last.pt and never reads the parent again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt import checkpoint, languages
from nmt.config import Config, from_dict, to_dict
from nmt.data.tokenizer import Tokenizer
from nmt.errors import CheckpointError, ConfigError

RECORD = "parent.json"  # in the run directory
# data keys that describe the tokenizer, which comes from the parent
TOKENIZER_KEYS = ("vocab_size", "spm_type", "joint_vocab", "character_coverage")
FREE_MODEL_KEYS = ("model.dropout",)  # change no weight: a fine-tune may set its own
MOMENTS = ("exp_avg", "exp_avg_sq", "step")  # Adam's per-parameter state (step: its bias count)
FIXED_ON_RESUME = ("init_from", "init_optimizer")


@dataclass(frozen=True)
class Parent:
    """The checkpoint a fine-tune starts from."""

    given: str  # train.init_from as written
    path: Path  # the checkpoint file loaded, absolute, links resolved
    step: int | None  # its update count
    digest: str  # sha256 of its weights (nmt.checkpoint.weights_digest)
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    moments: dict[int, dict] | None  # Adam's state per parameter index, with init_optimizer

    def record(self) -> dict[str, Any]:
        """What parent.json holds."""
        return {"init_from": self.given, "path": str(self.path), "step": self.step,
                "weights_sha256": self.digest}


def load_parent(cfg: Config) -> Parent:
    """Loads and checks `cfg.train.init_from`: a missing path, or a parent of another model,
    vocabulary or language pair, is one ConfigError naming every difference."""
    given = cfg.train.init_from
    where = f"train.init_from {given}"
    if not Path(given).exists():
        raise ConfigError(["no such run directory or checkpoint file"], where)
    try:
        path = checkpoint.resolve(given)
    except CheckpointError:
        raise ConfigError(["no best.pt or last.pt in this run directory"], where) from None
    state = checkpoint.load(path)
    problems = mismatches(from_dict(state["config"], str(path)), cfg)
    if problems:
        raise ConfigError(problems, f"train.init_from {path}")
    moments = _moments(path, state) if cfg.train.init_optimizer else None
    return Parent(given, path.resolve(), state.get("step"),
                  checkpoint.weights_digest(state["model"]), state["model"],
                  Tokenizer(state["tokenizer"]["src"], state["tokenizer"]["tgt"]), moments)


def mismatches(parent: Config, cfg: Config) -> list[str]:
    """One line per key the parent (there) and `cfg` (here) must share but do not."""
    there, here = to_dict(parent), to_dict(cfg)
    problems = [f"{key} is {_plain(a)} there, {_plain(b)} here"
                for key, a, b in _differences(there["model"], here["model"], "model")
                if key not in FREE_MODEL_KEYS]
    problems += [f"data.{key} is {_plain(there['data'][key])} there, "
                 f"{_plain(here['data'][key])} here"
                 for key in ("src_lang", "tgt_lang") + TOKENIZER_KEYS
                 if not _same_data(key, there["data"][key], here["data"][key])]
    return problems


def _same_data(key: str, a: Any, b: Any) -> bool:
    return languages.same(a, b) if key in ("src_lang", "tgt_lang") else a == b


def _differences(a: dict, b: dict, prefix: str):
    for key in a:
        if isinstance(a[key], dict):
            yield from _differences(a[key], b[key], f"{prefix}.{key}")
        elif a[key] != b[key]:
            yield f"{prefix}.{key}", a[key], b[key]


def _plain(value: Any) -> str:
    return json.dumps(value)


def _moments(path: Path, state: dict) -> dict[int, dict]:
    """Adam's state saved with these weights: in last.pt, or in the run's last.pt when it holds
    the same weights (a run whose last validation was its best)."""
    if "resume" in state:
        return state["resume"]["optimizer"]["state"]
    last = path.parent / "last.pt"
    if last.is_file() and last.resolve() != path.resolve():
        other = checkpoint.load(last)
        if "resume" in other and (checkpoint.weights_digest(other["model"])
                                  == checkpoint.weights_digest(state["model"])):
            return other["resume"]["optimizer"]["state"]
    raise ConfigError([f"holds no Adam moments for train.init_optimizer (a run's last.pt does: "
                       f"give train.init_from {last})"], f"train.init_from {path}")


def given_tokenizer(cfg: Config, parent: Parent | None,
                    resumed: dict | None) -> Tokenizer | None:
    """The SentencePiece models that encode the corpora where they are not trained on them: a
    fine-tune's parent's, which a resumed fine-tune (`resumed`: its last.pt) reads from its own
    checkpoint."""
    if parent:
        return parent.tokenizer
    if resumed is not None and cfg.train.init_from:
        return Tokenizer(resumed["tokenizer"]["src"], resumed["tokenizer"]["tgt"])
    return None


def load_weights(model: torch.nn.Module, parent: Parent) -> None:
    try:
        model.load_state_dict(parent.weights)
    except RuntimeError as err:  # torch names the tensor on the lines after its first
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        raise CheckpointError(f"{parent.path}: its weights do not fit the model "
                              f"({lines[-1] if lines else 'unknown'})") from None


def load_moments(optimizer: torch.optim.Optimizer, parent: Parent) -> None:
    """Puts the parent's Adam moments into a fresh optimizer, with the count its bias correction
    reads (so they are not taken for moments just begun); the learning rate and betas stay the
    config's, and the run's step starts at 0."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    moments = parent.moments or {}
    fits = set(moments) == set(range(len(params))) and all(
        moments[i]["exp_avg"].shape == p.shape for i, p in enumerate(params))
    if not fits:
        raise CheckpointError(f"{parent.path}: its Adam state does not fit the model's "
                              f"parameters")
    state = optimizer.state_dict()
    state["state"] = {i: {k: moments[i][k] for k in MOMENTS} for i in range(len(params))}
    optimizer.load_state_dict(state)


def write_record(run_dir: Path, parent: Parent) -> None:
    text = json.dumps(parent.record(), indent=1) + "\n"
    checkpoint.atomic_write(run_dir / RECORD, lambda f: f.write(text.encode()))


def refused_on_resume(before: Config, after: Config) -> list[str]:
    """A resumed run keeps the parent it started from."""
    return [f"train.{key}: cannot change when resuming, it stays "
            f"{_plain(getattr(before.train, key))} (the run started from it)"
            for key in FIXED_ON_RESUME
            if getattr(before.train, key) != getattr(after.train, key)]

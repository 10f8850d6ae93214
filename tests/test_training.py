"""Training: run directory, resume equals uninterrupted, signals, atomic checkpoints, CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer.main
from typer.testing import CliRunner

from nmt import checkpoint
from nmt.cli import app
from nmt.errors import NmtError
from nmt.train import resume_config, train

from conftest import ROOT, tiny_config

runner = CliRunner()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)["model"]


def test_run_directory_holds_everything(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "spm.en.model", "spm.pt.model", "train.log", "metrics.csv",
            "last.pt", "best.pt", "test.en", "test.pt"} <= names
    best = trained_run / "best.pt"
    assert best.is_symlink() and (trained_run / os.readlink(best)).exists()
    rows = (trained_run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,lr,train_loss,valid_loss")
    assert len(rows) == 1 + 3  # validations at steps 50, 100, 150
    data = checkpoint.load(trained_run / "last.pt")
    assert {"optimizer", "schedule", "progress", "rng"} <= set(data["resume"])
    assert "resume" not in checkpoint.load(best)


def test_resume_ends_with_the_same_weights(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=60, valid_every=20, valid_max_sentences=8)
    full = train(cfg, runs_dir=tmp_path / "a")
    half = train(tiny_config(tmp_path, max_steps=40, valid_every=20, valid_max_sentences=8),
                 runs_dir=tmp_path / "b")
    assert checkpoint.load(half / "last.pt")["step"] == 40
    resumed = train(resume_config(half, ["train.max_steps=60"]), resume=half)
    a, b = weights(full / "last.pt"), weights(resumed / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (resumed / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["20", "40", "60"]


def test_resume_refuses_model_changes(trained_run):
    from nmt.errors import ConfigError

    with pytest.raises(ConfigError, match="model: cannot change when resuming"):
        resume_config(trained_run, ["model.decoder_size=16"])


def test_sigint_saves_and_exits_130(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text((ROOT / "configs" / "tiny.yaml").read_text())
    cmd = [sys.executable, "-m", "nmt", "train", "-c", str(cfg), "--runs-dir",
           str(tmp_path / "runs"), "--set", "train.max_steps=100000",
           "--set", f"data.prepared_dir={tmp_path / 'prepared'}", "--set", f"data.dir={ROOT}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "runs" / "tiny" / "train.log"
    deadline = time.time() + 60
    while time.time() < deadline and "validation at step" not in (
            log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "--resume" in err.strip().splitlines()[-1]
    data = checkpoint.load(tmp_path / "runs" / "tiny" / "last.pt")
    assert data["step"] >= 50 and "resume" in data


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "x.pt"
    checkpoint.atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(NmtError, match=r"x.pt: cannot write \(No space left on device\)"):
        checkpoint.atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_checkpoint_load_errors(tmp_path):
    from nmt.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        checkpoint.load(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an nmt checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_cli_train_existing_run_needs_overwrite_or_resume(trained_run):
    cfg = trained_run / "config.yaml"
    result = runner.invoke(app, ["train", "-c", str(cfg), "--runs-dir", str(trained_run.parent)])
    assert result.exit_code == 2
    assert "already exists" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["train"], "give --config"),
    (["train", "--resume", "nowhere"], "no last.pt"),
    (["train", "-c", "configs/tiny.yaml", "--set", "train.lr=fast"], "train.lr: expected float"),
    (["train", "-c", "configs/tiny.yaml", "--set", "model.attention.score=cosine"],
     "model.attention.score"),
    (["train", "-c", "configs/tiny.yaml", "--device", "tpu"], "train.device"),
])
def test_cli_train_bad_arguments(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cli_train_cuda_without_gpu(tmp_path):
    result = runner.invoke(app, ["train", "-c", str(ROOT / "configs" / "tiny.yaml"),
                                 "--device", "cuda", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no CUDA GPU" in result.stderr


# What --help must show whatever else changes; the test also checks every other command and
# option the app registers, so these only keep the registry itself from losing one unnoticed.
COMMANDS = {(): {"train", "translate", "eval", "average", "data"},
            ("data",): {"download", "prepare"}}
OPTIONS = {
    (): {"--verbose", "--version"},
    ("train",): {"--config", "--set", "--resume", "--overwrite", "--runs-dir", "--device",
                 "--threads", "--precision", "--nproc"},
    ("translate",): {"--input", "--output", "--checkpoint", "--beam", "--n-best",
                     "--length-penalty", "--max-len-ratio", "--batch-size", "--attention",
                     "--explain", "--precision", "--int8", "--device"},
    ("eval",): {"--checkpoint", "--src", "--ref", "--tsv", "--beam", "--chrf", "--ter",
                "--metrics", "--by-length", "--output", "--plot", "--json", "--bootstrap",
                "--precision", "--int8", "--device"},
    ("average",): {"--last", "--best", "--output"},
    ("data", "download"): {"--dest", "--from", "--list"},
    ("data", "prepare"): {"--config", "--set"},
}
OPTION_NAME = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _command_tree(command, path: tuple[str, ...] = ()):
    """(path, click command) of `command` and every visible command under it."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        if not sub.hidden:
            yield from _command_tree(sub, (*path, name))


def _row(text: str, name: str, help_text: str) -> bool:
    """True if a line of `text` shows `name` (as a whole word) with the whole of `help_text`."""
    word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    return any(word.search(line) and help_text in line for line in text.splitlines())


def test_cli_help_documents_every_command():
    """Every command the app registers has a --help that names each of its options (short,
    long and --no- forms) and arguments beside their own help text, and names no option the
    command does not have; each group's --help lists its commands beside their summaries."""
    tree = dict(_command_tree(typer.main.get_command(app)))
    assert set(COMMANDS) | set(OPTIONS) <= set(tree)
    for path, command in tree.items():
        # wide enough that no help text is wrapped or cut; no colour codes
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400", "FORCE_COLOR": None})
        where = " ".join(["nmt", *path, "--help"])
        assert result.exit_code == 0, (where, result.stdout, result.stderr)
        text = ANSI.sub("", result.stdout)
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        options = {o for p in params if p.param_type_name == "option"
                   for o in (*p.opts, *p.secondary_opts)}
        required = OPTIONS.get(path, set())
        assert required <= options, (where, "not registered", required - options)
        shown = set(OPTION_NAME.findall(text))
        assert options <= shown, (where, "not shown", options - shown)
        unknown = shown - options - {"-h", "--help"}
        assert not unknown, (where, "no such option", unknown)
        for param in params:
            assert param.help, (where, param.name, "has no help")
            if param.param_type_name == "option":
                assert _row(text, param.opts[0], param.help), (where, param.opts[0])
            else:
                assert re.search(rf"\b{param.name}\b", usage, re.I), (where, usage)
                assert _row(text, param.name, param.help), (where, param.name)
        subcommands = {n: c for n, c in getattr(command, "commands", {}).items() if not c.hidden}
        assert COMMANDS.get(path, set()) <= set(subcommands), where
        for name, sub in subcommands.items():
            summary = sub.get_short_help_str(limit=1000)
            assert summary, (where, name, "has no help")
            assert _row(text, name, summary), (where, name, summary)


def test_non_finite_losses_skip_batches_then_stop(tmp_path, monkeypatch):
    from nmt.errors import TrainingError
    from nmt.model.seq2seq import Seq2Seq

    real_loss = Seq2Seq.loss
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        loss, n = real_loss(self, *args, **kwargs)
        if not self.training:  # validation stays finite
            return loss, n
        calls["n"] += 1
        return (loss * float("nan"), n) if calls["n"] > 20 else (loss, n)

    monkeypatch.setattr(Seq2Seq, "loss", flaky)
    cfg = tiny_config(tmp_path, max_steps=100, valid_every=10, valid_max_sentences=4,
                      max_bad_steps=3)
    with pytest.raises(TrainingError, match="not finite for 3 batches"):
        train(cfg, runs_dir=tmp_path / "runs")
    last = checkpoint.load(tmp_path / "runs" / "tiny" / "last.pt")
    assert last["step"] == 20
    assert all(torch.isfinite(v).all() for v in last["model"].values())

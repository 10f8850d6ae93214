"""Crash safety with real processes: SIGKILL at random moments leaves a loadable last.pt, and
--resume then ends bit-for-bit where an uninterrupted run ends; a second Ctrl-C quits at once
without leaving anything half-written."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from nmt import checkpoint, machine

from conftest import tiny_train_command, wait_for

STEPS = 100  # long enough that a kill within 1.5 s of step 10 lands mid-run


def command(tmp: Path, runs: Path, *extra: str) -> list[str]:
    return tiny_train_command(tmp, runs, "--set", f"train.max_steps={STEPS}", *extra)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    data = checkpoint.load(run / "last.pt")
    assert data["step"] == STEPS
    return data["model"]


def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(tmp_path):
    subprocess.run(command(tmp_path, tmp_path / "ref"), check=True, capture_output=True)
    reference = final_weights(tmp_path / "ref" / "tiny")
    rng = random.Random(7)
    for kill in range(3):
        runs = tmp_path / f"killed{kill}"
        run = runs / "tiny"
        proc = subprocess.Popen(command(tmp_path, runs), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        wait_for(run / "train.log", "validation at step 10", proc)
        wait_for(run / "last.pt", None, proc)  # the first save follows that validation's log
        time.sleep(rng.uniform(0.0, 1.5))  # anywhere in the next validations and saves
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
        saved = checkpoint.load(run / "last.pt")  # loadable, whatever the moment
        assert 10 <= saved["step"] < STEPS and "resume" in saved
        resumed = subprocess.run([sys.executable, "-m", "nmt", "train", "--resume", str(run)],
                                 capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        resumed_weights = final_weights(run)
        assert resumed_weights.keys() == reference.keys()
        assert all(torch.equal(resumed_weights[k], reference[k]) for k in reference)


def test_second_ctrl_c_quits_at_once_and_corrupts_nothing(tmp_path):
    run = tmp_path / "runs" / "tiny"
    proc = subprocess.Popen(command(tmp_path, tmp_path / "runs", "--set",
                                    "train.max_steps=100000"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(run / "train.log", "validation at step 20", proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    start = time.time()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.time() - start < 10
    assert "Traceback" not in err
    assert checkpoint.load(run / "last.pt")["step"] >= 20
    assert not list(run.glob(".*.tmp"))


def test_writes_only_where_it_is_told(tmp_path):
    """Training, translating and scoring write under --runs-dir and data.prepared_dir only
    (and the fused operators' build cache, $NMT_CACHE_DIR): not in the working directory, not in
    HOME."""
    import os

    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "NMT_CACHE_DIR": str(machine.cache_dir())}  # built once already, by this session
    run = tmp_path / "runs" / "tiny"
    subprocess.run(command(tmp_path, tmp_path / "runs", "--set", "train.max_steps=20"),
                   cwd=cwd, env=env, check=True, capture_output=True)
    for args in (["translate", "--checkpoint", str(run), "Hello."],
                 ["eval", "--checkpoint", str(run)]):
        subprocess.run([sys.executable, "-m", "nmt", *args], cwd=cwd, env=env, check=True,
                       capture_output=True)
    assert list(cwd.iterdir()) == []
    assert [p.relative_to(home) for p in home.rglob("*")] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "home", "prepared", "runs"]

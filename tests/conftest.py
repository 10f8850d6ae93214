"""Shared fixtures: small corpora written here, tiny configs, one tiny trained run per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from nmt import fast
from nmt.config import AttentionConfig, Config, ModelConfig, load_config
from nmt.data.prepare import Prepared, _file_digest
from nmt.data.tokenizer import PAD
from nmt.model.operations import PLAIN_OPERATIONS
from nmt.model.seq2seq import build_model

ROOT = Path(__file__).resolve().parents[1]
# Tests never read the user's corpora: session fixtures run before any function fixture.
os.environ.pop("NMT_DATA_DIR", None)
TINY_CORPUS = ROOT / "tests" / "data" / "tiny.en-pt.tsv"
# `--hypothesis-profile fuzz` (scripts/fuzz.py): many more generated inputs per property.
settings.register_profile("fuzz", max_examples=int(os.environ.get("NMT_FUZZ_EXAMPLES", "2500")))


# A test of a fast path itself; the suite's second run, the plain model (NMT_FAST=0), skips it.
fast_only = pytest.mark.skipif(not fast.enabled(), reason="tests a fast path: NMT_FAST=0")


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """Tests never read the user's corpora or change torch's global thread count for good."""
    monkeypatch.delenv("NMT_DATA_DIR", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread
    yield
    torch.set_num_threads(threads)


def tiny_config(tmp: Path, **train) -> Config:
    """configs/tiny.yaml with its corpus copied into `tmp` and outputs under `tmp`."""
    corpus = tmp / "corpus.tsv"
    if not corpus.exists():
        shutil.copyfile(TINY_CORPUS, corpus)
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    data = replace(cfg.data, dir=str(tmp), prepared_dir=str(tmp / "prepared"),
                   corpora=(replace(cfg.data.corpora[0], path="corpus.tsv"),))
    return replace(cfg, data=data, train=replace(cfg.train, **train))


def tiny_train_command(tmp: Path, runs: Path, *extra: str) -> list[str]:
    """`nmt train` of configs/tiny.yaml in a subprocess: one thread, validation every 10
    updates on 4 sentences, prepared data under `tmp`; `extra` options come last and win."""
    return [sys.executable, "-m", "nmt", "train", "-c", str(ROOT / "configs" / "tiny.yaml"),
            "--runs-dir", str(runs), "--set", "train.valid_every=10",
            "--set", "train.valid_max_sentences=4", "--set", "train.threads=1",
            "--set", f"data.dir={ROOT}", "--set", f"data.prepared_dir={tmp / 'prepared'}",
            *extra]


def drop_prepared_field(prepared: Prepared, field: str, split: str = "train") -> None:
    """Rewrites a prepared split's .npz without `field`, as an older nmt wrote it, with a
    manifest that still vouches for it."""
    npz = prepared.ids(split)
    with np.load(npz) as z:
        np.savez(npz, **{k: z[k] for k in z.files if k != field})
    manifest = json.loads((prepared.path / "manifest.json").read_text())
    manifest["files"][npz.name] = [npz.stat().st_size, _file_digest(npz)]
    (prepared.path / "manifest.json").write_text(json.dumps(manifest))


def wait_for(path: Path, text: str | None, proc, timeout: float = 120) -> None:
    """Waits until `path` contains `text` (None: until it exists); fails the test if `proc`
    ends first or the deadline passes."""
    what = "existed" if text is None else f"said {text!r}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and (text is None or text in path.read_text(errors="replace")):
            return
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {path.name} {what}")
        time.sleep(0.01 if text is None else 0.05)
    pytest.fail(f"{path.name} {'did not exist' if text is None else f'did not say {text!r}'} "
                f"within {timeout:g} s")


@dataclass
class ServerProcess:
    """`nmt serve` running in a process; its stderr is read as it comes into `lines`."""

    proc: subprocess.Popen
    url: str = ""
    lines: list[str] = field(default_factory=list)

    def stderr(self) -> str:
        return "".join(self.lines)


def serve_process(run: Path, *args: str, timeout: float = 120) -> ServerProcess:
    """Starts `nmt serve` on a free loopback port (--port 0), on one thread as the tests' tiny
    models run fastest, and waits until it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "nmt", "serve", "--checkpoint", str(run),
                             "--port", "0", "--threads", "1", *args], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = ServerProcess(proc)
    listening = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            server.lines.append(line)
            if "serving on http://" in line and not server.url:
                server.url = line.split("serving on ")[1].split()[0].rstrip("/")
                listening.set()
        listening.set()  # ended

    threading.Thread(target=read, daemon=True).start()
    if not listening.wait(timeout) or not server.url:
        proc.kill()
        pytest.fail(f"nmt serve did not start: {server.stderr()}")
    return server


def http_json(url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    """(status, JSON body) of a GET, or of a POST of `body`, with urllib (no proxy)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def small_model(score: str = "additive", dropout: float = 0.0, vocab: int = 30,
                kind: str = "global", wiring: str = "luong", window: int = 5,
                coverage: bool = False, heads: int = 1, operations=PLAIN_OPERATIONS, **kw):
    """A tiny untrained model with the given attention settings, computing through
    `operations` (the model's own formulas by default)."""
    attention = AttentionConfig(type=kind, score=score, wiring=wiring, size=16, window=window,
                                coverage=coverage, heads=heads)
    cfg = ModelConfig(emb_size=16, hidden_size=16, decoder_size=32, dropout=dropout,
                      attention=attention, **kw)
    return build_model(cfg, vocab, vocab, operations)


def variant_model(kind: str, **kw):
    """small_model of an attention type, or of "coverage" (global attention with coverage) or
    "multihead" (global additive attention with 4 heads)."""
    coverage, heads = kind == "coverage", 4 if kind == "multihead" else 1
    kind = "global" if kind in ("coverage", "multihead") else kind
    return small_model(kind=kind, coverage=coverage, heads=heads, window=2, **kw)


def padded_batch():
    """Three padded source sentences of lengths 7, 4 and 2."""
    torch.manual_seed(0)
    lengths = torch.tensor([7, 4, 2])
    src = torch.full((3, 7), PAD)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(4, 30, (int(n),))
    return src, lengths


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny model trained once for the inference and evaluation tests."""
    from nmt.train import train

    tmp = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(tmp, max_steps=150)
    return train(cfg, runs_dir=tmp / "runs")

"""Precision: the bf16 probe and its cache, bf16 training against fp32 (loss, gradients, fp32
master weights and optimizer state, exact resume), bf16 search against fp32 search, and how
`decode.precision` and `--precision` are resolved."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from nmt import checkpoint, cli, machine
from nmt import precision as numerics
from nmt.cli import app
from nmt.config import from_dict, to_dict
from nmt.data.batching import Dataset, collate, token_batches
from nmt.data.prepare import prepare
from nmt.errors import UsageError
from nmt.fast import int8
from nmt.inference import translator as translator_module
from nmt.inference.translator import load_translator
from nmt.model.seq2seq import build_model
from nmt.train import build_optimizer, resume_config, seed_everything, train
from nmt.training.precision import Precision

from conftest import tiny_config

runner = CliRunner()
SUPPORT = numerics.cpu_bf16()
needs_bf16 = pytest.mark.skipif(
    not SUPPORT.native, reason=f"bf16 path not tested: {SUPPORT.describe()}")
NO_BF16 = numerics.Bf16Support("", 0.0)
CPU = torch.device("cpu")


@pytest.fixture
def no_native_bf16(monkeypatch):
    """A CPU without native bfloat16 products, as the probe would find it."""
    monkeypatch.setattr(numerics, "cpu_bf16", lambda: NO_BF16)
    translator_module.search_precision.cache_clear()
    yield
    translator_module.search_precision.cache_clear()


# -- the probe -----------------------------------------------------------------------------

def test_the_probe_reads_the_flags_and_times_only_where_one_promises_bf16():
    assert numerics.probe(frozenset({"avx2", "fma"})) == NO_BF16
    assert not NO_BF16.native
    found = numerics.probe(frozenset({"avx2", "avx512_bf16"}))
    assert found.flag == "avx512_bf16" and found.speedup > 0
    arm = "Features\t: fp asimd bf16 i8mm\nCPU part\t: 0xd40\n"
    assert "bf16" in machine.cpu_flags(arm)
    assert numerics.Bf16Support("avx512_bf16", 0.4).native is False  # flagged, yet slow


def test_the_probe_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("NMT_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(numerics, "probe",
                        lambda flags: calls.append(flags) or numerics.Bf16Support("bf16", 2.5))
    numerics.cpu_bf16.cache_clear()
    try:
        assert numerics.cpu_bf16() == numerics.Bf16Support("bf16", 2.5)
        numerics.cpu_bf16.cache_clear()  # a new process: reads the cache, probes nothing
        assert numerics.cpu_bf16() == numerics.Bf16Support("bf16", 2.5)
        assert len(calls) == 1
        (cached,) = (tmp_path / "probes").iterdir()
        cached.write_text("{damaged")  # probed again, not a crash
        numerics.cpu_bf16.cache_clear()
        assert numerics.cpu_bf16().native and len(calls) == 2
        assert json.loads(cached.read_text()) == {"flag": "bf16", "speedup": 2.5}
    finally:
        numerics.cpu_bf16.cache_clear()


def test_auto_without_native_bf16_is_fp32_with_one_info_line(no_native_bf16, caplog):
    with caplog.at_level(logging.INFO, logger="nmt.precision"):
        assert Precision("auto", CPU).dtype is None
    lines = [r for r in caplog.records if r.name == "nmt.precision"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "train.precision: fp32" in lines[0].getMessage()
    assert "avx512_bf16" in lines[0].getMessage()


def test_bf16_forced_without_native_bf16_warns_and_trains(no_native_bf16, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="nmt.precision"):
        run = train(tiny_config(tmp_path, max_steps=6, valid_every=6, valid_max_sentences=4,
                                precision="bf16"), runs_dir=tmp_path / "runs")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "train.precision: bf16" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert checkpoint.load(run / "last.pt")["step"] == 6


def test_fp16_on_a_cpu_is_a_usage_error():
    with pytest.raises(UsageError, match="fp16.*CUDA"):
        Precision("fp16", CPU)


# -- bf16 training -------------------------------------------------------------------------

def _updates(cfg, dtype: torch.dtype | None, steps: int):
    """`steps` updates of the tiny model from one initial state, in `dtype` (None: fp32) ->
    (the model, its optimizer, the losses per target token, every gradient seen)."""
    prepared = prepare(cfg.data, progress=False)
    data = Dataset.load(prepared.ids("train"))
    tok = prepared.tokenizer()
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size).train()
    optimizer = build_optimizer(cfg.train, model)[0]
    batches = token_batches(data.widths, cfg.train.batch_tokens, cfg.train.seed, 0)
    losses, grads = [], []
    for i in range(steps):
        b = collate(data, batches[i % len(batches)])
        with numerics.autocast(dtype, CPU):
            loss, n = model.loss(b.src, b.src_len, b.tgt_in, b.tgt_out)
        (loss / n).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item() / n)
    return model, optimizer, losses, grads


@needs_bf16
def test_bf16_training_follows_fp32(tmp_path):
    """60 updates of the tiny model in bf16 and in fp32 from the same start, on the same
    batches: the loss falls alike (mean of the last 10 within 10% of fp32's, both far below
    the first), every gradient finite and float32, weights and Adam's moments float32."""
    cfg = tiny_config(tmp_path)
    _, _, fp32, _ = _updates(cfg, None, 60)
    model, optimizer, bf16, grads = _updates(cfg, torch.bfloat16, 60)
    assert bf16[:3] != fp32[:3]  # the products did run in bfloat16
    late32, late16 = sum(fp32[-10:]) / 10, sum(bf16[-10:]) / 10
    assert late16 < 0.5 * bf16[0] and late32 < 0.5 * fp32[0]
    assert abs(late16 - late32) < 0.1 * late32
    assert all(g.dtype == torch.float32 and bool(g.isfinite().all()) for gs in grads for g in gs)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    moments = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    assert moments and all(v.dtype == torch.float32 for v in moments)


@needs_bf16
def test_bf16_training_in_the_trainer_keeps_fp32_state(tmp_path):
    run = train(tiny_config(tmp_path, max_steps=20, valid_every=20, valid_max_sentences=4,
                            precision="bf16"), runs_dir=tmp_path / "runs")
    data = checkpoint.load(run / "last.pt")
    assert all(t.dtype == torch.float32 for t in data["model"].values() if t.is_floating_point())
    state = data["resume"]["optimizer"]["state"]
    assert all(v.dtype == torch.float32 for s in state.values() for k, v in s.items()
               if k != "step")


@needs_bf16
def test_a_resumed_bf16_run_equals_an_uninterrupted_one(tmp_path):
    def cfg(steps: int):
        return tiny_config(tmp_path, max_steps=steps, valid_every=20, valid_max_sentences=8,
                           precision="bf16")

    full = train(cfg(60), runs_dir=tmp_path / "a")
    half = train(cfg(40), runs_dir=tmp_path / "b")
    resumed = train(resume_config(half, ["train.max_steps=60"]), resume=half)
    a = checkpoint.load(full / "last.pt")["model"]
    b = checkpoint.load(resumed / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = checkpoint.load(train(replace(cfg(60), train=replace(
        cfg(60).train, precision="fp32")), runs_dir=tmp_path / "c") / "last.pt")["model"]
    assert not all(torch.equal(a[k], plain[k]) for k in a)  # bf16 did run


# -- bf16 search ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sources(trained_run) -> list[str]:
    return (trained_run / "test.en").read_text().splitlines()


@needs_bf16
def test_bf16_search_translates_as_fp32_does(trained_run, sources):
    fp32 = load_translator(trained_run, precision="fp32")
    bf16 = load_translator(trained_run, precision="bf16")
    assert bf16.precision() == "bf16"
    a = fp32.translate(sources, beam=3)
    b = bf16.translate(sources, beam=3)
    same = [x.text == y.text for x, y in zip(a, b)]
    assert sum(same) >= 0.95 * len(sources), [
        (x.text, y.text) for x, y, s in zip(a, b, same) if not s]
    assert any(x.score != y.score for x, y in zip(a, b))  # bfloat16 products did run


@needs_bf16
def test_bf16_beam_search_of_a_batch_equals_one_sentence_at_a_time(trained_run, sources):
    """Each sentence's best hypothesis is the same in a batch as alone, its score within
    bf16 rounding (the products of other rows may round differently)."""
    bf16 = load_translator(trained_run, precision="bf16")
    batched = bf16.translate(sources[:16], beam=3)
    alone = [bf16.translate([s], beam=3)[0] for s in sources[:16]]
    same = [x.hypotheses[0].tokens == y.hypotheses[0].tokens for x, y in zip(batched, alone)]
    assert sum(same) >= 15
    assert all(abs(x.score - y.score) <= 0.02 * max(1.0, abs(y.score))
               for x, y, s in zip(batched, alone, same) if s)


# -- choosing the search's precision -------------------------------------------------------

def test_auto_search_precision_is_the_fastest_available(monkeypatch, no_native_bf16):
    choose = translator_module.search_precision
    monkeypatch.setattr(int8, "available", lambda: True)
    assert choose("auto", "cpu") == "int8"
    choose.cache_clear()
    monkeypatch.setattr(int8, "available", lambda: False)
    assert choose("auto", "cpu") == "fp32"  # no int8, no native bf16
    assert choose("int8", "cpu") == "fp32"  # asked for, not available: a warning
    monkeypatch.setattr(numerics, "cpu_bf16", lambda: numerics.Bf16Support("bf16", 2.0))
    choose.cache_clear()
    assert choose("auto", "cpu") == "bf16"
    assert choose("fp32", "cpu") == "fp32" and choose("bf16", "cpu") == "bf16"
    assert choose("auto", "cuda") == "fp32" and choose("int8", "cuda") == "fp32"


def test_older_configs_int8_key_is_decode_precision(trained_run):
    raw = to_dict(load_translator(trained_run).config)
    del raw["decode"]["precision"]
    for old, now in ((True, "int8"), (False, "auto")):
        raw["decode"]["int8"] = old
        assert from_dict(raw).decode.precision == now


def test_cli_precision_options(trained_run):
    ok = runner.invoke(app, ["translate", "--checkpoint", str(trained_run), "--precision",
                             "fp32", "a b c"])
    assert ok.exit_code == 0, ok.output
    alias = runner.invoke(app, ["translate", "--checkpoint", str(trained_run), "--int8",
                                "a b c"])
    assert alias.exit_code == 0 and len(alias.stdout.splitlines()) == 1
    assert cli._search_precision(None, True) == "int8"
    assert cli._search_precision("bf16", False) == "bf16"
    both = runner.invoke(app, ["translate", "--checkpoint", str(trained_run), "--int8",
                               "--precision", "bf16", "a b c"])
    assert both.exit_code == 2 and "--int8 is --precision int8" in both.output
    bad = runner.invoke(app, ["translate", "--checkpoint", str(trained_run), "--precision",
                              "fp64", "a b c"])
    errors = [line for line in bad.output.splitlines() if line.startswith("error:")]
    assert bad.exit_code == 2 and len(errors) == 1 and "decode.precision" in errors[0]

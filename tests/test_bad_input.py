"""The bad-input matrix: every broken file, config, checkpoint, sentence and environment a user
can hand to `nmt` gets one line on stderr naming what is wrong, exit 2 (usage/config) or 1
(runtime), and no traceback; inputs that can be handled are handled (exit 0)."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from nmt import checkpoint
from nmt.cli import app
from nmt.data.tokenizer import train_model

from conftest import ROOT, TINY_CORPUS, tiny_train_command, wait_for

runner = CliRunner()


@dataclass
class Case:
    name: str
    args: Callable[[Path, Path], list[str]]  # (tmp, trained run) -> command-line arguments
    code: int  # expected exit code
    says: str = ""  # expected in the one-line error (exit != 0) or on stderr (exit 0)
    check: Callable[[Path, Path, object], None] | None = None  # more checks on the result


def config(tmp: Path, text: str) -> Path:
    path = tmp / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def prepare_with(text: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    """`nmt data prepare` of a config file holding `text`."""
    return lambda tmp, run: ["data", "prepare", "-c", str(config(tmp, text)), *extra]


def prepare_corpus(tmp: Path, content: bytes | None, name: str = "corpus.tsv",
                   **corpus) -> list[str]:
    """`nmt data prepare` of the tiny config reading `name` (with `content`, if given)."""
    if content is not None:
        (tmp / name).write_bytes(content)
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["data"].update(dir=str(tmp), prepared_dir=str(tmp / "prepared"),
                       corpora=[{"path": name, **corpus}])
    return ["data", "prepare", "-c", str(config(tmp, yaml.safe_dump(cfg)))]


def tiny_plus(extra: bytes) -> bytes:
    return extra + TINY_CORPUS.read_bytes()


def translate(*sentences: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: ["translate", "--checkpoint", str(run), *sentences]


def edited_checkpoint(edit: Callable[[dict], None]) -> Callable[[Path, Path], list[str]]:
    def args(tmp: Path, run: Path) -> list[str]:
        data = checkpoint.load(run / "best.pt")
        edit(data)
        torch.save(data, tmp / "edited.pt")
        return ["translate", "--checkpoint", str(tmp / "edited.pt"), "Hello."]
    return args


def other_tokenizer(data: dict) -> None:
    lines = [f"word{i} thing{i % 7} other{i % 3}" for i in range(200)]
    data["tokenizer"]["src"] = train_model(lines, vocab_size=40, model_type="unigram",
                                           character_coverage=1.0)


class Exploit:
    """Runs a shell command when unpickled, if anything ever unpickles it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def malicious(tmp: Path, run: Path) -> list[str]:
    buffer = io.BytesIO()
    torch.save({"format": "nmt-checkpoint", "version": 1, "model": Exploit()}, buffer)
    (tmp / "evil.pt").write_bytes(buffer.getvalue())
    return ["translate", "--checkpoint", str(tmp / "evil.pt"), "Hello."]


def nothing_pwned(tmp: Path, run: Path, result) -> None:
    assert not (tmp / "pwned").exists() and not Path("pwned").exists()


def no_bom_or_cr(tmp: Path, run: Path, result) -> None:
    from nmt.config import CorpusConfig
    from nmt.data.corpus import ReadStats, read_corpus

    pairs = list(read_corpus(CorpusConfig(path="corpus.tsv"), tmp, ReadStats()))
    assert pairs[0][1] == "Hello there." and pairs[0][2] == "Olá."
    assert not any("\r" in s or "\r" in t or "\ufeff" in s for _, s, t in pairs)


def output_lines(n: int) -> Callable[[Path, Path, object], None]:
    def check(tmp: Path, run: Path, result) -> None:
        assert len(result.stdout.splitlines()) == n, result.stdout
    return check


def reports(*texts: str) -> Callable[[Path, Path, object], None]:
    def check(tmp: Path, run: Path, result) -> None:
        assert all(t in result.stdout for t in texts), result.stdout
    return check


def runs_in_a_file(tmp: Path, run: Path) -> list[str]:
    (tmp / "file").write_text("not a folder")
    return ["train", "-c", str(run / "config.yaml"), "--runs-dir", str(tmp / "file" / "runs")]


def train_tiny(*extra: str) -> Callable[[Path, Path], list[str]]:
    """`nmt train` of the tiny config into tmp/runs, with `extra` options."""
    def args(tmp: Path, run: Path) -> list[str]:
        config_file = prepare_corpus(tmp, TINY_CORPUS.read_bytes())[-1]
        return ["train", "-c", config_file, "--runs-dir", str(tmp / "runs"),
                *[x.format(tmp=tmp) for x in extra]]
    return args


def nothing_outside_runs(tmp: Path, run: Path, result) -> None:
    assert not (tmp / "escape").exists()
    assert not (tmp / "runs").exists() or not any((tmp / "runs").iterdir())


def translate_with(*options: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: ["translate", "--checkpoint", str(run), *options,
                             "The cat sleeps.", "Where is the station?", "Hello."]


CASES = [
    # --- config: exit 2, the dotted key or the file named
    Case("config/missing-file", lambda t, r: ["data", "prepare", "-c", str(t / "nope.yaml")],
         2, "nope.yaml"),
    Case("config/invalid-yaml", prepare_with("data:\n  vocab_size: [1,\n"),
         2, "line 3"),
    Case("config/unknown-key", prepare_with("train:\n  lrr: 0.1\n"),
         2, "train.lrr: unknown key"),
    Case("config/wrong-type", prepare_with("train:\n  batch_tokens: big\n"),
         2, "train.batch_tokens: expected int, got 'big'"),
    Case("config/negative-size", prepare_with("model:\n  hidden_size: -3\n"),
         2, "model.hidden_size: expected >= 1, got -3"),
    Case("config/dropout-1", prepare_with("model:\n  dropout: 1.0\n"),
         2, "model.dropout: expected in [0, 1)"),
    Case("config/beam-0", prepare_with("decode:\n  beam: 0\n"),
         2, "decode.beam: expected >= 1, got 0"),
    Case("config/invalid-choice",
         prepare_with("model:\n  attention:\n    type: sparse\n"),
         2, "model.attention.type:"),
    Case("config/inconsistent",
         prepare_with("model:\n  tie_embeddings: true\n  emb_size: 64\n  decoder_size: 128\n"),
         2, "model.tie_embeddings: needs model.emb_size == model.decoder_size"),
    Case("config/bad-set-syntax", prepare_with("{}\n", "--set", "train.lr"),
         2, "expected KEY.PATH=VALUE"),
    Case("config/set-unknown-key", prepare_with("{}\n", "--set", "train.speed=9"),
         2, "train.speed: unknown key"),
    # --- corpus: unusable files are runtime errors (exit 1); bad lines are skipped and counted
    Case("corpus/missing-file", lambda t, r: prepare_corpus(t, None),
         1, "corpus.tsv: corpus file not found"),
    Case("corpus/directory", lambda t, r: (t / "corpus.tsv").mkdir() or prepare_corpus(t, None),
         1, "is a directory, expected a corpus file"),
    Case("corpus/empty-file", lambda t, r: prepare_corpus(t, b""), 1, "no usable"),
    Case("corpus/wrong-column-count", lambda t, r: prepare_corpus(t, b"a\tb\tc\td\te\n" * 50),
         1, "corpus.tsv:1: cannot tell the format from 5 tab-separated columns"),
    Case("corpus/some-lines-wrong-columns",
         lambda t, r: prepare_corpus(t, TINY_CORPUS.read_bytes() + b"one column only\n"),
         0, "", reports("skipped: not 2 columns")),
    Case("corpus/invalid-utf8", lambda t, r: prepare_corpus(t, tiny_plus(b"Bad \xff.\tMau.\n")),
         0, "", reports("skipped: invalid UTF-8", "corpus.tsv:1")),
    Case("corpus/bom-and-crlf",
         lambda t, r: prepare_corpus(t, b"\xef\xbb\xbfHello there.\tOl\xc3\xa1.\r\n" +
                                     TINY_CORPUS.read_bytes().replace(b"\n", b"\r\n")),
         0, "", no_bom_or_cr),
    Case("corpus/nul-bytes", lambda t, r: prepare_corpus(t, tiny_plus(b"A\x00B.\tC\x00D.\n")),
         0, "", reports("control characters")),
    Case("corpus/1MB-line", lambda t, r: prepare_corpus(t, tiny_plus(b"x" * 2**20 + b"\ty\n")),
         0, "", reports("skipped: line too long")),
    Case("corpus/everything-filtered",
         lambda t, r: prepare_corpus(t, (b"w " * 80 + b"\tx\n") * 100), 1, "no usable"),
    Case("corpus/text-pair-line-counts",
         lambda t, r: (t / "c.pt").write_text("um\ndois\n") and prepare_corpus(
             t, b"one\ntwo\nthree\n", name="c.en", format="text", target_path="c.pt"),
         1, "different line counts"),
    # --- checkpoints: exit 1, the file named
    Case("checkpoint/missing", lambda t, r: ["translate", "--checkpoint", str(t / "no.pt"), "Hi"],
         1, "no.pt: checkpoint not found"),
    Case("checkpoint/truncated",
         lambda t, r: (t / "cut.pt").write_bytes((r / "best.pt").read_bytes()[:5000]) and
         ["translate", "--checkpoint", str(t / "cut.pt"), "Hi"], 1, "cut.pt: unreadable or trunc"),
    Case("checkpoint/not-a-checkpoint",
         lambda t, r: (t / "x.pt").write_text("hello") and
         ["translate", "--checkpoint", str(t / "x.pt"), "Hi"], 1, "x.pt"),
    Case("checkpoint/foreign-torch-file",
         lambda t, r: torch.save({"w": torch.zeros(2)}, t / "f.pt") or
         ["translate", "--checkpoint", str(t / "f.pt"), "Hi"], 1, "not an nmt checkpoint"),
    Case("checkpoint/other-version", edited_checkpoint(lambda d: d.update(version=99)),
         1, "version"),
    Case("checkpoint/tokenizer-missing", edited_checkpoint(lambda d: d.pop("tokenizer")),
         1, "checkpoint lacks 'tokenizer'"),
    Case("checkpoint/tokenizer-corrupt",
         edited_checkpoint(lambda d: d["tokenizer"].update(src=b"garbage")),
         1, "incompatible checkpoint"),
    Case("checkpoint/tokenizer-changed", edited_checkpoint(other_tokenizer),
         1, "incompatible checkpoint"),
    Case("checkpoint/malicious-pickle", malicious, 1, "refused", nothing_pwned),
    Case("checkpoint/empty-run-dir",
         lambda t, r: (t / "run").mkdir() or ["translate", "--checkpoint", str(t / "run"), "Hi"],
         1, "run"),
    # --- sentences to translate: handled
    Case("translate/empty-string", translate(""), 0, "", output_lines(1)),
    Case("translate/whitespace-only", translate("  \t "), 0, "", output_lines(1)),
    Case("translate/5000-words", translate("word " * 5000), 0, "only the first",
         output_lines(1)),
    Case("translate/emoji-cjk-rtl", translate("The cat 😀 猫 שלום مرحبا sleeps."), 0, "",
         output_lines(1)),
    Case("translate/control-characters", translate("The\x07 cat\x1b[31m sleeps.\x00"), 0, "",
         output_lines(1)),
    Case("translate/several", translate("One.", "", "Two."), 0, "", output_lines(3)),
    Case("eval/line-count-mismatch",
         lambda t, r: (t / "s.en").write_text("a\nb\n") and (t / "r.pt").write_text("a\n") and
         ["eval", "--checkpoint", str(r), "--src", str(t / "s.en"), "--ref", str(t / "r.pt")],
         1, "line-aligned"),
    Case("eval/src-without-ref", lambda t, r: ["eval", "--checkpoint", str(r), "--src", "x"],
         2, "--ref"),
    # --- environment
    Case("env/existing-run-dir", lambda t, r: ["train", "-c", str(r / "config.yaml"),
                                               "--runs-dir", str(r.parent)],
         2, "--overwrite"),
    *([] if torch.cuda.is_available() else [
        Case("env/cuda-without-gpu", lambda t, r: ["train", "-c", str(r / "config.yaml"),
                                                   "--runs-dir", str(t), "--device", "cuda"],
             2, "no CUDA GPU")]),
    Case("env/unwritable-runs-dir", runs_in_a_file, 1, "Not a directory"),
    # --- names and paths: a run name is a name; outputs must be what they are said to be
    *[Case(f"names/run-name-{label}", train_tiny("--set", f"name={name}"), 2,
           "name: expected a plain run name", nothing_outside_runs)
      for label, name in (("dotdot", "../escape"), ("slash", "a/b"), ("hidden", ".x"),
                          ("absolute", "{tmp}/escape"))],
    Case("names/resume-nowhere", lambda t, r: ["train", "--resume", str(t / "nowhere")],
         2, "no last.pt there"),
    Case("names/output-is-a-directory",
         lambda t, r: ["translate", "--checkpoint", str(r), "-o", str(t), "Hi."],
         2, "is a directory, expected a file"),
    Case("names/attention-is-a-file",
         lambda t, r: (t / "f").write_text("x") and
         ["translate", "--checkpoint", str(r), "--attention", str(t / "f"), "Hi."],
         2, "exists and is not a folder"),
    Case("names/input-is-a-directory",
         lambda t, r: ["translate", "--checkpoint", str(r), "--input", str(t)],
         1, "is a directory, expected a text file"),
    # --- non-regular files: a FIFO would block, a device never end
    Case("files/config-fifo", lambda t, r: os.mkfifo(t / "c.yaml") or
         ["data", "prepare", "-c", str(t / "c.yaml")], 2, "not a regular file"),
    Case("files/corpus-fifo", lambda t, r: os.mkfifo(t / "corpus.tsv") or
         prepare_corpus(t, None), 1, "corpus.tsv: not a regular file"),
    Case("files/corpus-device", lambda t, r: prepare_corpus(t, None, name="/dev/zero"),
         1, "/dev/zero: not a regular file"),
    Case("files/corpus-symlink-loop", lambda t, r: os.symlink("corpus.tsv", t / "corpus.tsv")
         or prepare_corpus(t, None), 1, "corpus file not found"),
    Case("files/checkpoint-fifo", lambda t, r: os.mkfifo(t / "c.pt") or
         ["translate", "--checkpoint", str(t / "c.pt"), "Hi."], 1, "c.pt: not a regular file"),
    Case("files/checkpoint-device",
         lambda t, r: ["translate", "--checkpoint", "/dev/zero", "Hi."], 1, "not a regular"),
    Case("files/input-device",
         lambda t, r: ["translate", "--checkpoint", str(r), "--input", "/dev/zero"],
         1, "not a regular file or pipe"),
    # --- numbers: every float finite, every size allocatable
    Case("numbers/lr-inf", prepare_with("train:\n  lr: .inf\n"),
         2, "train.lr: expected a finite number"),
    Case("numbers/betas-nan", prepare_with("train:\n  betas: [0.9, .nan]\n"),
         2, "train.betas[1]: expected a finite number"),
    Case("numbers/set-minus-inf", prepare_with("{}\n", "--set", "model.dropout=-.inf"),
         2, "model.dropout: expected a finite number"),
    Case("numbers/scientific-notation",
         lambda t, r: prepare_corpus(t, TINY_CORPUS.read_bytes()) + ["--set", "train.lr=1e-4"],
         0, ""),
    Case("numbers/length-penalty-inf",
         lambda t, r: ["translate", "--checkpoint", str(r), "--length-penalty", "inf", "Hi."],
         2, "decode.length_penalty: expected a finite number"),
    Case("numbers/max-len-ratio-inf",
         lambda t, r: ["translate", "--checkpoint", str(r), "--max-len-ratio", "inf", "Hi."],
         2, "decode.max_len_ratio: expected a finite number"),
    Case("numbers/vocab-size-huge", prepare_with("data:\n  vocab_size: 1000000000000\n"),
         2, "data.vocab_size: expected in [16, 1000000]"),
    Case("numbers/model-too-large",
         train_tiny("--set", "model.hidden_size=100000", "--set", "model.decoder_size=200000"),
         1, "needs at least"),
    Case("numbers/model-at-the-size-limits",
         train_tiny(*[f"--set=model.{key}=1000000" for key in (
             "emb_size", "hidden_size", "decoder_size", "attention.size")],
             "--set", "model.enc_layers=1000", "--set", "model.dec_layers=1000"),
         1, "parameters and needs at least"),
    Case("numbers/sizes-beyond-int64",
         train_tiny("--set", f"model.hidden_size={2**63}", "--set", f"model.enc_layers={10**30}"),
         2, f"model.hidden_size: expected at most 1000000, got {2**63}; model.enc_layers: "
            f"expected at most 1000, got {10**30}"),
    Case("numbers/seed-beyond-32-bits", train_tiny("--set", f"train.seed={2**32}"),
         2, f"train.seed: expected in [0, 2**32), got {2**32}"),
    Case("numbers/beam-beyond-int64",
         lambda t, r: ["translate", "--checkpoint", str(r), "--beam", "9" * 25, "Hi."], 2, ""),
    # --- search options at their extremes: refused beyond what the vocabulary allows, handled
    # up to it (the trained run's target vocabulary has 115 pieces: beams up to 57)
    Case("search/beam-wider-than-vocabulary", translate_with("--beam", "58"), 2,
         "is wider than this model's 115-piece target vocabulary allows (at most 57)"),
    Case("search/beam-a-trillion", translate_with("--beam", str(10**12)), 2, "is wider"),
    Case("search/decode-beam-in-config", train_tiny("--set", "decode.beam=500"), 2,
         "decode.beam: 500 is wider"),
    Case("search/widest-beam", translate_with("--beam", "57", "--n-best", "57"), 0, "",
         output_lines(3 * 57)),
    Case("search/n-best-above-beam", translate_with("--beam", "2", "--n-best", "3"),
         2, "--n-best 3 needs --beam of at least 3"),
    Case("search/tiny-length-ratio", translate_with("--max-len-ratio", "0.01"), 0, "",
         output_lines(3)),
    Case("search/no-length-penalty", translate_with("--length-penalty", "0"), 0, "",
         output_lines(3)),
    Case("search/largest-length-penalty", translate_with("--length-penalty", "10"), 0, "",
         output_lines(3)),
    Case("search/length-penalty-too-large", translate_with("--length-penalty", "1e6"), 2,
         "decode.length_penalty: expected in [0, 10]"),
    Case("search/largest-length-ratio", translate_with("--max-len-ratio", "100"), 0, "",
         output_lines(3)),
    Case("search/batch-of-one", translate_with("--batch-size", "1"), 0, "", output_lines(3)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, case.args(tmp_path, trained_run))
    assert result.exit_code == case.code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    if case.code:
        errors = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
        assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
        assert case.says in errors[0]
    else:
        assert case.says in result.stderr
    if case.check:
        case.check(tmp_path, trained_run, result)


def test_full_disk_while_training_keeps_earlier_checkpoints(trained_run, tmp_path, monkeypatch):
    """A write that fails with ENOSPC stops the run with one line; files written before are
    intact and no temporary file is left behind."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(trained_run, run, symlinks=True)
    before = {p.name: p.read_bytes() for p in run.glob("*.pt")}
    real_save = torch.save

    def full(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", full)
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.max_steps=200"])
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and last.endswith(".pt: cannot write (No space left on "
                                                       "device)"), result.stderr
    assert {p.name: p.read_bytes() for p in run.glob("*.pt")} == before
    assert not list(run.glob(".*.tmp"))


def test_verbose_shows_the_traceback(tmp_path):
    """With --verbose the error is not turned into a line: the ConfigError itself propagates
    and Python prints its traceback; without --verbose the same input is exactly one
    `error:` line, exit 2, no traceback."""
    from nmt.errors import ConfigError

    missing = tmp_path / "x.yaml"
    args = ["data", "prepare", "-c", str(missing)]
    message = f"{missing}: file not found (expected a YAML config)"

    quiet = runner.invoke(app, args)
    assert quiet.exit_code == 2, (quiet.stdout, quiet.stderr)
    assert quiet.stderr == f"error: {message}\n"
    assert quiet.stdout == ""

    verbose = runner.invoke(app, ["--verbose", *args])
    assert type(verbose.exception) is ConfigError, repr(verbose.exception)
    assert str(verbose.exception) == message
    assert "error: " not in verbose.stderr  # not also reported as a line

    # as a user sees it: the traceback on stderr, ending in the ConfigError and its message
    shown = subprocess.run([sys.executable, "-m", "nmt", "--verbose", *args], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode != 0
    assert "Traceback (most recent call last):" in shown.stderr, shown.stderr
    assert shown.stderr.rstrip().splitlines()[-1] == f"nmt.errors.ConfigError: {message}"


# --- concurrent use of one run directory or prepared-data cache (real processes)

def test_a_run_in_training_is_locked_and_a_stale_lock_is_taken_over(tmp_path):
    """A second `nmt train` into a run directory that a live process trains is refused, with
    --overwrite or --resume alike, and the run is left intact; once its owner is killed, the
    lock it left is stale and --resume takes it over."""
    runs = tmp_path / "runs"
    run = runs / "tiny"
    owner = subprocess.Popen(tiny_train_command(tmp_path, runs, "--set", "train.max_steps=100000"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(run / "train.log", "validation at step 10", owner)
        for args in (tiny_train_command(tmp_path, runs, "--overwrite"),
                     [sys.executable, "-m", "nmt", "train", "--resume", str(run)]):
            second = subprocess.run(args, capture_output=True, text=True)
            assert second.returncode == 1, second.stderr
            last = second.stderr.strip().splitlines()[-1]
            assert last.startswith(f"error: {run} is in use by process {owner.pid} on "), last
            assert last.endswith("wait for it to end or stop it"), last
            assert "Traceback" not in second.stderr
            assert owner.poll() is None  # the owner trains on
        assert checkpoint.load(run / "last.pt")["step"] >= 10
    finally:
        owner.kill()
        owner.wait()
    assert (run / ".lock").exists()  # left behind by the killed owner: stale
    resumed = subprocess.run([sys.executable, "-m", "nmt", "train", "--resume", str(run),
                              "--set", "train.max_steps=30"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not (run / ".lock").exists()


def test_a_prepared_data_cache_being_written_is_waited_for(tmp_path):
    """`nmt data prepare` waits while another process holds the cache entry's lock, says so,
    and finishes once it is released."""
    from nmt.config import load_config
    from nmt.data.prepare import cache_key
    from nmt.lock import hold

    args = prepare_corpus(tmp_path, TINY_CORPUS.read_bytes())
    cfg = load_config(args[-1])
    (tmp_path / "prepared").mkdir()
    with hold(tmp_path / "prepared" / f".{cache_key(cfg.data)}.lock", "test"):
        proc = subprocess.Popen([sys.executable, "-m", "nmt", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        seen = ""
        while "waiting" not in seen:  # the first lines tell; it then blocks
            line = proc.stderr.readline()
            assert line, f"ended without waiting: {seen}"
            seen += line
        assert f"is in use by process {os.getpid()} on " in seen, seen
        time.sleep(1.0)
        assert proc.poll() is None  # still waiting
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    entries = [p.name for p in (tmp_path / "prepared").iterdir()]
    assert entries == [cache_key(cfg.data)], entries  # one entry, no temporary or lock files

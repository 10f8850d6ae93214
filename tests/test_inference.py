"""Translation and evaluation: search properties, batch invariance, attention export, scores
that sacrebleu reproduces, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import sacrebleu
import torch
from typer.testing import CliRunner

from nmt.cli import app
from nmt.evaluation.evaluate import by_length
from nmt.inference.translator import load_translator

from conftest import fast_only

runner = CliRunner()


@pytest.fixture(scope="module")
def translator(trained_run):
    """The tiny model's translator in fp32, whose searches the properties below hold exactly
    (int8's products quantize each batch with its own scale; tests/test_precision.py)."""
    return load_translator(trained_run, precision="fp32")


@pytest.fixture(scope="module")
def sources(trained_run) -> list[str]:
    return (trained_run / "test.en").read_text().splitlines()


def test_translates_the_test_split_well(translator, trained_run, sources):
    refs = (trained_run / "test.pt").read_text().splitlines()
    hyps = [t.text for t in translator.translate(sources, beam=3)]
    assert sacrebleu.corpus_bleu(hyps, [refs]).score > 50


@fast_only
def test_int8_translates_about_as_well(translator, trained_run, sources):
    refs = (trained_run / "test.pt").read_text().splitlines()
    fp32 = [t.text for t in translator.translate(sources, beam=3)]
    translator.decode = replace(translator.decode, precision="int8")
    try:
        assert translator.precision() == "int8"
        int8 = [t.text for t in translator.translate(sources, beam=3)]
    finally:
        translator.decode = replace(translator.decode, precision="fp32")
    same = sum(a == b for a, b in zip(fp32, int8)) / len(fp32)
    assert same > 0.8
    assert abs(sacrebleu.corpus_bleu(int8, [refs]).score
               - sacrebleu.corpus_bleu(fp32, [refs]).score) < 2


def test_version_1_checkpoints_still_translate(trained_run, tmp_path, sources):
    """Version 1 stored the recurrent weights transposed; such checkpoints load, translate the
    same, and say that they cannot be resumed."""
    from nmt import checkpoint

    data = checkpoint.load(trained_run / "last.pt")
    assert "resume" in data
    data["model"] = {k: v.t().contiguous() if k.startswith("decoder.recurrent.") else v
                     for k, v in data["model"].items()}
    torch.save({**data, "version": 1}, tmp_path / "v1.pt")
    old = load_translator(tmp_path / "v1.pt")
    new = load_translator(trained_run / "last.pt")
    assert ([t.text for t in old.translate(sources[:20])]
            == [t.text for t in new.translate(sources[:20])])
    assert "resume" not in checkpoint.load(tmp_path / "v1.pt")


def test_beam_one_equals_greedy(translator, sources):
    from nmt.inference.search import beam_search, greedy

    ids = [translator.tokenizer.encode_src([s])[0] for s in sources[:20]]
    import numpy as np

    from nmt.data.batching import pad_sources

    src, lengths = pad_sources([np.asarray(x) for x in ids])
    max_len = lengths * 2 + 10
    g = greedy(translator.model, src, lengths, max_len)
    b = beam_search(translator.model, src, lengths, max_len, beam=1)
    assert [h.tokens for h in g] == [nb[0].tokens for nb in b]
    for hg, nb in zip(g, b):
        assert hg.score == pytest.approx(nb[0].score * ((5 + len(hg.tokens) + 1) / 6), abs=1e-4)


def test_early_stop_keeps_the_best_hypothesis_without_length_penalty(translator, sources):
    """With alpha 0 no live hypothesis can overtake an ended one that outscores it, so stopping
    when the best candidate ends returns what waiting for `beam` ended hypotheses returns."""
    from nmt.inference.search import beam_search

    ids = [translator.tokenizer.encode_src([s])[0] for s in sources[:40]]
    import numpy as np

    from nmt.data.batching import pad_sources

    src, lengths = pad_sources([np.asarray(x) for x in ids])
    max_len = lengths * 2 + 10
    early, full = (beam_search(translator.model, src, lengths, max_len, beam=4, alpha=0.0,
                               early_stop=stop) for stop in (True, False))
    assert [nb[0].tokens for nb in early] == [nb[0].tokens for nb in full]
    assert [nb[0].score for nb in early] == pytest.approx([nb[0].score for nb in full], abs=1e-5)
    with_penalty = beam_search(translator.model, src, lengths, max_len, beam=4, alpha=1.0)
    assert all(len(nb) == 1 for nb in with_penalty)


@pytest.mark.parametrize("beam", [1, 4])
def test_batching_does_not_change_results(translator, sources, beam):
    batch = sources[:32] * 2
    together = [t.text for t in translator.translate(batch, beam=beam)]
    alone = [translator.translate([s], beam=beam)[0].text for s in batch[:16]]
    assert together[:16] == alone
    assert together[:32] == together[32:]


def test_n_best_lists_are_sorted_and_distinct(translator, sources):
    for tr in translator.translate(sources[:10], beam=5, n_best=5):
        scores = [h.score for h in tr.hypotheses]
        assert len(tr.hypotheses) == 5
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in tr.hypotheses}) == 5


def test_empty_and_odd_input(translator):
    out = translator.translate(["", "   ", "The cat 😀 猫 שלום \x07 sees.", "word " * 5000])
    assert out[0].text == "" and out[1].text == ""
    assert isinstance(out[2].text, str)
    assert len(out[3].hypotheses[0].tokens) <= 4 * 100 * 2 + 10


def test_by_length_buckets_partition_the_test_set():
    sources = ["a " * n for n in (1, 5, 10, 11, 20, 21, 35, 41, 60)]
    buckets = by_length(sources, ["x"] * 9, ["x"] * 9)
    assert [b.label for b in buckets] == ["1-10", "11-20", "21-30", "31-40", "41+"]
    assert sum(b.sentences for b in buckets) == 9
    assert [b.sentences for b in buckets] == [3, 2, 1, 1, 2]


def test_cli_translate_arguments_and_output_file(trained_run, tmp_path):
    result = runner.invoke(app, ["translate", "--checkpoint", str(trained_run),
                                 "The cat sees the ball.", "The dog has a book."])
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    out = tmp_path / "out.txt"
    result = runner.invoke(app, ["translate", "--checkpoint", str(trained_run), "-o", str(out),
                                 "--beam", "2", "The cat sees the ball."])
    assert result.exit_code == 0 and out.read_text().count("\n") == 1


def test_cli_translate_in_a_pipe_keeps_order_and_empty_lines(trained_run):
    text = "The cat sees the ball.\n\nThe girl reads the letter.\n"
    proc = subprocess.run([sys.executable, "-m", "nmt", "translate", "--checkpoint",
                           str(trained_run)], input=text, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[0] and lines[2]
    assert "using checkpoint" in proc.stderr


def test_cli_n_best_format(trained_run):
    result = runner.invoke(app, ["translate", "--checkpoint", str(trained_run), "--beam", "3",
                                 "--n-best", "3", "The cat sees the ball."])
    assert result.exit_code == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[:2] for r in rows] == [["1", "1"], ["1", "2"], ["1", "3"]]
    result = runner.invoke(app, ["translate", "--checkpoint", str(trained_run), "--beam", "2",
                                 "--n-best", "3", "x"])
    assert result.exit_code == 2


def test_cli_attention_files(trained_run, tmp_path):
    folder = tmp_path / "att"
    result = runner.invoke(app, ["translate", "--checkpoint", str(trained_run), "--attention",
                                 str(folder), "The cat sees the ball.", "My friends buy bread."])
    assert result.exit_code == 0, result.stderr
    for i in (1, 2):
        record = json.loads((folder / f"attention-{i}.json").read_text())
        m = torch.tensor(record["attention"])
        assert m.shape == (len(record["target_pieces"]), len(record["source_pieces"]))
        assert torch.allclose(m.sum(1), torch.ones(m.size(0)), atol=1e-4)
        w = torch.tensor(record["word_attention"])
        assert w.shape == (len(record["target_words"]), len(record["source_words"]))
        assert torch.allclose(w.sum(1), torch.ones(w.size(0)), atol=1e-4)
        assert (folder / f"attention-{i}.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_explain(trained_run):
    result = runner.invoke(app, ["translate", "--checkpoint", str(trained_run), "--explain",
                                 "The cat sees the ball."])
    assert result.exit_code == 0, result.stderr
    assert "attends:" in result.stderr and "top:" in result.stderr
    assert "English: The cat sees the ball." in result.stderr and "\nPortuguese: " in result.stderr
    assert result.stdout.strip() and "attends" not in result.stdout


def test_cli_eval_matches_sacrebleu_on_written_hypotheses(trained_run, tmp_path):
    hyp = tmp_path / "hyp.txt"
    result = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--metrics",
                                 "bleu,chrf,ter", "--json", "-o", str(hyp), "--by-length"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    bleu = payload["scores"][0]
    assert [s["name"] for s in payload["scores"]] == ["bleu", "chrf", "ter"]
    assert bleu["signature"].startswith("nrefs:1|")
    proc = subprocess.run([str(Path(sys.executable).parent / "sacrebleu"),
                           str(trained_run / "test.pt"), "-i", str(hyp), "-b", "-w", "4"],
                          capture_output=True, text=True)
    assert float(proc.stdout) == pytest.approx(bleu["value"], abs=1e-4)
    assert sum(b["sentences"] for b in payload["by_length"]) == payload["sentences"]
    assert hyp.with_suffix(".by-length.png").exists()


def test_cli_eval_custom_files_and_errors(trained_run, tmp_path):
    src, ref = tmp_path / "s.en", tmp_path / "r.pt"
    src.write_text("The cat sees the ball.\nThe dog has a book.\n")
    ref.write_text("O gato vê a bola.\nO cão tem um livro.\n")
    ok = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--src", str(src),
                             "--ref", str(ref), "--chrf"])
    assert ok.exit_code == 0, ok.stderr
    assert "BLEU" in ok.stdout and "chrF2" in ok.stdout and "nrefs:1" in ok.stdout
    ref.write_text("O gato vê a bola.\n")
    bad = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--src", str(src),
                              "--ref", str(ref)])
    assert bad.exit_code == 1 and "line-aligned" in bad.stderr
    ref.write_text("")
    empty = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--src", str(src),
                                "--ref", str(ref)])
    assert empty.exit_code == 1 and "empty file" in empty.stderr
    broken = tmp_path / "broken.pt"
    broken.write_bytes((trained_run / "last.pt").read_bytes()[:1000])
    unreadable = runner.invoke(app, ["eval", "--checkpoint", str(broken)])
    assert unreadable.exit_code == 1 and "broken.pt" in unreadable.stderr
    usage = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), "--src", str(src)])
    assert usage.exit_code == 2


def test_cli_eval_compares_checkpoints_by_length(trained_run, tmp_path):
    plot = tmp_path / "len.png"
    result = runner.invoke(app, ["eval", "--checkpoint", str(trained_run / "best.pt"),
                                 "--checkpoint", str(trained_run / "last.pt"), "--by-length",
                                 "--plot", str(plot)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("checkpoint:") == 2
    assert "source words" in result.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_translate_interactive_prompt(trained_run):
    import os
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "nmt", "translate", "--checkpoint",
                                  str(trained_run)])
    output = b""

    def read_prompts(count: int, timeout: float = 60) -> None:
        nonlocal output
        end = time.time() + timeout
        while output.count(b"en> ") < count and time.time() < end:
            if select.select([fd], [], [], 0.5)[0]:
                output += os.read(fd, 4096)

    read_prompts(1)
    os.write(fd, b"The cat sees the ball.\n")
    read_prompts(2)
    os.write(fd, b"\x04")  # Ctrl-D ends the session
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert output.count(b"en> ") == 2
    answer = output.split(b"en> ")[1].decode().splitlines()[-1]
    assert answer.startswith("O gato") or answer.startswith("Os gatos")
    assert os.waitstatus_to_exitcode(status) == 0

"""`nmt data ...` from the command line."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from nmt.cli import app

from conftest import ROOT, TINY_CORPUS

runner = CliRunner()


def test_prepare_prints_the_summary(tmp_path, monkeypatch):
    shutil.copyfile(TINY_CORPUS, tmp_path / "corpus.tsv")
    (tmp_path / "bad.tsv").write_bytes(b"Fine.\tBem.\nno tab here\nBad \xff.\tMau.\n")
    cfg = tmp_path / "c.yaml"
    corpora = "- path: corpus.tsv\n    - path: bad.tsv"
    cfg.write_text((ROOT / "configs" / "tiny.yaml").read_text()
                   .replace("- path: tests/data/tiny.en-pt.tsv", corpora))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "prepare", "-c", str(cfg), "--set", "data.dir=."])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for row in ("lines read", "skipped: invalid UTF-8", "skipped: not 2 columns", "pairs kept",
                "train", "valid", "test", "vocabulary", "padding", "pairs/s"):
        assert row in out, row
    assert "bad.tsv:2" in out and "bad.tsv:3" in out
    again = runner.invoke(app, ["data", "prepare", "-c", str(cfg), "--set", "data.dir=."])
    assert "(cached)" in again.stdout


def test_prepare_with_a_bad_config_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  vocab_size: many\n  colour: blue\n")
    result = runner.invoke(app, ["data", "prepare", "-c", str(cfg)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "data.vocab_size: expected int, got 'many'" in lines[0]
    assert "data.colour: unknown key" in lines[0]


def test_prepare_with_a_missing_corpus_is_exit_1(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  corpora:\n    - path: nowhere.tsv\n")
    result = runner.invoke(app, ["data", "prepare", "-c", str(cfg),
                                 "--set", f"data.dir={tmp_path}"])
    assert result.exit_code == 1
    assert "nowhere.tsv: corpus file not found" in result.stderr


def test_download_list_and_unknown_name():
    listed = runner.invoke(app, ["data", "download", "--list"])
    assert listed.exit_code == 0 and "tatoeba" in listed.stdout
    unknown = runner.invoke(app, ["data", "download", "klingon"])
    assert unknown.exit_code == 2 and "klingon" in unknown.stderr


def test_download_from_a_local_file(tmp_path):
    src = tmp_path / "mirror.tsv"
    src.write_text("Hello.\tOlá.\tCC-BY attribution\n")
    result = runner.invoke(app, ["data", "download", "tatoeba", "--from", str(src),
                                 "--dest", str(tmp_path / "data")])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "data" / "tatoeba.en-pt.tsv").read_text() == src.read_text()

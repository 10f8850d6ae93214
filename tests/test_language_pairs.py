"""Language pairs: corpora are read by language, so one file trains both directions; both
directions share one split; prepared files are named by language; mixed-up languages are one
line and exit 2."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from nmt.cli import app
from nmt.config import CorpusConfig, DataConfig
from nmt.data.batching import Dataset
from nmt.data.corpus import ReadStats, assign_splits, read_corpus, split_key, unshared
from nmt.data.prepare import SPLITS, Prepared, prepare
from nmt.errors import ConfigError

from conftest import ROOT, TINY_CORPUS, tiny_config

runner = CliRunner()


def read(tmp: Path, content: str, pair: tuple[str, str], **spec) -> list[tuple[str, str]]:
    (tmp / "c.tsv").write_text(content, encoding="utf-8")
    rows = read_corpus(CorpusConfig(path="c.tsv", **spec), tmp, ReadStats(), pair=pair)
    return [(src, tgt) for _, src, tgt in rows]


# --- readers: sides by language, not by position


@pytest.mark.parametrize("fmt, line", [("tsv", "Hello.\tOlá.\n"),
                                       ("anki", "Hello.\tOlá.\tCC-BY attribution\n"),
                                       ("auto", "Hello.\tOlá.\n")])
def test_one_file_reads_in_both_directions(tmp_path, fmt, line):
    assert read(tmp_path, line, ("en", "pt"), format=fmt) == [("Hello.", "Olá.")]
    assert read(tmp_path, line, ("pt", "en"), format=fmt) == [("Olá.", "Hello.")]
    assert read(tmp_path, line, ("por", "eng"), format=fmt) == [("Olá.", "Hello.")]


def test_columns_name_the_languages_of_a_file(tmp_path):
    line = "Olá.\tHello.\n"  # Portuguese first
    assert read(tmp_path, line, ("en", "pt"), columns=("pt", "en")) == [("Hello.", "Olá.")]
    assert read(tmp_path, line, ("pt", "en"), columns=("pt", "en")) == [("Olá.", "Hello.")]


def test_english_comes_first_else_the_source(tmp_path):
    """Without `columns`: English first when a side is English (the Tatoeba/Anki exports),
    else the source first."""
    assert read(tmp_path, "Hello.\tHallo.\n", ("de", "en")) == [("Hallo.", "Hello.")]
    assert read(tmp_path, "Hallo.\tBonjour.\n", ("de", "fr")) == [("Hallo.", "Bonjour.")]
    assert read(tmp_path, "Hallo.\tBonjour.\n", ("fr", "de"), columns=("de", "fr")) == [
        ("Bonjour.", "Hallo.")]


def test_a_pair_of_text_files_reads_in_both_directions_by_its_columns(tmp_path):
    """A text corpus's `columns` names the languages of path and target_path; without it,
    path is the source."""
    (tmp_path / "c.en").write_text("Hello.\nGood night.\n", encoding="utf-8")
    (tmp_path / "c.pt").write_text("Olá.\nBoa noite.\n", encoding="utf-8")

    def rows(pair, **spec):
        spec = CorpusConfig(path="c.en", format="text", target_path="c.pt", **spec)
        return [(src, tgt) for _, src, tgt in read_corpus(spec, tmp_path, ReadStats(), pair=pair)]

    en_pt = [("Hello.", "Olá."), ("Good night.", "Boa noite.")]
    pt_en = [(tgt, src) for src, tgt in en_pt]
    assert rows(("en", "pt"), columns=("en", "pt")) == en_pt
    assert rows(("pt", "en"), columns=("en", "pt")) == pt_en
    assert rows(("en", "pt")) == en_pt
    assert rows(("pt", "en")) == en_pt  # no columns: path is the source, whatever it holds
    with pytest.raises(ConfigError, match=r"c\.en: columns en-de is not the pair"):
        rows(("en", "pt"), columns=("en", "de"))


def test_tatoeba_lines_name_their_languages(tmp_path):
    content = ("eng\tpor\tI run.\tEu corro.\n"
               "por\teng\tEu ando.\tI walk.\n"
               "12\t\tNot a\ttatoeba line.\n")
    (tmp_path / "c.tsv").write_text(content, encoding="utf-8")
    stats = ReadStats()
    rows = list(read_corpus(CorpusConfig(path="c.tsv", format="tatoeba"), tmp_path, stats,
                            pair=("pt", "en")))
    assert rows == [(1, "Eu corro.", "I run."), (2, "Eu ando.", "I walk.")]
    assert stats.skipped == {"no language codes": 1}
    assert read(tmp_path, content, ("en", "pt")) == [("I run.", "Eu corro."),
                                                    ("I walk.", "Eu ando.")]


def test_a_tatoeba_file_of_another_pair_is_a_config_error(tmp_path):
    content = "eng\tpor\tI run.\tEu corro.\neng\tdeu\tI run.\tIch laufe.\n"
    with pytest.raises(ConfigError, match=r"c\.tsv:2: a tatoeba line of eng-deu is not the pair "
                                          r"of data\.src_lang and data\.tgt_lang \(en and pt\)"):
        read(tmp_path, content, ("en", "pt"))


# --- one split for both directions


def leaky_corpus(tmp: Path) -> tuple[Path, Path]:
    """The tiny corpus with duplicates, a case variant of an English sentence and two pairs
    that the exclude file (one English, one Portuguese sentence) takes out."""
    lines = TINY_CORPUS.read_text(encoding="utf-8").splitlines()
    en0, pt0 = lines[0].split("\t")
    en1, pt1 = lines[1].split("\t")
    extra = [lines[2], lines[3], f"{en0.upper()}\t{pt1}", f"{en1}\t{pt0}"]
    corpus = tmp / "corpus.tsv"
    corpus.write_text("\n".join(lines + extra) + "\n", encoding="utf-8")
    exclude = tmp / "exclude.txt"
    exclude.write_text(f"{lines[4].split(chr(9))[0]}\n{lines[5].split(chr(9))[1]}\n",
                       encoding="utf-8")
    return corpus, exclude


def both_directions(tmp: Path, **data) -> tuple[Prepared, Prepared]:
    cfg = tiny_config(tmp).data
    cfg = replace(cfg, **data)
    forward = prepare(cfg, progress=False)
    backward = prepare(replace(cfg, src_lang=cfg.tgt_lang, tgt_lang=cfg.src_lang), progress=False)
    return forward, backward


def pairs(p: Prepared, split: str) -> list[tuple[str, str]]:
    """A split's pairs as (source, target)."""
    return list(zip(p.lines(split, p.src_lang), p.lines(split, p.tgt_lang)))


def test_both_directions_share_one_split(tmp_path):
    """pt->en prepared from the same corpora has exactly en->pt's splits with the sides swapped
    (cleaning, deduplication and the leakage filter too), and none of its training pairs or
    English sentences is in en->pt's test split."""
    corpus, exclude = leaky_corpus(tmp_path)
    en_pt, pt_en = both_directions(tmp_path, exclude=(str(exclude),))
    assert (pt_en.src_lang, pt_en.tgt_lang) == ("pt", "en")
    assert en_pt.summary.dropped == pt_en.summary.dropped == {"duplicate": 2,
                                                               "in an evaluation set": 2}
    for split in SPLITS:
        assert pairs(pt_en, split) == [(pt, en) for en, pt in pairs(en_pt, split)], split
        forward, backward = Dataset.load(en_pt.ids(split)), Dataset.load(pt_en.ids(split))
        assert np.array_equal(forward.src, backward.tgt)  # one joint tokenizer, sides swapped
        assert np.array_equal(forward.tgt, backward.src)
    test = set(pairs(en_pt, "test"))
    trained = {(en, pt) for pt, en in pairs(pt_en, "train")}
    assert test and not trained & test
    assert not {en.lower() for en, _ in trained} & {en.lower() for en, _ in test}


@pytest.mark.parametrize("src, tgt", [("en", "pt"), ("pt", "en")])
def test_the_split_hashes_the_side_whose_code_sorts_first(tmp_path, src, tgt):
    """en-pt in either direction: the split is the one a hash of the English side gives (as
    before languages were settings), whether English is the source or the target."""
    p = prepare(replace(tiny_config(tmp_path).data, src_lang=src, tgt_lang=tgt), progress=False)
    english = [(sentence, split) for split in SPLITS for sentence in p.lines(split, "en")]
    keys = [split_key(sentence) for sentence, _ in english]
    assert assign_splits(keys, 40, 40) == [split for _, split in english]


def test_prepared_files_are_named_by_language(tmp_path):
    """Text files and SentencePiece models carry the language code; the manifest records the
    direction; three-letter codes name the same pair as two-letter ones."""
    en_pt, pt_en = both_directions(tmp_path, joint_vocab=False)
    for p in (en_pt, pt_en):
        assert {f.name for f in p.path.iterdir() if not f.name.endswith(".npz")} == {
            "manifest.json", "spm.en.model", "spm.pt.model",
            *(f"{split}.{lang}" for split in SPLITS for lang in ("en", "pt"))}
    tok = pt_en.tokenizer()
    assert tok.src_model == (pt_en.path / "spm.pt.model").read_bytes() != tok.tgt_model
    assert tok.src_model == en_pt.tokenizer().tgt_model  # trained on the same Portuguese text
    manifest = json.loads((pt_en.path / "manifest.json").read_text())
    assert (manifest["src_lang"], manifest["tgt_lang"]) == ("pt", "en")
    assert pt_en.summary.vocab.keys() == {"pt", "en"}
    cfg = replace(tiny_config(tmp_path).data, joint_vocab=False)
    three = prepare(replace(cfg, src_lang="por", tgt_lang="eng"), progress=False)
    assert three.path == pt_en.path and three.summary.cached


def test_a_pair_without_english_names_its_files(tmp_path):
    """Any pair of codes: the tiny corpus's columns declared as de and fr, trained fr->de."""
    cfg = tiny_config(tmp_path).data
    corpus = replace(cfg.corpora[0], columns=("de", "fr"))
    p = prepare(replace(cfg, src_lang="fr", tgt_lang="de", corpora=(corpus,)), progress=False)
    english, portuguese = zip(*(line.split("\t") for line in
                                TINY_CORPUS.read_text(encoding="utf-8").splitlines()))
    assert set(p.lines("train", "de")) <= set(english)
    assert set(p.lines("train", "fr")) <= set(portuguese)
    assert (p.path / "spm.fr.model").is_file() and (p.path / "test.de").is_file()


def test_prepare_summary_names_the_languages(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["data"].update(dir=str(ROOT), prepared_dir=str(tmp_path / "prepared"),
                       src_lang="pt", tgt_lang="en")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["data", "prepare", "-c", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.stderr
    assert re.search(r"^  test +40 pairs, .* pieces per sentence \(pt/en\)$", result.stdout, re.M)
    assert re.search(r"^vocabulary +pt \d+, en \d+$", result.stdout, re.M), result.stdout


# --- mixed-up languages: one line, exit 2


def prepare_args(tmp: Path, data: dict, corpus: dict, content: str | None = None) -> list[str]:
    """`nmt data prepare` of the tiny config with `data` keys and one corpus with `corpus` keys,
    reading the tiny corpus (or `content`) as c.tsv."""
    (tmp / "c.tsv").write_text(content or TINY_CORPUS.read_text(encoding="utf-8"),
                               encoding="utf-8")
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["data"].update(dir=str(tmp), prepared_dir=str(tmp / "prepared"),
                       corpora=[{"path": "c.tsv", **corpus}], **data)
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    return ["data", "prepare", "-c", str(tmp / "c.yaml")]


TATOEBA_DE = "".join(f"eng\tdeu\tSentence {i}.\tSatz {i}.\n" for i in range(100))


@pytest.mark.parametrize("data, corpus, content, says", [
    ({"src_lang": "English"}, {}, None,
     "data.src_lang: expected a language code such as en, pt, por or pt-BR, got 'English'"),
    ({"src_lang": "pt", "tgt_lang": "pt"}, {}, None,
     "data.tgt_lang: 'pt' is the source language too (data.src_lang: 'pt')"),
    ({"src_lang": "en", "tgt_lang": "eng"}, {}, None,
     "data.tgt_lang: 'eng' is the source language too (data.src_lang: 'en')"),
    ({}, {"columns": ["en", "de"]}, None,
     "data.corpora[0].columns: 'de' is neither data.src_lang ('en') nor data.tgt_lang ('pt')"),
    ({}, {"columns": ["pt", "por"]}, None, "data.corpora[0].columns: names 'pt' twice"),
    ({}, {"columns": ["en"]}, None,
     "data.corpora[0].columns: expected two language codes such as ['en', 'pt'], got ['en']"),
    ({}, {"columns": ["en", "pt"], "format": "tatoeba"}, None,
     "data.corpora[0].columns: applies to tsv, anki and text corpora only"),
    ({}, {}, TATOEBA_DE,
     "c.tsv:1: a tatoeba line of eng-deu is not the pair of data.src_lang and data.tgt_lang "
     "(en and pt)"),
], ids=["bad-code", "same-language", "same-language-3-letters", "column-of-neither-side",
        "column-twice", "one-column", "columns-of-tatoeba", "tatoeba-of-another-pair"])
def test_mixed_up_languages_are_one_line_exit_2(tmp_path, data, corpus, content, says):
    result = runner.invoke(app, prepare_args(tmp_path, data, corpus, content))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert says in errors[0]
    assert "Traceback" not in result.stderr


def test_languages_default_to_english_portuguese():
    assert (DataConfig().src_lang, DataConfig().tgt_lang) == ("en", "pt")


def test_no_sentence_of_either_side_is_in_two_splits(tmp_path):
    """Two English sentences with one Portuguese translation: the split hashes English, and
    the training or validation pair that shares its Portuguese with a held-out pair is dropped,
    so neither direction's test sources are seen in training; held-out pairs stay."""
    lines = TINY_CORPUS.read_text(encoding="utf-8").splitlines()
    extra = []
    for i in range(0, 200, 2):  # pair i's Portuguese also translates pair i + 1's English
        en_next = lines[i + 1].split("\t")[0]
        extra.append(f"{en_next}\t{lines[i].split(chr(9))[1]}")
    (tmp_path / "corpus.tsv").write_text("\n".join(lines + extra) + "\n", encoding="utf-8")
    en_pt, pt_en = both_directions(tmp_path)
    for p in (en_pt, pt_en):
        seen: dict[str, str] = {}
        for split in SPLITS:
            for src, tgt in pairs(p, split):
                for sentence in (src.lower(), tgt.lower()):
                    assert seen.setdefault(sentence, split) == split, (sentence, split)
    assert en_pt.summary.dropped.get("shares a held-out sentence", 0) > 0
    assert unshared(["train", "test", "valid", "train", "valid"],
                    [b"x", b"x", b"y", b"y", b"z"]) == [None, "test", "valid", None, "valid"]
    assert unshared(["valid", "test"], [b"x", b"x"]) == [None, "test"]


@pytest.fixture(scope="module")
def reversed_run(tmp_path_factory) -> Path:
    """configs/tiny.yaml trained Portuguese -> English, as `trained_run` is trained en -> pt."""
    from nmt.train import train

    tmp = tmp_path_factory.mktemp("pt-en")
    cfg = tiny_config(tmp, max_steps=150)
    cfg = replace(cfg, data=replace(cfg.data, src_lang="pt", tgt_lang="en"))
    return train(cfg, runs_dir=tmp / "runs")


def test_a_model_of_the_other_direction_learns_as_well(trained_run, reversed_run):
    """pt->en on the tiny corpus learns as en->pt does in the same updates: on one test split
    (sides swapped), nmt eval scores both far above an untrained model's 0, within a factor of
    each other."""
    def bleu(run: Path) -> float:
        result = CliRunner().invoke(app, ["eval", "--checkpoint", str(run), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["scores"][0]["value"]

    assert (reversed_run / "test.pt").read_text() == (trained_run / "test.pt").read_text()
    assert (reversed_run / "test.en").read_text() == (trained_run / "test.en").read_text()
    en_pt, pt_en = bleu(trained_run), bleu(reversed_run)
    assert pt_en > 10 and en_pt > 10
    assert 0.5 < pt_en / en_pt < 2


def test_the_languages_travel_in_the_checkpoint(reversed_run):
    """translate --explain, the page, /info and the API's description name the checkpoint's
    languages."""
    result = CliRunner().invoke(app, ["translate", "--checkpoint", str(reversed_run),
                                      "--explain", "O gato dorme."])
    assert result.exit_code == 0, result.output
    assert "Portuguese: O gato dorme." in result.stderr and "\nEnglish: " in result.stderr
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nmt.inference.translator import load_translator
    from nmt.serve.app import create_app
    from nmt.serve.options import ServeOptions

    with TestClient(create_app(load_translator(reversed_run), ServeOptions())) as client:
        page = client.get("/").text
        assert "<h1>Portuguese → English</h1>" in page and 'data-target-code="en"' in page
        assert "{{" not in page
        assert client.get("/info").json()["languages"] == {"source": "pt", "target": "en"}
        assert client.get("/openapi.json").json()["info"]["description"].startswith(
            "Portuguese→English")

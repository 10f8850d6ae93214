"""Corpus readers (every format, malformed input), cleaning, the leakage filter and the split."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmt.config import CorpusConfig, DataConfig
from nmt.data.corpus import (
    Cleaner,
    ReadStats,
    assign_splits,
    normalize,
    read_corpus,
    read_protected,
    split_key,
)
from nmt.errors import DataError


def read(tmp: Path, content: bytes, fmt: str = "auto", name: str = "c.tsv"):
    (tmp / name).write_bytes(content)
    stats = ReadStats()
    rows = list(read_corpus(CorpusConfig(path=name, format=fmt), tmp, stats))
    return rows, stats


def test_two_column_tsv(tmp_path):
    rows, stats = read(tmp_path, "Hello.\tOlá.\nThe sun.\tO sol.\n".encode())
    assert rows == [(1, "Hello.", "Olá."), (2, "The sun.", "O sol.")]
    assert stats.read == 2 and not stats.skipped


def test_anki_three_columns_drop_attribution(tmp_path):
    line = "Go.\tVai.\tCC-BY 2.0 (France) Attribution: example #1\n"
    rows, _ = read(tmp_path, line.encode(), fmt="anki")
    assert rows == [(1, "Go.", "Vai.")]
    rows, _ = read(tmp_path, line.encode())  # auto-detected
    assert rows == [(1, "Go.", "Vai.")]


def test_tatoeba_challenge_four_columns(tmp_path):
    rows, _ = read(tmp_path, b"eng\tpor\tI run.\tEu corro.\n")
    assert rows == [(1, "I run.", "Eu corro.")]


def test_text_pair(tmp_path):
    (tmp_path / "a.en").write_text("One.\nTwo.\n")
    (tmp_path / "a.pt").write_text("Um.\nDois.\n")
    stats = ReadStats()
    spec = CorpusConfig(path="a.en", format="text", target_path="a.pt")
    assert list(read_corpus(spec, tmp_path, stats)) == [(1, "One.", "Um."), (2, "Two.", "Dois.")]


def test_text_pair_with_different_line_counts_is_an_error(tmp_path):
    (tmp_path / "a.en").write_text("One.\nTwo.\nThree.\n")
    (tmp_path / "a.pt").write_text("Um.\nDois.\n")
    spec = CorpusConfig(path="a.en", format="text", target_path="a.pt")
    with pytest.raises(DataError, match=r"different line counts \(3 and 2\)"):
        list(read_corpus(spec, tmp_path, ReadStats()))


def test_malformed_lines_are_skipped_and_counted_with_line_numbers(tmp_path):
    content = (b"\xef\xbb\xbfGood.\tBom.\r\n"       # BOM and CRLF: kept
               b"only one column\n"                  # 2: wrong columns
               b"Bad \xff byte.\tByte mau.\n"        # 3: invalid UTF-8
               b"\n"                                 # 4: empty
               b"Fine.\tBem.\n"
               b"A\tB\tC\tD\tE\n")                   # 6: wrong columns
    rows, stats = read(tmp_path, content)
    assert rows == [(1, "Good.", "Bom."), (5, "Fine.", "Bem.")]
    assert stats.skipped == {"not 2 columns": 2, "invalid UTF-8": 1, "empty line": 1}
    assert stats.examples["not 2 columns"] == ["c.tsv:2", "c.tsv:6"]


def test_huge_line_is_skipped(tmp_path):
    content = b"x" * 1_000_000 + b"\ty\nShort.\tCurto.\n"
    rows, stats = read(tmp_path, content)
    assert rows == [(2, "Short.", "Curto.")]
    assert stats.skipped["line too long"] == 1


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list(read_corpus(CorpusConfig(path="nope.tsv"), tmp_path, ReadStats()))
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        list(read_corpus(CorpusConfig(path="d"), tmp_path, ReadStats()))


def test_unknown_column_count_is_an_error(tmp_path):
    with pytest.raises(DataError, match="c.tsv:1: cannot tell the format"):
        read(tmp_path, b"a\tb\tc\td\te\tf\n")


def test_normalize_nfc_and_whitespace():
    decomposed = "Ac\u0327a\u0303o  \t feita "
    assert normalize(decomposed) == "Ação feita"


def cleaner(**kw) -> Cleaner:
    return Cleaner(DataConfig(**kw), protected=set())


def test_cleaner_filters():
    c = cleaner(max_words=5, max_ratio=2.0)
    assert c("Hello  there.", "Olá \u00a0 aí.") == ("Hello there.", "Olá aí.")
    assert c("Hello there.", "Olá aí.") is None  # duplicate after normalisation
    assert c("one two three four five six", "um") is None  # too long
    assert c("a b c d", "a") is None  # ratio
    assert c("Tab\x07bell", "Sino") is None  # control character
    assert c("   ", "vazio") is None
    assert c.stats.kept == 1
    assert c.stats.dropped == {"duplicate": 1, "length": 1, "length ratio": 1,
                               "control characters": 1, "empty side": 1}


def test_leakage_filter(tmp_path):
    (tmp_path / "test.tsv").write_text("The  test sentence.\tUma frase de teste.\n")
    (tmp_path / "ref.pt").write_text("Outra frase.\n")
    protected = read_protected([tmp_path / "test.tsv", tmp_path / "ref.pt"])
    c = Cleaner(DataConfig(), protected)
    assert c("The test sentence.", "Tradução diferente.") is None
    assert c("Another source.", "Outra frase.") is None
    assert c("Clean source.", "Frase limpa.") is not None
    assert c.stats.dropped == {"in an evaluation set": 2}


def test_split_is_deterministic_and_keeps_same_source_together():
    sources = [f"sentence number {i}" for i in range(300)] + ["Sentence number 7"]
    keys = [split_key(s) for s in sources]
    splits = assign_splits(keys, valid_size=20, test_size=30)
    assert splits == assign_splits(list(keys), 20, 30)
    assert splits.count("test") == 30 and splits.count("valid") == 20
    assert splits[7] == splits[300]  # case-insensitive duplicate of the English side
    # the split of a pair does not depend on the order the corpus lists pairs in
    reordered = assign_splits(keys[::-1], 20, 30)[::-1]
    assert reordered == splits

"""Property-based tests: the corpus readers, the config loader and the tokenizer hold their
contracts on generated input. `scripts/fuzz.py` runs the same properties on many more inputs.

Contracts: a reader yields clean text or raises DataError, and accounts for every line; the
loader returns a Config or raises ConfigError naming dotted keys; the tokenizer decodes what it
encodes for text in its alphabet."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nmt import languages
from nmt.config import Config, CorpusConfig, from_dict, to_dict
from nmt.data.corpus import ReadStats, normalize, read_corpus
from nmt.data.tokenizer import Tokenizer, train_model
from nmt.errors import ConfigError, DataError

from conftest import TINY_CORPUS

# --- corpus readers -----------------------------------------------------------------------
PIECES = [b"hello", b"ol\xc3\xa1", b"\t", b"\r", b"\xef\xbb\xbf", b"\x00", b"\xff", b"\xc3",
          b" ", b"\xe2\x80\xa8", b"a" * 300]
raw_line = st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=8)), max_size=8).map(
    lambda parts: b"".join(parts).replace(b"\n", b""))  # one line: no newline inside
raw_file = st.lists(raw_line, max_size=12).map(lambda lines: b"\n".join(lines))


def expected_pairs(content: bytes, fmt: str, max_chars: int
                   ) -> list[tuple[int, str, str]] | str | None:
    """What a column reader must yield for `content`, worked out line by line from the format
    table of nmt/data/corpus.py: each line, less one leading BOM and its line ending, that is
    valid UTF-8, at most `max_chars` long, not blank and has the format's column count (and,
    for tatoeba, two language codes), as (line number, English column, Portuguese column);
    None where `auto` cannot tell the format from the first such line, "another pair" where a
    tatoeba line names other languages."""
    columns = {"tsv": 2, "anki": 3, "tatoeba": 4}.get(fmt)  # auto: from the first line
    pairs = []
    for number, raw in enumerate(content.split(b"\n"), start=1):
        try:
            line = raw.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            continue
        if len(line) > max_chars or not line.strip():
            continue
        parts = line.split("\t")
        if columns is None:
            if len(parts) not in (2, 3, 4):
                return None
            columns = len(parts)
        if len(parts) == columns:
            if columns == 4:  # tatoeba: the line's codes say which column is English
                codes = [languages.canonical(c) for c in parts[:2]]
                if not all(languages.is_code(c.split("_")[0]) for c in parts[:2]):
                    continue
                if codes not in (["en", "pt"], ["pt", "en"]):
                    return "another pair"
                src, tgt = parts[2:4] if codes == ["en", "pt"] else parts[3:1:-1]
            else:
                src, tgt = parts[:2]
            pairs.append((number, src, tgt))
    return pairs


@given(content=raw_file, fmt=st.sampled_from(["auto", "tsv", "anki", "tatoeba"]))
# always tried, besides the generated ones: spaces kept, BOM, CRLF, a CR inside a column,
# blank, undecodable, too long and wrong-width lines, and a format auto cannot tell
@example(content=b"\xef\xbb\xbf Hi \t Ol\xc3\xa1\r\r\n\n \t \nbad\xff\tx\na\tb\tc\nOk\tSim\n",
         fmt="auto")
@example(content=b"eng\tpor\t Hello.\tOl\xc3\xa1. \r\neng\tpor\tx\n", fmt="tatoeba")
@example(content=b"hello\t\thello\thello\npor\teng\tOl\xc3\xa1.\tHello.\n", fmt="tatoeba")
@example(content=b"eng\tpor\tHi.\tOi.\ndeu\teng\tHallo.\tHello.\n", fmt="tatoeba")
@example(content=b"Hi.\tOi.\r\tCC-BY\r\n" + b"x" * 201 + b"\ty\tz\nA\tB\tC", fmt="anki")
@example(content=b"\xef\xbb\xbf\xef\xbb\xbfHi\tOi\n", fmt="tsv")  # only one BOM is dropped
@example(content=b"\n one column\nHi\tOi\n", fmt="auto")
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_corpus_reader_yields_clean_text_or_a_data_error(content, fmt):
    expected = expected_pairs(content, fmt, max_chars=200)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c.tsv").write_bytes(content)
        stats = ReadStats()
        try:
            pairs = list(read_corpus(CorpusConfig(path="c.tsv", format=fmt), Path(tmp), stats,
                                     max_chars=200))
        except DataError as err:
            assert str(err).startswith(str(Path(tmp) / "c.tsv"))
            assert expected is None, (err, expected)  # only auto on an unknown column count
            return
        except ConfigError as err:
            assert str(Path(tmp) / "c.tsv") in str(err)
            assert expected == "another pair", (err, expected)
            return
    # exactly the English and Portuguese columns of every readable line, in order, unchanged
    assert pairs == expected
    for number, src, tgt in pairs:
        assert 1 <= number <= stats.read
        for text in (src, tgt):
            assert len(text) <= 200
            assert "\n" not in text and "\t" not in text
        if content.split(b"\n")[number - 1].count(b"\t") != 2:  # tgt ends the line (not anki)
            assert not tgt.endswith("\r")  # line endings go; other whitespace is normalize()'s
    assert stats.read == len(pairs) + sum(stats.skipped.values())


@given(src=st.lists(raw_line, max_size=8), tgt=st.lists(raw_line, max_size=8))
@settings(deadline=None)
def test_text_pair_reader_keeps_lines_aligned(src, tgt):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a.en").write_bytes(b"\n".join(src) + b"\n" if src else b"")
        (Path(tmp) / "a.pt").write_bytes(b"\n".join(tgt) + b"\n" if tgt else b"")
        spec = CorpusConfig(path="a.en", format="text", target_path="a.pt")
        try:
            pairs = list(read_corpus(spec, Path(tmp), ReadStats()))
        except DataError as err:
            assert "different line counts" in str(err) and len(src) != len(tgt)
            return
    assert len(src) == len(tgt)
    assert all(number <= len(src) for number, _, _ in pairs)


# --- config loader ------------------------------------------------------------------------
KEYS = ["name", "data", "model", "train", "decode", "attention", "lr", "beam", "dropout",
        "corpora", "path", "type", "score", "vocab_size", "betas", "seed", "bogus"]
scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=True), st.text(max_size=6))
value = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12)
raw_config = st.dictionaries(st.sampled_from(KEYS), value, max_size=5)


@given(raw=st.one_of(raw_config, value))
@settings(deadline=None)
def test_config_loader_returns_a_config_or_names_the_keys(raw):
    try:
        cfg = from_dict(raw)
    except ConfigError as err:
        assert err.problems
        for problem in err.problems:
            assert ":" in problem and "\n" not in problem
        return
    assert isinstance(cfg, Config)
    assert from_dict(to_dict(cfg)) == cfg


# --- tokenizer ----------------------------------------------------------------------------
ALPHABET = string.ascii_letters + string.digits + " .,!?'-áàâãçéêíóôõúÁÉÇÕ"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    lines = [line.replace("\t", " ") for line in TINY_CORPUS.read_text().splitlines()]
    lines.append(ALPHABET)  # every character seen at least once
    model = train_model(lines, vocab_size=100, model_type="unigram", character_coverage=1.0)
    return Tokenizer(model, model)


@given(text=st.text(alphabet=ALPHABET, max_size=80))
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_tokenizer_round_trip(tokenizer, text):
    text = normalize(text)
    (ids,) = tokenizer.encode_tgt([text])
    assert all(0 <= i < tokenizer.tgt_vocab_size for i in ids)
    assert tokenizer.decode_tgt([ids]) == [text]

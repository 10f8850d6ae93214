"""Corpus readers, cleaning, the leakage filter and the deterministic split.

Readers stream `(line_number, english, portuguese)` from one corpus and count the lines they skip
by reason. Formats (`data.corpora[].format`):

    tsv      English<TAB>Portuguese
    anki     English<TAB>Portuguese<TAB>attribution   (Tatoeba/Anki export; attribution dropped)
    tatoeba  eng<TAB>por<TAB>English<TAB>Portuguese        (Tatoeba challenge)
    text     two line-aligned files, English and Portuguese
    auto     tsv, anki or tatoeba by the column count of the first non-empty line
"""

from __future__ import annotations

import hashlib
import itertools
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nmt.config import CorpusConfig, DataConfig
from nmt.errors import DataError

_COLUMNS = {"tsv": 2, "anki": 3, "tatoeba": 4}
_FORMAT_BY_COLUMNS = {n: name for name, n in _COLUMNS.items()}
FIRST_LINES_KEPT = 3  # line numbers remembered per skip reason


@dataclass
class ReadStats:
    """Lines read and skipped, by reason, with the first few line numbers of each reason."""

    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < FIRST_LINES_KEPT:
            seen.append(where)


def normalize(text: str) -> str:
    """Unicode NFC and single spaces; the same function runs on training data and user input."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _raw_lines(path: Path) -> Iterator[bytes]:
    try:
        handle = path.open("rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    with handle:
        yield from handle


def _decode(raw: bytes, where: str, stats: ReadStats, max_chars: int) -> str | None:
    """One line as text without BOM and line ending, or None (counted in `stats`)."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    raw = raw.rstrip(b"\r\n")
    if len(raw) > 4 * max_chars:
        stats.skip("line too long", where)
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.skip("invalid UTF-8", where)
        return None
    if len(text) > max_chars:
        stats.skip("line too long", where)
        return None
    return text


def _decode_lines(path: Path, stats: ReadStats, max_chars: int) -> Iterator[tuple[int, str]]:
    """Yields (line number, text) of decodable lines."""
    for number, raw in enumerate(_raw_lines(path), start=1):
        stats.read += 1
        text = _decode(raw, f"{path.name}:{number}", stats, max_chars)
        if text is not None:
            yield number, text


def read_lines(path: Path) -> list[str]:
    """A whole text file as lines (one sentence a line); BOM and CRLF removed."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a text file")
    if not (path.is_file() or path.is_fifo()):  # a device such as /dev/zero never ends
        raise DataError(f"{path}: not a regular file or pipe, expected a text file")
    lines = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8").lstrip("\ufeff").rstrip("\r\n"))
            except UnicodeDecodeError:
                raise DataError(f"{path}:{number}: invalid UTF-8") from None
    if not lines:
        raise DataError(f"{path}: empty file, expected one sentence a line")
    return lines


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: corpus file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a corpus file")


def _read_columns(path: Path, fmt: str, stats: ReadStats, max_chars: int):
    columns = _COLUMNS.get(fmt)
    for number, line in _decode_lines(path, stats, max_chars):
        if not line.strip():
            stats.skip("empty line", f"{path.name}:{number}")
            continue
        parts = line.split("\t")
        if columns is None:
            fmt = _FORMAT_BY_COLUMNS.get(len(parts), "")
            columns = _COLUMNS.get(fmt)
            if columns is None:
                raise DataError(
                    f"{path}:{number}: cannot tell the format from {len(parts)} tab-separated "
                    f"columns (expected 2, 3 or 4; set data.corpora[].format)"
                )
        if len(parts) != columns:
            stats.skip(f"not {columns} columns", f"{path.name}:{number}")
            continue
        src, tgt = (parts[2], parts[3]) if fmt == "tatoeba" else (parts[0], parts[1])
        yield number, src, tgt


def _read_text_pair(src_path: Path, tgt_path: Path, stats: ReadStats, max_chars: int):
    """Line-aligned files: a line undecodable on either side drops the pair."""
    for number, (s_raw, t_raw) in enumerate(
        itertools.zip_longest(_raw_lines(src_path), _raw_lines(tgt_path)), start=1
    ):
        if s_raw is None or t_raw is None:
            raise DataError(
                f"{src_path} and {tgt_path} have different line counts "
                f"({_count_lines(src_path)} and {_count_lines(tgt_path)}): "
                f"a text pair must be line-aligned"
            )
        stats.read += 1
        src = _decode(s_raw, f"{src_path.name}:{number}", stats, max_chars)
        if src is None:
            continue
        tgt = _decode(t_raw, f"{tgt_path.name}:{number}", stats, max_chars)
        if tgt is None:
            continue
        if not src.strip() and not tgt.strip():
            stats.skip("empty line", f"{src_path.name}:{number}")
            continue
        yield number, src, tgt


def _count_lines(path: Path) -> int:
    return sum(1 for _ in _raw_lines(path))


def read_corpus(spec: CorpusConfig, root: Path, stats: ReadStats,
                max_chars: int = 2000) -> Iterator[tuple[int, str, str]]:
    """Streams raw `(line number, English, Portuguese)` from one corpus; skips count in `stats`."""
    path = _resolve(spec.path, root)
    _check_file(path)
    if spec.format == "text":
        tgt_path = _resolve(spec.target_path or "", root)
        _check_file(tgt_path)
        yield from _read_text_pair(path, tgt_path, stats, max_chars)
    else:
        yield from _read_columns(path, spec.format, stats, max_chars)


def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def corpus_paths(spec: CorpusConfig, root: Path) -> list[Path]:
    paths = [_resolve(spec.path, root)]
    if spec.target_path:
        paths.append(_resolve(spec.target_path, root))
    return paths


@dataclass
class CleanStats:
    """Pairs dropped by the cleaning filters, by reason."""

    dropped: Counter = field(default_factory=Counter)
    kept: int = 0


class Cleaner:
    """Normalises pairs and applies the filters of `DataConfig`, including deduplication and
    the leakage filter (pairs with a side that appears in an evaluation file are dropped)."""

    def __init__(self, cfg: DataConfig, protected: set[str]) -> None:
        self.cfg = cfg
        self.protected = protected
        self.seen: set[bytes] = set()
        self.stats = CleanStats()

    def __call__(self, src: str, tgt: str) -> tuple[str, str] | None:
        reason = self._reject(src, tgt)
        if reason:
            self.stats.dropped[reason] += 1
            return None
        self.stats.kept += 1
        return normalize(src), normalize(tgt)

    def _reject(self, src: str, tgt: str) -> str | None:
        if has_control_chars(src) or has_control_chars(tgt):
            return "control characters"
        src, tgt = normalize(src), normalize(tgt)
        if not src or not tgt:
            return "empty side"
        ns, nt = len(src.split()), len(tgt.split())
        if min(ns, nt) < self.cfg.min_words or max(ns, nt) > self.cfg.max_words:
            return "length"
        if max(ns, nt) / min(ns, nt) > self.cfg.max_ratio:
            return "length ratio"
        if src in self.protected or tgt in self.protected:
            return "in an evaluation set"
        key = hashlib.blake2b(f"{src}\t{tgt}".encode(), digest_size=16).digest()
        if key in self.seen:
            return "duplicate"
        self.seen.add(key)
        return None


def read_protected(paths: list[Path]) -> set[str]:
    """Normalised sentences of evaluation files (plain text, or TSV: every column is taken)."""
    sentences: set[str] = set()
    for path in paths:
        _check_file(path)
        stats = ReadStats()
        for _, line in _decode_lines(path, stats, max_chars=10**6):
            for column in line.split("\t"):
                if column.strip():
                    sentences.add(normalize(column))
    return sentences


def split_key(src: str) -> bytes:
    """The split is decided by a hash of the lower-cased English side, so that every pair with
    the same English sentence falls in the same split on any machine."""
    return hashlib.sha256(src.lower().encode("utf-8")).digest()[:8]


def assign_splits(keys: list[bytes], valid_size: int, test_size: int) -> list[str]:
    """Orders distinct keys by hash; the first `test_size` pairs go to test, the next
    `valid_size` to valid, the rest to train. Deterministic for a given set of pairs."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    splits = ["train"] * len(keys)
    taken = {"test": 0, "valid": 0}
    current, prev_key = None, None
    for i in order:
        if keys[i] != prev_key:
            if taken["test"] < test_size:
                current = "test"
            elif taken["valid"] < valid_size:
                current = "valid"
            else:
                current = "train"
            prev_key = keys[i]
        splits[i] = current
        if current != "train":
            taken[current] += 1
    return splits

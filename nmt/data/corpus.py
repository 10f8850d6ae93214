"""Corpus readers, cleaning, the leakage filter and the deterministic split.

Readers stream `(line_number, source, target)` from one corpus, in the languages of
`data.src_lang` and `data.tgt_lang`, and count the lines they skip by reason. Formats
(`data.corpora[].format`), for the pair en-pt:

    tsv      English<TAB>Portuguese
    anki     English<TAB>Portuguese<TAB>attribution   (Tatoeba/Anki export; attribution dropped)
    tatoeba  eng<TAB>por<TAB>English<TAB>Portuguese        (Tatoeba challenge)
    text     two line-aligned files, `path` and `target_path` (source and target by default)
    auto     tsv, anki or tatoeba by the column count of the first non-empty line

Columns are read by language, not by position: a tsv or anki corpus's `columns` names the
languages of its two text columns (default: `nmt.languages.default_columns`), a text corpus's
`columns` those of `path` and `target_path` (default: path is the source), and a tatoeba line
names its own, so one file (or pair of files) trains both directions.
"""

from __future__ import annotations

import hashlib
import itertools
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nmt import languages
from nmt.config import CorpusConfig, DataConfig
from nmt.errors import ConfigError, DataError

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


class _Sides:
    """Which text column of a line holds the source: from the corpus's `columns`, or, for a
    tatoeba line, from the language codes it carries."""

    def __init__(self, path: Path, columns: tuple[str, ...], pair: tuple[str, str]) -> None:
        self.path, self.pair = path, pair
        self.swapped = {}  # (language, language) -> whether the first column is the target
        self.columns = self._swapped(tuple(columns), f"{path}: columns")

    def _swapped(self, codes: tuple[str, ...], where: str) -> bool:
        if codes not in self.swapped:
            found = [languages.canonical(c) for c in codes]
            wanted = [languages.canonical(c) for c in self.pair]
            if found not in (wanted, wanted[::-1]):
                raise ConfigError([f"{where} {'-'.join(codes)} is not the pair of data.src_lang "
                                   f"and data.tgt_lang ({' and '.join(self.pair)})"])
            self.swapped[codes] = found != wanted
        return self.swapped[codes]

    def tatoeba(self, first: str, second: str, number: int) -> bool | None:
        """Whether a tatoeba line's first text column is the target; None: its code columns
        are not language codes."""
        codes = (first.split("_")[0], second.split("_")[0])  # srp_Cyrl: a script subtag
        if not all(languages.is_code(c) for c in codes):
            return None
        return self._swapped((first, second), f"{self.path}:{number}: a tatoeba line of")


def _read_columns(path: Path, fmt: str, stats: ReadStats, max_chars: int, sides: _Sides):
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
        if fmt == "tatoeba":
            swapped = sides.tatoeba(parts[0], parts[1], number)
            if swapped is None:
                stats.skip("no language codes", f"{path.name}:{number}")
                continue
            first, second = parts[2], parts[3]
        else:
            swapped, first, second = sides.columns, parts[0], parts[1]
        yield (number, second, first) if swapped else (number, first, second)


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


def read_corpus(spec: CorpusConfig, root: Path, stats: ReadStats, max_chars: int = 2000,
                pair: tuple[str, str] = ("en", "pt")) -> Iterator[tuple[int, str, str]]:
    """Streams raw `(line number, source, target)` from one corpus, `pair` being the source and
    target languages; skips count in `stats`. A corpus of other languages is a ConfigError."""
    path = _resolve(spec.path, root)
    _check_file(path)
    if spec.format == "text":
        other = _resolve(spec.target_path or "", root)
        _check_file(other)
        if spec.columns and _Sides(path, spec.columns, pair).columns:  # path holds the target
            path, other = other, path
        yield from _read_text_pair(path, other, stats, max_chars)
    else:
        columns = spec.columns or languages.default_columns(*pair)
        yield from _read_columns(path, spec.format, stats, max_chars, _Sides(path, columns, pair))


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


def split_key(sentence: str) -> bytes:
    """The split is decided by a hash of one side, lower-cased, so that every pair with the same
    sentence on that side falls in the same split on any machine. The side is the one whose
    language code sorts first (`nmt.languages.key_side`; en-pt: English), so a model of each
    direction trained on the same corpora gets the same split (and `unshared` keeps the other
    side's held-out sentences out of training)."""
    return hashlib.sha256(sentence.lower().encode("utf-8")).digest()[:8]


def unshared(splits: list[str], others: list[bytes]) -> list[str | None]:
    """Each pair's split, or None for a pair dropped because it shares a sentence of the side
    that is not hashed (`others`: `split_key` of it) with a pair held out for evaluation: a
    training pair sharing one with a validation or test pair, a validation pair sharing one
    with a test pair. The hashed side keeps each of its sentences in one split already; this
    does it for the other side, so neither direction's test sources are seen in training,
    and the held-out pairs stay the ones the hash chose."""
    held: dict[str, set[bytes]] = {"test": set(), "valid": set()}
    for split, key in zip(splits, others):
        if split in held:
            held[split].add(key)
    later = {"train": ("valid", "test"), "valid": ("test",), "test": ()}
    return [None if any(key in held[h] for h in later[split]) else split
            for split, key in zip(splits, others)]


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

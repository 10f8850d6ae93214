"""The data pipeline, raw corpora to a cached, split, encoded dataset.

    corpora --read--> raw pairs --clean/filter/dedup/leakage--> pairs --split--> train/valid/test
    train split --SentencePiece--> models --encode--> ids (flat arrays + offsets, .npz)

A fine-tuned run brings its parent's SentencePiece models: they encode the new corpora instead of
models trained on them, and their digest joins the cache key (nmt.training.finetune).

Each pair keeps the index of its corpus in `data.corpora` (`corpus` in the .npz), which corpus
weights read when an epoch is composed (nmt.data.batching), and its line in the split's text
files (`line`; pairs over `data.max_pieces` are dropped from the ids, not from the text), from
which subword sampling segments training pairs anew (nmt.data.sampling).

Text files and SentencePiece models are named by language (`train.en`, `spm.pt.model`), so the
two directions of a pair of languages prepare the same text files; the manifest records which
language is the source and which the target.

The result lives in `data.prepared_dir/<key>/`, where the key hashes the data config (but not
the corpus weights or the subword sampling, training choices) and the bytes of every input
file; a manifest with each output's size and sha256 is written last, so a half-written or
corrupted cache is detected and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nmt import languages, lock
from nmt.config import DataConfig, data_dir
from nmt.data.batching import weighted
from nmt.data.corpus import (
    Cleaner,
    ReadStats,
    assign_splits,
    corpus_paths,
    read_corpus,
    read_protected,
    split_key,
    unshared,
)
from nmt.data.tokenizer import Tokenizer, chunks, train_model
from nmt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PIPELINE_VERSION = 2  # 2: training pairs sharing a held-out sentence of either side dropped
SPLITS = ("train", "valid", "test")
DEFAULT_PAIR = ("en", "pt")  # keyed as before languages were settings: the same cache entries
ENCODE_CHUNK = 10_000
# data settings outside the cache key (corpus weights too): where the files are, and how
# training reads the prepared data
UNKEYED = ("dir", "prepared_dir", "sampling_alpha", "sampling_nbest")


@dataclass
class Summary:
    """What `prepare` did, for the table printed by `nmt data prepare`."""

    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_where: dict[str, list[str]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    kept: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    vocab: dict[str, int] = field(default_factory=dict)
    avg_pieces: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False


@dataclass
class Prepared:
    """A prepared dataset on disk; `src_lang` and `tgt_lang` name its text files and models."""

    path: Path
    summary: Summary
    src_lang: str
    tgt_lang: str

    def tokenizer(self) -> Tokenizer:
        return Tokenizer(self.spm(self.src_lang).read_bytes(),
                         self.spm(self.tgt_lang).read_bytes())

    def spm(self, lang: str) -> Path:
        """The SentencePiece model of a language."""
        return self.path / f"spm.{lang}.model"

    def text(self, split: str, lang: str) -> Path:
        """A split's sentences in one language (`prepared.text("test", prepared.src_lang)`)."""
        return self.path / f"{split}.{lang}"

    def lines(self, split: str, lang: str) -> list[str]:
        """The split's normalised sentences in one language, one per line of `text`."""
        return list(_lines(self.text(split, lang)))

    def ids(self, split: str) -> Path:
        return self.path / f"{split}.npz"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inputs(cfg: DataConfig) -> tuple[list, list[Path]]:
    """The corpora that exist, as (index in data.corpora, spec, paths) (missing optional ones
    are skipped), and the evaluation files."""
    root = data_dir(cfg)
    corpora = []
    for index, spec in enumerate(cfg.corpora):
        paths = corpus_paths(spec, root)
        missing = [p for p in paths if not p.exists()]
        if missing and not spec.required:
            log.warning("skipping optional corpus %s: not found", missing[0])
            continue
        if missing:
            raise DataError(f"{missing[0]}: corpus file not found (run `nmt data download NAME`, "
                            f"or set NMT_DATA_DIR to the folder that holds it)")
        corpora.append((index, spec, paths))
    if not cfg.corpora:
        raise ConfigError(["data.corpora: expected at least one corpus, got []"])
    if not corpora:
        raise DataError("data.corpora: every corpus is optional and none was found")
    return corpora, [Path(p) for p in cfg.exclude]


def pair(cfg: DataConfig) -> tuple[str, str]:
    """The source and target language codes, as files name them (`por` is `pt`)."""
    return languages.canonical(cfg.src_lang), languages.canonical(cfg.tgt_lang)


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    """The sha256 of a tokenizer's source and target SentencePiece models."""
    h = hashlib.sha256()
    for model in (tokenizer.src_model, tokenizer.tgt_model):
        h.update(hashlib.sha256(model).digest())
    return h.hexdigest()


def cache_key(cfg: DataConfig, tokenizer: Tokenizer | None = None) -> str:
    """The cache entry of `cfg`; `tokenizer`: the given SentencePiece models encode the corpora
    (keyed by their digest, apart from the models trained on the corpora)."""
    corpora, protected = _inputs(cfg)
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in UNKEYED + ("src_lang", "tgt_lang")}
    if pair(cfg) != DEFAULT_PAIR:
        settings["pair"] = pair(cfg)
    if tokenizer is not None:
        settings["tokenizer"] = tokenizer_digest(tokenizer)
    settings["corpora"] = [{k: v for k, v in c.items()
                            if k != "weight" and not (k == "columns" and v is None)}
                           for c in settings["corpora"]]
    h = hashlib.sha256(json.dumps([PIPELINE_VERSION, settings], sort_keys=True).encode())
    for path in [p for _, _, paths in corpora for p in paths] + protected:
        if path.is_dir():
            raise DataError(f"{path}: is a directory, expected a corpus file")
        if not path.is_file():  # a FIFO or a device: it could not be read twice, or never ends
            raise DataError(f"{path}: not a regular file, expected a corpus file")
        h.update(_file_digest(path).encode())
    return h.hexdigest()[:16]


def _load_manifest(path: Path, key: str) -> Summary | None:
    """The cached summary if every output file matches the manifest, else None."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest["key"] != key:
            return None
        for name, (size, digest) in manifest["files"].items():
            f = path / name
            if not f.is_file() or f.stat().st_size != size or _file_digest(f) != digest:
                log.warning("prepared data in %s is damaged (%s); rebuilding", path, name)
                return None
        return Summary(**manifest["summary"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prepare(cfg: DataConfig, progress: bool = True, origins: bool = False,
            tokenizer: Tokenizer | None = None) -> Prepared:
    """Prepares (or reuses the cached) dataset for `cfg`. One process at a time works on a
    cache entry; another waits for it, then finds the entry ready. `origins`: the caller reads
    each pair's corpus and line in every split (a cache that lacks them is prepared again).
    `tokenizer`: encode with these SentencePiece models (a parent run's, source and target as
    data.src_lang and data.tgt_lang) instead of training new ones."""
    key = cache_key(cfg, tokenizer)
    Path(cfg.prepared_dir).mkdir(parents=True, exist_ok=True)
    out = Path(cfg.prepared_dir) / key
    with lock.hold(Path(cfg.prepared_dir) / f".{key}.lock", f"prepared data {out}", wait=True):
        return _prepare(cfg, key, out, progress, origins, tokenizer)


def _prepare(cfg: DataConfig, key: str, out: Path, progress: bool, origins: bool,
             tokenizer: Tokenizer | None) -> Prepared:
    summary = _load_manifest(out, key) if out.exists() else None
    missing = _missing_records(out, cfg, origins) if summary is not None else None
    if missing:
        log.info("prepared data in %s does not record each pair's %s; preparing it again",
                 out, missing)
        summary = None
    if summary is not None:
        summary.cached = True
        log.info("using cached prepared data %s", out)
        return Prepared(out, summary, *pair(cfg))
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cfg.prepared_dir))
    try:
        summary = _build(cfg, work, progress, tokenizer)
        _write_manifest(work, key, summary, pair(cfg))
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return Prepared(out, summary, *pair(cfg))


def _missing_records(path: Path, cfg: DataConfig, origins: bool = False) -> str | None:
    """What `cfg` (or a caller asking for `origins`) needs to know of each pair that prepared
    data written by an older nmt does not record: its corpus (for corpus weights), its line
    (for subword sampling); with `origins`, both, in every split."""
    needed = {"corpus": "corpus, which corpus weights need",
              "line": "line in the text, which subword sampling needs"}
    if not (origins or weighted([c.weight for c in cfg.corpora])):
        del needed["corpus"]
    if not (origins or cfg.sampling_alpha):
        del needed["line"]
    missing: list[str] = []
    for split in SPLITS if origins else ("train",):
        try:
            with np.load(path / f"{split}.npz") as z:
                missing += [why for name, why in needed.items() if name not in z.files]
        except (OSError, ValueError):
            missing += list(needed.values())
    return " and ".join(dict.fromkeys(missing)) or None


def _build(cfg: DataConfig, work: Path, progress: bool, given: Tokenizer | None) -> Summary:
    start = time.perf_counter()
    corpora, protected_files = _inputs(cfg)
    cleaner = Cleaner(cfg, read_protected(protected_files))
    langs = pair(cfg)
    hashed = languages.key_side(*langs)  # the side the split hashes: the same in both directions
    stats = ReadStats()
    keys: list[bytes] = []
    others: list[bytes] = []  # the other side's keys (`unshared`)
    origins = array("i")  # each kept pair's index in data.corpora
    cleaned = work / "cleaned.tsv"
    with cleaned.open("w", encoding="utf-8") as f:
        bar = tqdm(desc="reading", unit=" pairs", disable=None if progress else True,
                   mininterval=0.5)
        for index, spec, paths in corpora:
            before = len(keys)
            for _, src, tgt in read_corpus(spec, data_dir(cfg), stats, cfg.max_chars, langs):
                bar.update()
                cleaned_pair = cleaner(src, tgt)
                if cleaned_pair is not None:
                    f.write(f"{cleaned_pair[0]}\t{cleaned_pair[1]}\n")
                    keys.append(split_key(cleaned_pair[hashed]))
                    others.append(split_key(cleaned_pair[1 - hashed]))
                    origins.append(index)
            if len(keys) == before:
                raise DataError(f"{paths[0]}: no usable pair in this corpus (lines skipped: "
                                f"{dict(stats.skipped)}; pairs dropped: "
                                f"{dict(cleaner.stats.dropped)})")
        bar.close()
    splits = unshared(assign_splits(keys, cfg.valid_size, cfg.test_size), others)
    split_origins = _write_splits(cleaned, splits, origins, work, langs)
    cleaned.unlink()
    tokenizer = (_given_tokenizer(given, work, langs) if given
                 else _train_tokenizer(cfg, work, langs))
    summary = Summary(read=stats.read, skipped=dict(stats.skipped),
                      skipped_where=stats.examples, dropped=dict(cleaner.stats.dropped),
                      kept=len(keys) - splits.count(None))
    if None in splits:
        summary.dropped["shares a held-out sentence"] = splits.count(None)
    for split in SPLITS:
        n, avg, too_long = _encode_split(tokenizer, work, split, split_origins[split],
                                         cfg.max_pieces if split == "train" else None, langs)
        summary.splits[split] = n
        summary.avg_pieces.update({f"{split}.{lang}": a for lang, a in zip(langs, avg)})
        if too_long:
            summary.dropped["too many pieces"] = too_long
            summary.kept -= too_long
    summary.vocab = {langs[0]: tokenizer.src_vocab_size, langs[1]: tokenizer.tgt_vocab_size}
    summary.seconds = time.perf_counter() - start
    return summary


def _write_splits(cleaned: Path, splits: list[str | None], origins: array, work: Path,
                  langs: tuple[str, str]) -> dict[str, array]:
    """Writes each split's text files; returns each split's corpus indices, in order."""
    src_lang, tgt_lang = langs
    handles = {(s, lang): (work / f"{s}.{lang}").open("w", encoding="utf-8")
               for s in SPLITS for lang in langs}
    split_origins = {s: array("i") for s in SPLITS}
    try:
        with cleaned.open(encoding="utf-8") as f:
            for line, split, origin in zip(f, splits, origins):
                if split is None:
                    continue
                src, tgt = line.rstrip("\n").split("\t")
                handles[split, src_lang].write(src + "\n")
                handles[split, tgt_lang].write(tgt + "\n")
                split_origins[split].append(origin)
    finally:
        for h in handles.values():
            h.close()
    return split_origins


def _lines(path: Path):
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def _train_tokenizer(cfg: DataConfig, work: Path, langs: tuple[str, str]) -> Tokenizer:
    """One model per language, or a joint one trained on the languages in code order, so that
    both directions of a pair of languages get the same model."""
    args = (cfg.vocab_size, cfg.spm_type, cfg.character_coverage)
    src_lang, tgt_lang = langs
    if cfg.joint_vocab:
        def both():
            for lang in sorted(langs):
                yield from _lines(work / f"train.{lang}")
        src = tgt = train_model(both(), *args)
    else:
        src = train_model(_lines(work / f"train.{src_lang}"), *args)
        tgt = train_model(_lines(work / f"train.{tgt_lang}"), *args)
    (work / f"spm.{src_lang}.model").write_bytes(src)
    (work / f"spm.{tgt_lang}.model").write_bytes(tgt)
    return Tokenizer(src, tgt)


def _given_tokenizer(tokenizer: Tokenizer, work: Path, langs: tuple[str, str]) -> Tokenizer:
    """Writes the given models as the two languages' models, as `_train_tokenizer` does."""
    (work / f"spm.{langs[0]}.model").write_bytes(tokenizer.src_model)
    (work / f"spm.{langs[1]}.model").write_bytes(tokenizer.tgt_model)
    return tokenizer


def _encode_split(tok: Tokenizer, work: Path, split: str, origins: array,
                  max_pieces: int | None,
                  langs: tuple[str, str]) -> tuple[int, tuple[float, float], int]:
    """Encodes a split in chunks into flat id arrays, with each pair's corpus index and line;
    returns (pairs, avg pieces, dropped)."""
    src_ids: list[np.ndarray] = []
    tgt_ids: list[np.ndarray] = []
    src_len: list[int] = []
    tgt_len: list[int] = []
    corpus, lines = array("i"), array("i")
    dropped = 0
    src_text, tgt_text = (work / f"{split}.{lang}" for lang in langs)
    pairs = enumerate(zip(_lines(src_text), _lines(tgt_text), origins))
    for chunk in chunks(pairs, ENCODE_CHUNK):
        srcs = tok.encode_src([s for _, (s, _, _) in chunk])
        tgts = tok.encode_tgt([t for _, (_, t, _) in chunk])
        for s, t, (line, (_, _, origin)) in zip(srcs, tgts, chunk):
            if max_pieces is not None and max(len(s), len(t)) > max_pieces:
                dropped += 1
                continue
            src_ids.append(np.asarray(s, dtype=np.int32))
            tgt_ids.append(np.asarray(t, dtype=np.int32))
            src_len.append(len(s))
            tgt_len.append(len(t))
            corpus.append(origin)
            lines.append(line)
    n = len(src_len)
    empty = np.zeros(0, dtype=np.int32)
    np.savez(work / f"{split}.npz",
             src=np.concatenate(src_ids) if n else empty, src_len=np.asarray(src_len, np.int32),
             tgt=np.concatenate(tgt_ids) if n else empty, tgt_len=np.asarray(tgt_len, np.int32),
             corpus=np.asarray(corpus, np.int32), line=np.asarray(lines, np.int32))
    avg = (float(np.mean(src_len)) if n else 0.0, float(np.mean(tgt_len)) if n else 0.0)
    return n, avg, dropped


def _write_manifest(work: Path, key: str, summary: Summary, langs: tuple[str, str]) -> None:
    files = {p.name: [p.stat().st_size, _file_digest(p)] for p in sorted(work.iterdir())}
    manifest = {"key": key, "version": PIPELINE_VERSION, "src_lang": langs[0],
                "tgt_lang": langs[1], "files": files, "summary": asdict(summary)}
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))

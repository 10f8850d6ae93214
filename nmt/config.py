"""Typed, frozen configuration with defaults in one place and a strict loader.

A YAML file has four sections, `data`, `model`, `train` and `decode`; every key is a field of the
dataclasses below (the comment beside each field is its documentation). `load_config` rejects
unknown keys, wrong types, invalid choices, out-of-range values and inconsistent combinations,
naming each by its dotted path, and reports all of them in one `ConfigError`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nmt import languages
from nmt.errors import ConfigError

DATA_DIR_ENV = "NMT_DATA_DIR"  # overrides `data.dir`: where relative corpus paths are read from


@dataclass(frozen=True)
class CorpusConfig:
    path: str  # corpus file (source side for `format: text`); relative paths are under data.dir
    format: Literal["auto", "tsv", "anki", "tatoeba", "text"] = "auto"  # auto: by column count
    target_path: str | None = None  # target-side file of a `format: text` pair of files
    # tsv/anki: the languages of the two text columns; null: English first when a side is
    # English, else [src_lang, tgt_lang]. text: the languages of path and target_path; null:
    # path is the source. (A tatoeba file names its own.)
    columns: tuple[str, ...] | None = None  # languages of the columns (text: files), e.g. [en, pt]
    required: bool = True  # false: a missing file is skipped with a warning
    weight: float = 1.0  # training pairs per epoch: weight x the corpus's (2: each twice)


@dataclass(frozen=True)
class DataConfig:
    src_lang: str = "en"  # source language code (ISO 639-1 or -3: en, pt, por, pt-BR, ...)
    tgt_lang: str = "pt"  # target language code
    corpora: tuple[CorpusConfig, ...] = ()  # the parallel corpora, combined in this order
    dir: str = "data"  # folder of relative corpus paths (env NMT_DATA_DIR overrides it)
    prepared_dir: str = "data/prepared"  # cache of cleaned, split, encoded data
    exclude: tuple[str, ...] = ()  # evaluation files whose sentences are removed from training
    min_words: int = 1  # drop pairs with a side shorter than this (words)
    max_words: int = 50  # drop pairs with a side longer than this (words)
    max_ratio: float = 3.0  # drop pairs whose word-length ratio exceeds this
    max_chars: int = 2000  # lines longer than this (characters) are skipped before cleaning
    valid_size: int = 1000  # pairs held out for validation (by hash of one side: see docs)
    test_size: int = 2000  # pairs held out for testing
    vocab_size: int = 8000  # SentencePiece vocabulary size (per model)
    spm_type: Literal["unigram", "bpe"] = "unigram"  # SentencePiece model type
    joint_vocab: bool = True  # one model for both languages, or one per language
    character_coverage: float = 1.0  # SentencePiece character coverage
    max_pieces: int = 100  # training pairs longer than this (subword pieces) are dropped
    sampling_alpha: float = 0.0  # subword sampling in training (0: off): unigram alpha, BPE-dropout
    sampling_nbest: int = -1  # unigram: sample among the n best segmentations (-1: all)


@dataclass(frozen=True)
class AttentionConfig:
    type: Literal["none", "global", "local-m", "local-p", "hard"] = "global"  # states attended
    score: Literal["additive", "dot", "general"] = "additive"  # Bahdanau MLP, Luong dot/bilinear
    wiring: Literal["luong", "bahdanau"] = "luong"  # attend with the new or the previous state
    size: int = 256  # hidden size of the additive scorer and of the local-p position predictor
    window: int = 5  # D: local attention looks at source positions [p_t - D, p_t + D]
    temperature: float = 1.0  # Gumbel-softmax temperature of hard attention in training
    coverage: bool = False  # add the attention history to the score (global + additive only)
    heads: int = 1  # heads of multi-head additive attention (global + additive only)


@dataclass(frozen=True)
class ModelConfig:
    emb_size: int = 256  # source and target embedding size (E)
    hidden_size: int = 256  # encoder LSTM size per direction
    decoder_size: int = 512  # decoder LSTM and attentional-state size (H)
    enc_layers: int = 1  # bidirectional encoder layers
    dec_layers: int = 1  # decoder LSTM layers
    dropout: float = 0.2  # on embeddings, between LSTM layers and on the attentional state
    bridge: Literal["projection", "zeros"] = "projection"  # decoder initial state
    input_feeding: bool = True  # feed h~_{t-1} to the next step (luong wiring; bahdanau feeds c_t)
    tie_embeddings: bool = False  # share target embeddings and output layer (needs E == H)
    layer_norm: bool = False  # layer-normalised decoder LSTM cells (Ba et al. 2016)
    attention: AttentionConfig = field(default_factory=AttentionConfig)


ScheduleKind = Literal["plateau", "warmup_decay", "constant", "linear", "cosine"]


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1  # fixes data order, initialisation and dropout
    batch_tokens: int = 2000  # batch budget: sentences x longest side (padded tokens)
    lr: float = 0.001  # Adam learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    clip_norm: float = 5.0  # gradient-norm clipping (0 disables)
    label_smoothing: float = 0.1  # label smoothing of the cross-entropy loss
    schedule: ScheduleKind = "plateau"  # learning-rate schedule (linear/cosine: see min_lr)
    warmup_steps: int = 0  # linear warm-up steps (all schedules)
    decay_factor: float = 0.5  # plateau: lr multiplier when the metric stalls
    decay_patience: int = 2  # plateau: validations without improvement before decaying
    min_lr: float = 1.0e-5  # lower bound of the lr; linear/cosine reach it when the budget ends
    decay_fraction: float = 1.0  # linear/cosine decay over this last part of the budget (0.2: 20%)
    max_steps: int = 0  # stop after this many updates (0: no limit)
    max_epochs: int = 0  # stop after this many epochs (0: no limit)
    max_minutes: float = 0.0  # stop after this much training time (0: no limit)
    valid_every: int = 500  # validate every N updates
    valid_max_sentences: int = 0  # translate at most this many validation pairs (0: all)
    metric: Literal["bleu", "chrf", "loss"] = "bleu"  # selects the best checkpoint
    patience: int = 0  # stop after N validations without improvement (0: never)
    keep_best: int = 2  # best checkpoints kept besides last.pt
    average_last: int = 0  # average the last K validation checkpoints into averaged.pt (0: off)
    threads: int = 0  # CPU threads for torch (0: torch's default)
    device: Literal["auto", "cpu", "cuda"] = "cpu"  # where to train
    # auto: bf16 where the CPU (avx512_bf16, amx_bf16, Arm bf16: probed once) or the GPU
    # computes it natively, else fp32 (fp16 on GPUs without bf16)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 if native, else fp32
    accumulate: int = 1  # batches per update (per process): update size x this, as one batch
    log_every: int = 50  # log a progress line every N updates
    tensorboard: bool = False  # also write TensorBoard event files into the run's tensorboard/
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row
    # fine-tuning: a new run starts from the weights and tokenizer of a run directory (its
    # best.pt) or checkpoint, whose model.* (dropout aside), vocabulary and languages it shares
    init_from: str | None = None  # fine-tune from this run directory (its best.pt) or checkpoint
    init_optimizer: bool = False  # with init_from: also its Adam moments (step, lr start fresh)


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = 5  # beam size (1: greedy)
    length_penalty: float = 1.0  # alpha of the GNMT length penalty ((5 + len) / 6) ** alpha
    max_len_ratio: float = 2.0  # output at most ratio x source pieces + max_len_add
    max_len_add: int = 10  # see max_len_ratio
    batch_size: int = 64  # sentences translated together
    n_best: int = 1  # hypotheses returned per sentence
    early_stop: bool = False  # end a sentence once its best candidate ends (else: beam have)
    # auto, on a CPU: int8 (8-bit weights in the decoder) where its products work, else bf16
    # where native, else fp32; on a GPU: fp32
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"  # of search; auto: the fastest


@dataclass(frozen=True)
class Config:
    name: str = "run"  # run folder runs/<name>/: 1-100 letters, digits, . _ - (no leading . or -)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")  # a folder name, never a path
MAX_WIDTH = 1_000_000  # largest embedding, LSTM, attention size and attention window
MAX_LAYERS = 1000  # largest number of encoder or decoder layers
MAX_THREADS = 1024  # most CPU threads torch is asked for

# Ranges, checked on the values whose type was right: (path, predicate, expectation).
_RANGES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("name", lambda v: _RUN_NAME.fullmatch(v) is not None,
     "a plain run name (letters, digits, '.', '_', '-'; no path)"),
    ("data.src_lang", languages.is_code, "a language code such as en, pt, por or pt-BR"),
    ("data.tgt_lang", languages.is_code, "a language code such as en, pt, por or pt-BR"),
    ("data.min_words", lambda v: v >= 1, ">= 1"),
    ("data.max_words", lambda v: v >= 1, ">= 1"),
    ("data.max_ratio", lambda v: v >= 1, ">= 1"),
    ("data.max_chars", lambda v: v >= 1, ">= 1"),
    ("data.valid_size", lambda v: v >= 1, ">= 1"),
    ("data.test_size", lambda v: v >= 1, ">= 1"),
    ("data.vocab_size", lambda v: 16 <= v <= 1_000_000, "in [16, 1000000]"),
    ("data.character_coverage", lambda v: 0.9 <= v <= 1, "in [0.9, 1]"),
    ("data.max_pieces", lambda v: v >= 2, ">= 2"),
    ("data.sampling_alpha", lambda v: 0 <= v <= 1, "in [0, 1] (0: off)"),
    ("data.sampling_nbest", lambda v: v == -1 or 2 <= v <= 512,
     "-1 (every segmentation) or in [2, 512]"),
    ("model.emb_size", lambda v: v >= 1, ">= 1"),
    ("model.hidden_size", lambda v: v >= 1, ">= 1"),
    ("model.decoder_size", lambda v: v >= 1, ">= 1"),
    ("model.enc_layers", lambda v: v >= 1, ">= 1"),
    ("model.dec_layers", lambda v: v >= 1, ">= 1"),
    ("model.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model.attention.size", lambda v: v >= 1, ">= 1"),
    ("model.attention.window", lambda v: v >= 1, ">= 1"),
    ("model.attention.temperature", lambda v: v > 0, "> 0"),
    ("model.attention.heads", lambda v: 1 <= v <= 64, "in [1, 64]"),
    # sizes stop where no model could be trained anyway, and no tensor's size overflows:
    # beyond them a config is refused here, below them a model too large for the device is
    # refused before it is allocated (nmt.training.memory)
    ("model.emb_size", lambda v: v <= MAX_WIDTH, f"at most {MAX_WIDTH}"),
    ("model.hidden_size", lambda v: v <= MAX_WIDTH, f"at most {MAX_WIDTH}"),
    ("model.decoder_size", lambda v: v <= MAX_WIDTH, f"at most {MAX_WIDTH}"),
    ("model.attention.size", lambda v: v <= MAX_WIDTH, f"at most {MAX_WIDTH}"),
    ("model.attention.window", lambda v: v <= MAX_WIDTH, f"at most {MAX_WIDTH}"),
    ("model.enc_layers", lambda v: v <= MAX_LAYERS, f"at most {MAX_LAYERS}"),
    ("model.dec_layers", lambda v: v <= MAX_LAYERS, f"at most {MAX_LAYERS}"),
    ("train.seed", lambda v: 0 <= v < 2 ** 32, "in [0, 2**32)"),
    ("train.batch_tokens", lambda v: v >= 1, ">= 1"),
    ("train.lr", lambda v: v > 0, "> 0"),
    ("train.betas", lambda v: all(0 <= b < 1 for b in v), "both in [0, 1)"),
    ("train.clip_norm", lambda v: v >= 0, ">= 0"),
    ("train.label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("train.decay_factor", lambda v: 0 < v < 1, "in (0, 1)"),
    ("train.decay_patience", lambda v: v >= 0, ">= 0"),
    ("train.min_lr", lambda v: v >= 0, ">= 0"),
    ("train.decay_fraction", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("train.max_steps", lambda v: v >= 0, ">= 0"),
    ("train.max_epochs", lambda v: v >= 0, ">= 0"),
    ("train.max_minutes", lambda v: v >= 0, ">= 0"),
    ("train.valid_every", lambda v: v >= 1, ">= 1"),
    ("train.valid_max_sentences", lambda v: v >= 0, ">= 0"),
    ("train.patience", lambda v: v >= 0, ">= 0"),
    ("train.keep_best", lambda v: v >= 1, ">= 1"),
    ("train.average_last", lambda v: v >= 0, ">= 0"),
    ("train.threads", lambda v: v >= 0, ">= 0"),
    ("train.threads", lambda v: v <= MAX_THREADS, f"at most {MAX_THREADS}"),
    ("train.log_every", lambda v: v >= 1, ">= 1"),
    ("train.max_bad_steps", lambda v: v >= 1, ">= 1"),
    ("train.init_from", lambda v: v is None or v.strip() != "",
     "a run directory or checkpoint file (null: none)"),
    ("train.accumulate", lambda v: v >= 1, ">= 1"),
    ("decode.beam", lambda v: v >= 1, ">= 1"),
    ("decode.length_penalty", lambda v: 0 <= v <= 10, "in [0, 10]"),
    ("decode.max_len_ratio", lambda v: 0 < v <= 100, "in (0, 100]"),
    ("decode.max_len_add", lambda v: 0 <= v <= 1000, "in [0, 1000]"),
    ("decode.batch_size", lambda v: v >= 1, ">= 1"),
    ("decode.n_best", lambda v: v >= 1, ">= 1"),
]

# Consistency rules, checked last. Each is registered with the keys it reads and is skipped when
# one of them is broken (see `_Findings`), so that one mistake is reported once.
_CONSISTENCY: list[tuple[tuple[str, ...], Callable[[Config], Iterator[str]]]] = []


def _reads(*keys: str) -> Callable:
    """Registers the decorated function as a consistency rule that reads `keys`."""

    def register(rule: Callable[[Config], Iterator[str]]) -> Callable[[Config], Iterator[str]]:
        _CONSISTENCY.append((keys, rule))
        return rule

    return register


@_reads("model.tie_embeddings", "model.emb_size", "model.decoder_size")
def _tied_sizes(cfg: Config) -> Iterator[str]:
    m = cfg.model
    if m.tie_embeddings and m.emb_size != m.decoder_size:
        yield (f"model.tie_embeddings: needs model.emb_size == model.decoder_size, "
               f"got {m.emb_size} and {m.decoder_size}")


@_reads("model.attention.type", "model.bridge")
def _decoder_sees_source(cfg: Config) -> Iterator[str]:
    if cfg.model.attention.type == "none" and cfg.model.bridge == "zeros":
        yield ("model.bridge: attention type 'none' needs 'projection', or the decoder would "
               "never see the source")


@_reads("model.attention.coverage", "model.attention.type", "model.attention.score")
def _coverage_scorer(cfg: Config) -> Iterator[str]:
    a = cfg.model.attention
    if a.coverage and (a.type, a.score) != ("global", "additive"):
        yield (f"model.attention.coverage: needs type 'global' and score 'additive', got "
               f"{a.type!r} and {a.score!r}")


@_reads("model.attention.heads", "model.attention.type", "model.attention.score",
        "model.attention.coverage", "model.attention.size", "model.hidden_size")
def _heads(cfg: Config) -> Iterator[str]:
    m = cfg.model
    a = m.attention
    if a.heads == 1:
        return
    if (a.type, a.score, a.coverage) != ("global", "additive", False):
        yield (f"model.attention.heads: {a.heads} heads need type 'global' and score 'additive' "
               f"without coverage, got {a.type!r} and {a.score!r}"
               + (" with coverage" if a.coverage else ""))
    elif a.size % a.heads or (2 * m.hidden_size) % a.heads:
        yield (f"model.attention.heads: {a.heads} must divide model.attention.size ({a.size}) "
               f"and 2 x model.hidden_size ({2 * m.hidden_size})")


@_reads("model.attention.type", "model.attention.score", "model.hidden_size",
        "model.decoder_size")
def _dot_sizes(cfg: Config) -> Iterator[str]:
    m = cfg.model
    if (m.attention.type != "none" and m.attention.score == "dot"
            and 2 * m.hidden_size != m.decoder_size):
        yield (f"model.attention.score: 'dot' needs 2 x model.hidden_size == model.decoder_size, "
               f"got {2 * m.hidden_size} and {m.decoder_size} (use 'general' or 'additive')")


@_reads("data.min_words", "data.max_words")
def _word_bounds(cfg: Config) -> Iterator[str]:
    d = cfg.data
    if d.min_words > d.max_words:
        yield f"data.min_words: {d.min_words} is above data.max_words ({d.max_words})"


@_reads("train.batch_tokens", "data.max_pieces")
def _batch_holds_a_pair(cfg: Config) -> Iterator[str]:
    if cfg.train.batch_tokens < cfg.data.max_pieces + 1:
        yield (f"train.batch_tokens: must hold one pair of data.max_pieces "
               f"({cfg.data.max_pieces}) + 1, got {cfg.train.batch_tokens}")


@_reads("decode.n_best", "decode.beam")
def _n_best_in_beam(cfg: Config) -> Iterator[str]:
    if cfg.decode.n_best > cfg.decode.beam:
        yield f"decode.n_best: {cfg.decode.n_best} is above decode.beam ({cfg.decode.beam})"


@_reads("train.schedule", "train.max_steps", "train.max_minutes")
def _schedule_budget(cfg: Config) -> Iterator[str]:
    t = cfg.train
    if t.schedule in ("linear", "cosine") and not (t.max_steps or t.max_minutes):
        yield (f"train.schedule: {t.schedule!r} decays over the training budget: set "
               f"train.max_steps or train.max_minutes above 0")


@_reads("train.schedule", "train.warmup_steps", "train.max_steps", "train.max_minutes")
def _warmup_in_budget(cfg: Config) -> Iterator[str]:
    t = cfg.train
    if t.schedule in ("linear", "cosine") and t.max_steps and not t.max_minutes \
            and t.warmup_steps >= t.max_steps:
        yield (f"train.warmup_steps: {t.warmup_steps} leaves no update of train.max_steps "
               f"({t.max_steps}) to decay over with schedule {t.schedule!r}")


@_reads("train.schedule", "train.lr", "train.min_lr")
def _decays_down(cfg: Config) -> Iterator[str]:
    t = cfg.train
    if t.schedule in ("linear", "cosine") and t.min_lr > t.lr:
        yield (f"train.min_lr: {t.min_lr:g} is above train.lr ({t.lr:g}): schedule "
               f"{t.schedule!r} decays from train.lr down to train.min_lr")


@_reads("data.spm_type", "data.sampling_alpha", "data.sampling_nbest")
def _bpe_dropout(cfg: Config) -> Iterator[str]:
    d = cfg.data
    if d.spm_type != "bpe":
        return
    if d.sampling_nbest != -1:
        yield (f"data.sampling_nbest: BPE-dropout (spm_type 'bpe') samples from no n-best "
               f"list; leave it at -1, got {d.sampling_nbest}")
    if d.sampling_alpha == 1:
        yield ("data.sampling_alpha: a BPE-dropout of 1 drops every merge, leaving "
               "characters; expected a probability below 1 (e.g. 0.1)")


@_reads("data.corpora")
def _text_pairs(cfg: Config) -> Iterator[str]:
    for i, c in enumerate(cfg.data.corpora):
        if (c.format == "text") != (c.target_path is not None):
            yield f"data.corpora[{i}].target_path: needed with format 'text' and only then"


@_reads("data.src_lang", "data.tgt_lang")
def _two_languages(cfg: Config) -> Iterator[str]:
    d = cfg.data
    if languages.same(d.src_lang, d.tgt_lang):
        yield (f"data.tgt_lang: {d.tgt_lang!r} is the source language too (data.src_lang: "
               f"{d.src_lang!r}); expected two different languages")


@_reads("data.corpora", "data.src_lang", "data.tgt_lang")
def _corpus_columns(cfg: Config) -> Iterator[str]:
    d = cfg.data
    if languages.same(d.src_lang, d.tgt_lang):
        return
    example = list(languages.default_columns(d.src_lang, d.tgt_lang))
    for i, c in enumerate(d.corpora):
        key, columns = f"data.corpora[{i}].columns", c.columns
        if columns is None:
            continue
        if c.format == "tatoeba":
            yield (f"{key}: applies to tsv, anki and text corpora only (format 'tatoeba' names "
                   f"its languages on each line)")
        elif len(columns) != 2 or not all(languages.is_code(x) for x in columns):
            yield f"{key}: expected two language codes such as {example}, got {list(columns)}"
        elif languages.same(*columns):
            yield f"{key}: names {columns[0]!r} twice; expected one column per side, e.g. {example}"
        else:
            for code in columns:
                if not (languages.same(code, d.src_lang) or languages.same(code, d.tgt_lang)):
                    yield (f"{key}: {code!r} is neither data.src_lang ({d.src_lang!r}) nor "
                           f"data.tgt_lang ({d.tgt_lang!r})")


@_reads("train.init_optimizer", "train.init_from")
def _moments_need_parent(cfg: Config) -> Iterator[str]:
    if cfg.train.init_optimizer and cfg.train.init_from is None:
        yield ("train.init_optimizer: loads the Adam moments of train.init_from, which is not "
               "set (give train.init_from or --init-from)")


@_reads("data.corpora")
def _corpus_weights(cfg: Config) -> Iterator[str]:
    for i, c in enumerate(cfg.data.corpora):
        if not c.weight > 0:
            yield (f"data.corpora[{i}].weight: expected a number > 0 (its share of an epoch), "
                   f"got {c.weight!r}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "list"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


_INVALID = object()  # stands for a value that cannot be used; its problem is already recorded


class _Findings:
    """The problems found so far, and the broken paths: keys whose value could not be used (wrong
    type, not finite, out of range, a required key missing). The Config is built with defaults in
    their place, and the checks that come later skip them instead of reporting a second problem
    about a value nobody gave."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.broken: set[str] = set()

    def reject(self, path: str, problem: str) -> Any:
        """Records `path: problem` and marks `path` broken; returns _INVALID."""
        self.problems.append(f"{path}: {problem}")
        self.broken.add(path)
        return _INVALID

    def touches_broken(self, path: str) -> bool:
        """Whether `path`, a key inside it (`data.corpora[1]`) or a section around it is broken."""

        def inside(key: str, outer: str) -> bool:
            return key.startswith(outer + ".") or key.startswith(outer + "[")

        return any(b == path or inside(b, path) or inside(path, b) for b in self.broken)


def _convert(value: Any, tp: Any, path: str, found: _Findings) -> Any:
    """Checks `value` against the type hint `tp`; returns the converted value, or _INVALID.

    A list of any length keeps its usable items; a fixed-length one is unusable if one item is."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, found)
    if origin is Literal:
        if value in args and isinstance(value, str):
            return value
        return found.reject(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], path, found)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return found.reject(path, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_convert(v, args[0], f"{path}[{i}]", found) for i, v in enumerate(value)]
            return tuple(x for x in items if x is not _INVALID)
        if len(value) != len(args):
            return found.reject(path, f"expected a list of {len(args)} items, got {value!r}")
        items = [_convert(v, a, f"{path}[{i}]", found) for i, (v, a) in
                 enumerate(zip(value, args))]
        if any(x is _INVALID for x in items):
            found.broken.add(path)
            return _INVALID
        return tuple(items)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if not math.isfinite(number):
            return found.reject(path, f"expected a finite number, got {number}")
        return number
    if tp in (int, str, bool) and type(value) is tp:
        return value
    return found.reject(path, f"expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, raw: Any, path: str, found: _Findings) -> Any:
    """Builds dataclass `cls` from a mapping: a field whose value cannot be used keeps its
    default; without a usable value for a required field the object is left out (_INVALID)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return found.reject(path or "config", f"expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    for key in raw:
        if key not in names:
            found.problems.append(
                f"{path + '.' if path else ''}{key}: unknown key "
                f"(valid: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for f in fields:
        sub = f"{path}.{f.name}" if path else f.name
        if f.name in raw:
            value = _convert(raw[f.name], hints[f.name], sub, found)
            if value is not _INVALID:
                kwargs[f.name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            found.reject(sub, "required key is missing")
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if any(name not in kwargs for name in required):
        found.broken.add(path)
        return _INVALID
    return cls(**kwargs)


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _older_keys(raw: Any) -> Any:
    """An older config in today's keys: `decode.int8: true` is `decode.precision: int8`."""
    if isinstance(raw, dict) and isinstance(raw.get("decode"), dict) and "int8" in raw["decode"]:
        decode = dict(raw["decode"])
        if decode.pop("int8") is True:
            decode.setdefault("precision", "int8")
        raw = {**raw, "decode": decode}
    return raw


def from_dict(raw: Any, source: str | None = None) -> Config:
    """Builds and validates a `Config` from plain data; raises `ConfigError` with all problems.

    Types are checked first, then ranges, then consistency; a value of the wrong type or out of
    range is reported once, and the checks that read it are skipped."""
    found = _Findings()
    cfg = _build(Config, _older_keys(raw), "", found)
    if cfg is _INVALID:
        raise ConfigError(found.problems, source)
    for path, ok, expected in _RANGES:
        value = _get(cfg, path)
        if not found.touches_broken(path) and not ok(value):
            found.reject(path, f"expected {expected}, got {value!r}")
    for keys, rule in _CONSISTENCY:
        if not any(found.touches_broken(key) for key in keys):
            found.problems.extend(rule(cfg))
    if found.problems:
        raise ConfigError(found.problems, source)
    return cfg


def to_dict(cfg: Config) -> dict:
    """Plain, YAML- and checkpoint-safe data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only) with the floats of YAML 1.2: `1e-4`, `5E+3`,
    `-2.5e-3`, `.5`, `1.`, `.inf`, `-.inf` and `.nan` are numbers, where YAML 1.1 reads `1e-4` as
    a string. A float needs a '.' or an exponent, so integers stay integers."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?
                   |[-+]?[0-9]+[eE][-+]?[0-9]+
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=0.0005` -> (['train', 'lr'], 0.0005); values are parsed as YAML scalars/lists."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError([f"--set {text!r}: expected KEY.PATH=VALUE, e.g. train.lr=0.0005"])
    try:
        parsed = yaml.load(value, Loader=_YamlLoader) if value.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError([f"--set {text!r}: value is not valid YAML ({err.problem})"]) from None
    return [p.strip() for p in parts], parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Returns a copy of `raw` with each `KEY.PATH=VALUE` applied (validated later by from_dict)."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError([f"--set {text!r}: {p} is not a section"])
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> Any:
    """Reads a YAML file with the safe loader (YAML 1.2 floats); errors name the file, line and
    column."""
    if not path.exists():
        raise ConfigError(["file not found (expected a YAML config)"], str(path))
    if path.is_dir():
        raise ConfigError(["is a directory (expected a YAML config file)"], str(path))
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the read, a device too
        raise ConfigError(["not a regular file (expected a YAML config file)"], str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"cannot read: {err}"], str(path)) from None
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError([f"{where}invalid YAML ({problem})"], str(path)) from None


def load_config(path: Path | str, overrides: list[str] = ()) -> Config:
    """Loads a YAML config, applies `--set` overrides, validates everything at once."""
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"expected a mapping of sections, got {type(raw).__name__}"], str(path))
    raw = apply_overrides(raw, list(overrides))
    problems = _empty_corpora(raw)
    try:
        cfg = from_dict(raw, str(path))
    except ConfigError as err:
        raise ConfigError(err.problems + problems, str(path)) from None
    if problems:
        raise ConfigError(problems, str(path))
    return cfg


def _empty_corpora(raw: dict) -> list[str]:
    """`data.corpora: []` written in a config file leaves nothing to train on. Checked here and
    not in `from_dict`: the default `()` (key absent, as in a config used only to translate) is
    fine, and `to_dict` writes it as `[]`, which `from_dict` must read back."""
    data = raw.get("data")
    if isinstance(data, dict) and data.get("corpora") == []:
        return ["data.corpora: expected at least one corpus, got []"]
    return []


def data_dir(cfg: DataConfig) -> Path:
    """The folder relative corpus paths are read from: $NMT_DATA_DIR, else `data.dir`."""
    return Path(os.environ.get(DATA_DIR_ENV) or cfg.dir)

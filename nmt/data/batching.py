"""Token-budget batches with length bucketing, and padded tensors ready for packed LSTMs.

A batch's size is counted in padded tokens: sentences x the widest pair, where a pair's width is
max(source pieces, target pieces + 1) (the target gains BOS on input and EOS on output). Batches
never exceed `batch_tokens`. Each epoch shuffles the pairs with (seed, epoch), sorts them by width
inside large buckets to keep padding low, cuts batches, and shuffles the batch order: the order is
a pure function of (seed, epoch), so a resumed run sees exactly the same batches.

Subword sampling (`data.sampling_alpha`) changes how a training batch's pairs are segmented,
not which pairs it holds: batches are cut by the prepared (deterministic) lengths, and
`Resegmented` segments their text anew; a batch that has grown beyond `batch_tokens` is
trained in parts that fit, in the same update.

Corpus weights (`data.corpora[].weight`) change which pairs an epoch holds, not how they are
batched: corpus i contributes weight_i x its size pairs, each of its pairs floor(weight_i) times
plus a random round(frac(weight_i) x size) of them, drawn anew with (seed, epoch). All weights 1
is exactly the unweighted epoch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from nmt.data.tokenizer import BOS, EOS, PAD
from nmt.errors import DataError

BUCKET_BATCHES = 64  # batches' worth of pairs sorted together
_COMPOSITION = 1  # random stream of an epoch's weighted composition, apart from its order


@dataclass
class Dataset:
    """Encoded pairs as flat id arrays with per-pair lengths and offsets."""

    src: np.ndarray  # all source ids, concatenated
    src_len: np.ndarray  # (N,)
    tgt: np.ndarray
    tgt_len: np.ndarray  # (N,)
    corpus: np.ndarray | None = None  # (N,) each pair's index in data.corpora (None: unknown)
    line: np.ndarray | None = None  # (N,) each pair's line in its split's text (None: unknown)

    def __post_init__(self) -> None:
        self.src_off = np.concatenate([[0], np.cumsum(self.src_len, dtype=np.int64)])
        self.tgt_off = np.concatenate([[0], np.cumsum(self.tgt_len, dtype=np.int64)])

    @classmethod
    def load(cls, path: Path) -> Dataset:
        try:
            with np.load(path) as z:
                # older prepared data lacks the corpus and line arrays
                corpus = z["corpus"] if "corpus" in z.files else None
                line = z["line"] if "line" in z.files else None
                return cls(z["src"], z["src_len"], z["tgt"], z["tgt_len"], corpus, line)
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{path}: unreadable prepared data ({err})") from None

    def __len__(self) -> int:
        return len(self.src_len)

    def source(self, i: int) -> np.ndarray:
        return self.src[self.src_off[i]:self.src_off[i + 1]]

    def target(self, i: int) -> np.ndarray:
        return self.tgt[self.tgt_off[i]:self.tgt_off[i + 1]]

    @property
    def widths(self) -> np.ndarray:
        return np.maximum(self.src_len, self.tgt_len + 1)


def token_batches(widths: np.ndarray, batch_tokens: int, seed: int, epoch: int,
                  shuffle: bool = True) -> list[np.ndarray]:
    """Cuts pair indices into batches of at most `batch_tokens` padded tokens."""
    n = len(widths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    per_batch = max(1, batch_tokens // max(1, int(np.mean(widths)) if n else 1))
    bucket = per_batch * BUCKET_BATCHES
    batches: list[np.ndarray] = []
    for start in range(0, n, bucket):
        chunk = order[start:start + bucket]
        batches += cut(chunk[np.argsort(-widths[chunk], kind="stable")], widths, batch_tokens)
    if shuffle:
        batches = [batches[k] for k in rng.permutation(len(batches))]
    return batches


def cut(rows: np.ndarray, widths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """`rows`, sorted widest first, cut in order into runs of at most `batch_tokens` padded
    tokens (runs x widths[first row]); a row wider than that makes a run of its own."""
    runs, first, widest = [], 0, 0
    for j, i in enumerate(rows):
        w = max(widest, int(widths[i]))
        if j > first and (j - first + 1) * w > batch_tokens:
            runs.append(rows[first:j])
            first, w = j, int(widths[i])
        widest = w
    if first < len(rows):
        runs.append(rows[first:])
    return runs


def weighted(weights: Sequence[float]) -> bool:
    """Whether corpus weights change an epoch (any weight other than 1)."""
    return any(w != 1 for w in weights)


def epoch_share(pairs: int, weight: float) -> int:
    """How many pairs a corpus of `pairs` contributes to an epoch at `weight`."""
    return int(weight) * pairs + round((weight - int(weight)) * pairs)


def epoch_pairs(corpus: np.ndarray, weights: Sequence[float], seed: int,
                epoch: int) -> np.ndarray:
    """The pair indices of one epoch under corpus weights, sorted, a pair repeated as often as
    it is drawn: the pairs of corpus i (corpus == i) floor(w_i) times each, plus round(frac(w_i)
    x n_i) of them drawn without replacement, other ones in every epoch."""
    rng = np.random.default_rng([seed, epoch, _COMPOSITION])
    parts = [np.zeros(0, dtype=np.int64)]
    for i, w in enumerate(weights):
        members = np.flatnonzero(corpus == i)
        whole = int(w)
        parts += [members] * whole
        extra = epoch_share(len(members), w) - whole * len(members)
        if extra:
            parts.append(rng.choice(members, extra, replace=False))
    return np.sort(np.concatenate(parts))


def epoch_batches(widths: np.ndarray, corpus: np.ndarray | None, weights: Sequence[float],
                  batch_tokens: int, seed: int, epoch: int) -> list[np.ndarray]:
    """One training epoch's batches of pair indices: every pair once (`token_batches`), or,
    under corpus weights, the pairs of `epoch_pairs` batched the same way."""
    if not weighted(weights):
        return token_batches(widths, batch_tokens, seed, epoch)
    if corpus is None:
        raise DataError("corpus weights need the prepared data to record each pair's corpus; "
                        "prepare the data again (nmt data prepare)")
    pool = epoch_pairs(corpus, weights, seed, epoch)
    if not len(pool):
        raise DataError(f"the corpus weights ({', '.join(f'{w:g}' for w in weights)}) leave no "
                        f"training pair in epoch {epoch}")
    return [pool[b] for b in token_batches(widths[pool], batch_tokens, seed, epoch)]


def padding_fraction(batches: list[np.ndarray], src_len: np.ndarray,
                     tgt_len: np.ndarray) -> float:
    """Share of padding in the source and target tensors of these batches."""
    real = padded = 0
    for b in batches:
        real += int(src_len[b].sum() + tgt_len[b].sum() + len(b))
        padded += len(b) * (int(src_len[b].max()) + int(tgt_len[b].max()) + 1)
    return 1 - real / padded if padded else 0.0


@dataclass
class Batch:
    """Padded tensors of one batch, sorted by source length (longest first).

    src:     (B, S) source ids, PAD after each sentence's end
    src_len: (B,)   source lengths
    tgt_in:  (B, T) BOS y1 ... yn PAD...
    tgt_out: (B, T) y1 ... yn EOS PAD...
    index:   (B,)   positions of the pairs in their dataset
    """

    src: torch.Tensor
    src_len: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    index: np.ndarray

    @property
    def n_tokens(self) -> int:
        """Target tokens predicted (EOS included, padding excluded)."""
        return int((self.tgt_out != PAD).sum())

    def to(self, device: torch.device) -> Batch:
        """On CUDA, copies from pinned memory without blocking the host."""
        if device.type != "cuda":
            return self

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory().to(device, non_blocking=True)

        return Batch(move(self.src), self.src_len, move(self.tgt_in), move(self.tgt_out),
                     self.index)


def pad_sources(sources: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) padded ids and (B,) lengths, in the given order."""
    lengths = torch.tensor([len(s) for s in sources], dtype=torch.long)
    out = torch.full((len(sources), int(lengths.max())), PAD, dtype=torch.long)
    for k, s in enumerate(sources):
        out[k, :len(s)] = torch.from_numpy(np.asarray(s, dtype=np.int64))
    return out, lengths


class Sampler(Protocol):
    """Draws segmentations of sentences (nmt.data.sampling)."""

    def sample(self, sentences: Sequence[str], rng: random.Random) -> list[list[int]]: ...


# Makes a training batch: (pair indices, epoch, the batch's position in the epoch's batch list)
# -> its tensors, in parts of at most train.batch_tokens padded tokens each (one part, unless
# its segmentations grew). The position names a batch alike on every process (`Resegmented`
# seeds by it).
Collate = Callable[[np.ndarray, int, int], list[Batch]]


def collate(ds: Dataset, index: np.ndarray) -> Batch:
    """The batch of pairs `index` with their prepared ids."""
    return pad_pairs([ds.source(i) for i in index], [ds.target(i) for i in index], index)


def prepared_ids(ds: Dataset) -> Collate:
    """The `Collate` of training batches with their prepared (deterministic) ids."""
    return lambda index, epoch, position: [collate(ds, index)]


def batch_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of one training batch's random draws: a hash of its coordinates, so that nearby
    batches, epochs and seeds draw unrelated numbers."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class Resegmented:
    """A `Collate` of training batches whose sentences are segmented anew by subword sampling
    (nmt.data.sampling), from their text: pair i is sources[line[i]], targets[line[i]].

    Each batch draws from its own generator, seeded by (seed, epoch, position): a run resumed
    at any update draws what the uninterrupted run drew, and under several processes each rank
    samples only its own batches, with the seeds every rank would have used. Sampled
    segmentations are longer than the prepared ones that cut the batch: a batch whose tensors
    would exceed `batch_tokens` comes in parts that fit, cut by the sampled widths."""

    def __init__(self, data: Dataset, sources: Sequence[str], targets: Sequence[str],
                 src_sampler: Sampler, tgt_sampler: Sampler, seed: int,
                 batch_tokens: int) -> None:
        if data.line is None:
            raise DataError("subword sampling needs the prepared data to record each pair's "
                            "line; prepare the data again (nmt data prepare)")
        if len(sources) != len(targets) or (len(data) and data.line.max() >= len(sources)):
            raise DataError(f"the training text ({len(sources):,} / {len(targets):,} lines) "
                            f"does not match the prepared ids; prepare the data again")
        self.data, self.sources, self.targets, self.seed = data, sources, targets, seed
        self.src_sampler, self.tgt_sampler = src_sampler, tgt_sampler
        self.batch_tokens = batch_tokens

    def __call__(self, index: np.ndarray, epoch: int, position: int) -> list[Batch]:
        rng = random.Random(batch_seed(self.seed, epoch, position))
        lines = self.data.line[index]
        src = self.src_sampler.sample([self.sources[k] for k in lines], rng)
        tgt = self.tgt_sampler.sample([self.targets[k] for k in lines], rng)
        widths = np.array([max(len(x), len(y) + 1) for x, y in zip(src, tgt)])
        rows = np.argsort(-widths, kind="stable")
        return [pad_pairs([src[k] for k in part], [tgt[k] for k in part], index[part])
                for part in cut(rows, widths, self.batch_tokens)]


def pad_pairs(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
              index: np.ndarray) -> Batch:
    """The `Batch` of these pairs' ids (pair k: sources[k], targets[k], index[k]), sorted by
    source length, longest first (stable)."""
    order = np.argsort([-len(s) for s in sources], kind="stable")
    src, src_len = pad_sources([np.asarray(sources[k]) for k in order])
    t = max(len(targets[k]) for k in order) + 1
    tgt_in = torch.full((len(order), t), PAD, dtype=torch.long)
    tgt_out = torch.full((len(order), t), PAD, dtype=torch.long)
    for row, k in enumerate(order):
        y = torch.from_numpy(np.asarray(targets[k], dtype=np.int64))
        tgt_in[row, 0] = BOS
        tgt_in[row, 1:len(y) + 1] = y
        tgt_out[row, :len(y)] = y
        tgt_out[row, len(y)] = EOS
    return Batch(src, src_len, tgt_in, tgt_out, index[order])

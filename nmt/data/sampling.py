"""Subword regularisation: a sentence segmented at random into pieces of its SentencePiece model,
anew each time it is seen in training (Kudo 2018 for unigram models; Provilkov et al. 2020,
BPE-dropout, for BPE models).

The draws are nmt's, from a `random.Random` the caller seeds: sentencepiece's own sampling reads
a generator that `set_random_generator_seed` does not make repeatable from one process to the
next (sentencepiece 0.2), and a resumed run or a second rank is another process. The pieces,
their scores and the normalisation are the model's own; with sampling switched off (alpha 0 for
BPE, the best path for unigram) the segmentations equal `SentencePieceProcessor.encode`'s
(tests/test_subword_sampling.py checks it). Models with byte fallback or user-defined symbols
(which `nmt data prepare` never trains) are not supported.

A piece holds U+2581 (the space mark) only as its first character, so every segmentation breaks
before each space mark: the words of a sentence are segmented independently, and a unigram
word's lattice is computed once and cached.
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import accumulate
from typing import NamedTuple

import sentencepiece as spm

SPACE = "\u2581"
UNK_PENALTY = 10.0  # sentencepiece: an unknown character scores min(piece scores) - 10
WORD_CACHE = 1 << 16  # unigram words whose lattice is kept (a few hundred bytes each)


class Lattice(NamedTuple):
    """A word's segmentation lattice, ready for sampling (`UnigramSampling._word_lattice`)."""

    offsets: array  # (n + 1,) the pieces ending at character e: slots offsets[e - 1]:offsets[e]
    begins: array  # where each piece begins
    ids: array  # each piece's id
    cumulative: array  # cumulative probabilities of the pieces ending at one character


class Vocabulary:
    """The pieces of a SentencePiece model that text can be segmented into (no control,
    unknown, unused or byte pieces): piece -> (id, score)."""

    def __init__(self, processor: spm.SentencePieceProcessor) -> None:
        self.processor = processor
        self.pieces: dict[str, tuple[int, float]] = {}
        for i in range(processor.get_piece_size()):
            if not (processor.is_control(i) or processor.is_unknown(i)
                    or processor.is_unused(i) or processor.is_byte(i)):
                self.pieces[processor.id_to_piece(i)] = (i, processor.get_score(i))
        self.scores = [0.0] * processor.get_piece_size()  # by id; 0 for the reserved ids
        for i, score in self.pieces.values():
            self.scores[i] = score
        self.unk = processor.unk_id()
        self.unk_score = min(s for _, s in self.pieces.values()) - UNK_PENALTY
        self.longest = max(len(p) for p in self.pieces)
        # a piece with the space mark inside would cross word boundaries: no word split then
        self.by_word = not any(SPACE in p[1:] for p in self.pieces)

    def words(self, sentences: Sequence[str]) -> list[list[str]]:
        """Each sentence's text as the model normalises it, cut before each space mark."""
        out = []
        for text in self.processor.normalize(list(sentences)):
            if not self.by_word:
                out.append([text] if text else [])
                continue
            first, *rest = text.split(SPACE)
            out.append(([first] if first else []) + [SPACE + w for w in rest])
        return out


def _merge_unknowns(ids: list[int], unk: int) -> list[int]:
    """A run of unknown characters is one unknown piece, as sentencepiece emits it."""
    return [x for k, x in enumerate(ids) if x != unk or k == 0 or ids[k - 1] != unk]


class UnigramSampling:
    """Segmentations drawn from a unigram model (Kudo 2018, Sec. 3): with `nbest` -1, from
    every segmentation x of the sentence with probability P(x)^alpha / Z, by forward-filtering
    backward-sampling over its lattice; with `nbest` k >= 2, from its k best segmentations with
    probability P(x)^alpha, normalised over the k (sentencepiece's own rules)."""

    def __init__(self, processor: spm.SentencePieceProcessor, alpha: float, nbest: int) -> None:
        self.vocab, self.alpha, self.nbest = Vocabulary(processor), alpha, nbest
        self._lattice = lru_cache(maxsize=WORD_CACHE)(self._word_lattice)

    def sample(self, sentences: Sequence[str], rng: random.Random) -> list[list[int]]:
        if self.nbest != -1:
            return self._sample_nbest(sentences, rng)
        out = []
        for words in self.vocab.words(sentences):
            ids: list[int] = []
            for word in words:
                ids += self._backward(self._lattice(word), rng.random)
            out.append(_merge_unknowns(ids, self.vocab.unk))
        return out

    def best(self, sentences: Sequence[str]) -> list[list[int]]:
        """The most likely segmentations (Viterbi over the same lattices)."""
        return [_merge_unknowns([i for w in words for i in self._viterbi(w)], self.vocab.unk)
                for words in self.vocab.words(sentences)]

    def _nodes(self, word: str) -> list[list[tuple[int, int, float]]]:
        """nodes[e]: the pieces (begin, id, score) that end at character e of `word`."""
        v = self.vocab
        nodes: list[list[tuple[int, int, float]]] = [[] for _ in range(len(word) + 1)]
        for b in range(len(word)):
            for e in range(b + 1, min(len(word), b + v.longest) + 1):
                found = v.pieces.get(word[b:e])
                if found is not None:
                    nodes[e].append((b, *found))
            if word[b] not in v.pieces:  # an unknown character
                nodes[b + 1].append((b, v.unk, v.unk_score))
        return nodes

    def _word_lattice(self, word: str) -> Lattice:
        """The pieces ending at each character e of `word` (slots offsets[e - 1]:offsets[e]),
        with the cumulative probability of each being the last piece of a path to e,
        ∝ exp(F[b] + alpha * score), where F[b] = log Σ over paths to b of P^alpha (the
        forward pass). Flat arrays: a cached word costs a few hundred bytes."""
        offsets, begins, ids, cumulative = array("i", [0]), array("i"), array("i"), array("d")
        forward = [0.0]
        for nodes in self._nodes(word)[1:]:
            logits = [forward[b] + self.alpha * s for b, _, s in nodes]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            total = sum(weights)
            forward.append(top + math.log(total))
            run = 0.0
            for (b, i, _), w in zip(nodes, weights):
                run += w / total
                begins.append(b)
                ids.append(i)
                cumulative.append(run)
            offsets.append(len(ids))
        return Lattice(offsets, begins, ids, cumulative)

    @staticmethod
    def _backward(lattice: Lattice, draw: Callable[[], float]) -> list[int]:
        """One path drawn from the end of the word back to its start (Kudo 2018, Sec. 3.1)."""
        offsets, begins, pieces, cumulative = lattice
        ids, e = [], len(offsets) - 1
        while e > 0:
            lo, hi = offsets[e - 1], offsets[e]
            k = min(bisect_right(cumulative, draw(), lo, hi), hi - 1)
            ids.append(pieces[k])
            e = begins[k]
        return ids[::-1]

    def _viterbi(self, word: str) -> list[int]:
        best: list[tuple[float, int, int]] = [(0.0, -1, -1)]  # (score, begin, id) per end
        for nodes in self._nodes(word)[1:]:
            best.append(max(((best[b][0] + s, b, i) for b, i, s in nodes),
                            key=lambda x: x[0]))
        ids, e = [], len(word)
        while e > 0:
            ids.append(best[e][2])
            e = best[e][1]
        return ids[::-1]

    def _sample_nbest(self, sentences: Sequence[str], rng: random.Random) -> list[list[int]]:
        score = self.vocab.scores
        out = []
        for candidates in self.vocab.processor.nbest_encode(list(sentences),
                                                            nbest_size=self.nbest):
            # every candidate holds the same unknown characters, whose scores cancel out
            logits = [self.alpha * sum(map(score.__getitem__, c)) for c in candidates]
            top = max(logits)
            cumulative = list(accumulate(math.exp(x - top) for x in logits))
            k = bisect_right(cumulative, rng.random() * cumulative[-1])
            out.append(candidates[min(k, len(candidates) - 1)])
        return out


class BpeDropout:
    """BPE-dropout (Provilkov et al. 2020, Sec. 3): the model's merges in their order, each
    merge skipped with probability `p` when its turn comes (sentencepiece's formulation)."""

    def __init__(self, processor: spm.SentencePieceProcessor, p: float) -> None:
        self.vocab, self.p = Vocabulary(processor), p

    def sample(self, sentences: Sequence[str], rng: random.Random) -> list[list[int]]:
        return [_merge_unknowns([i for w in words for i in self._word(w, rng.random)],
                                self.vocab.unk) for words in self.vocab.words(sentences)]

    def _word(self, word: str, draw: Callable[[], float]) -> list[int]:
        """One word's pieces: its characters merged pair by pair, the best-scoring merge
        first (leftmost among equals), as sentencepiece's BPE encodes."""
        pieces = self.vocab.pieces
        symbols = list(word)
        n = len(symbols)
        before, after = list(range(-1, n - 1)), list(range(1, n + 1))
        after[-1] = -1
        agenda: list[tuple[float, int, int, int]] = []  # (-score, left, right, length)

        def consider(left: int, right: int) -> None:
            if left >= 0 and right >= 0:
                merged = symbols[left] + symbols[right]
                found = pieces.get(merged)
                if found is not None:
                    heapq.heappush(agenda, (-found[1], left, right, len(merged)))

        for k in range(1, n):
            consider(k - 1, k)
        while agenda:
            _, left, right, length = heapq.heappop(agenda)
            if not symbols[left] or not symbols[right] \
                    or len(symbols[left]) + len(symbols[right]) != length:
                continue  # stale: one side has merged since
            if self.p and draw() < self.p:
                continue
            symbols[left] += symbols[right]
            symbols[right] = ""
            after[left] = after[right]
            if after[right] >= 0:
                before[after[right]] = left
            consider(before[left], left)
            consider(left, after[left])
        return [pieces.get(s, (self.vocab.unk, 0.0))[0] for s in symbols if s]


def sampler(processor: spm.SentencePieceProcessor, spm_type: str, alpha: float,
            nbest: int) -> UnigramSampling | BpeDropout:
    """The sampling of `data.sampling_alpha` / `data.sampling_nbest` for a model of `spm_type`."""
    if spm_type == "bpe":
        return BpeDropout(processor, alpha)
    return UnigramSampling(processor, alpha, nbest)


def describe(spm_type: str, alpha: float, nbest: int) -> str:
    """How training batches are segmented, for train.log."""
    if not alpha:
        return "off"
    if spm_type == "bpe":
        return f"BPE-dropout {alpha:g}"
    return f"unigram, alpha {alpha:g}, among {'all' if nbest == -1 else nbest} segmentations"

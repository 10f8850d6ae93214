"""Attention: every variant behind one interface.

    memory = attention.prepare(keys, mask)          # once per batch: keys projected here
    context, weights = attention(query, memory, t)  # once per target step

Shapes: B batch, S source length, K key size (2 x encoder size), Q query size (decoder size),
A size of the additive scorer. `weights` is (B, S): a distribution over the real (unmasked)
source positions, exactly 0 on padding; `context` is (B, K), the weighted sum of the keys.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Memory:
    """Encoder annotations as seen by attention, prepared once per batch."""

    keys: torch.Tensor  # (B, S, K) encoder annotations, also the values
    proj: torch.Tensor | None  # (B, S, A or Q) keys projected once per batch (None for dot)
    mask: torch.Tensor  # (B, S) True on real source tokens

    def select(self, index: torch.Tensor) -> Memory:
        """Rows `index` (B',) of the memory, e.g. to expand or reorder beams."""
        proj = None if self.proj is None else self.proj.index_select(0, index)
        return Memory(self.keys.index_select(0, index), proj, self.mask.index_select(0, index))


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of (B, S) scores, exactly 0 where mask is False."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


class Attention(nn.Module, abc.ABC):
    """Base class: subclasses define `project` (once per batch) and `score` (per step)."""

    def prepare(self, keys: torch.Tensor, mask: torch.Tensor) -> Memory:
        return Memory(keys, self.project(keys), mask)

    def project(self, keys: torch.Tensor) -> torch.Tensor | None:
        return None

    @abc.abstractmethod
    def score(self, query: torch.Tensor, memory: Memory) -> torch.Tensor:
        """(B, S) unnormalised scores of each source position for the (B, Q) query."""

    def forward(self, query: torch.Tensor, memory: Memory,
                step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        weights = masked_softmax(self.score(query, memory), memory.mask)  # (B, S)
        context = torch.bmm(weights.unsqueeze(1), memory.keys).squeeze(1)  # (B, K)
        return context, weights


class AdditiveAttention(Attention):
    """Bahdanau et al. (2014), Eq. 6 and App. A.1.2, the "alignment model" (Luong's *concat*):
    score(q, k_j) = v^T tanh(W q + U k_j). U k_j is computed once per batch."""

    def __init__(self, query_size: int, key_size: int, size: int) -> None:
        super().__init__()
        self.key_layer = nn.Linear(key_size, size, bias=False)
        self.query_layer = nn.Linear(query_size, size, bias=False)
        self.v = nn.Linear(size, 1, bias=False)

    def project(self, keys: torch.Tensor) -> torch.Tensor:
        return self.key_layer(keys)  # (B, S, A)

    def score(self, query: torch.Tensor, memory: Memory) -> torch.Tensor:
        q = self.query_layer(query).unsqueeze(1)  # (B, 1, A)
        return self.v(torch.tanh(memory.proj + q)).squeeze(2)  # (B, S)


class DotAttention(Attention):
    """Luong et al. (2015), Eq. 8, *dot*: score(h_t, h_s) = h_t^T h_s (needs Q == K)."""

    def score(self, query: torch.Tensor, memory: Memory) -> torch.Tensor:
        return torch.bmm(memory.keys, query.unsqueeze(2)).squeeze(2)  # (B, S)


class GeneralAttention(Attention):
    """Luong et al. (2015), Eq. 8, *general*: score(h_t, h_s) = h_t^T W_a h_s, with W_a h_s
    computed once per batch."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.key_layer = nn.Linear(key_size, query_size, bias=False)

    def project(self, keys: torch.Tensor) -> torch.Tensor:
        return self.key_layer(keys)  # (B, S, Q)

    def score(self, query: torch.Tensor, memory: Memory) -> torch.Tensor:
        return torch.bmm(memory.proj, query.unsqueeze(2)).squeeze(2)  # (B, S)


def build_attention(kind: str, score: str, query_size: int, key_size: int,
                    size: int) -> Attention:
    """The attention module for `model.attention` settings."""
    if kind != "global":
        raise ValueError(f"unknown attention type {kind!r}")
    if score == "additive":
        return AdditiveAttention(query_size, key_size, size)
    if score == "dot":
        return DotAttention()
    if score == "general":
        return GeneralAttention(query_size, key_size)
    raise ValueError(f"unknown attention score {score!r}")

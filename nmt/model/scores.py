"""Score functions: how well each source annotation matches the decoder's query.

    proj = score.project(keys)         # once per batch (None: nothing to precompute)
    scores = score(query, keys, proj)  # per target step, (B, S), before any masking

Shapes: B batch, S source length, K key size (2 x encoder size), Q query size (decoder size),
A size of the additive scorer, H its heads. Keys have N = B / g rows, each shared by g
consecutive queries (`Memory.group`; g = 1 in training).
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from nmt.model.operations import PLAIN_OPERATIONS, Operations


class Score(nn.Module, abc.ABC):
    def project(self, keys: torch.Tensor) -> torch.Tensor | None:
        """(B, S, K) keys -> whatever part of the score depends on the keys alone."""
        return None

    @abc.abstractmethod
    def forward(self, query: torch.Tensor, keys: torch.Tensor, proj: torch.Tensor | None
                ) -> torch.Tensor:
        """(B, Q) query, (N, S, K) keys -> (B, S) unnormalised scores."""


def _per_query(keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """(N, S, D) keys . (B, D) queries, B = N x g -> (B, S) dot products."""
    n, s, d = keys.shape
    return torch.bmm(keys, query.view(n, -1, d).transpose(1, 2)).transpose(1, 2).reshape(-1, s)


class AdditiveScore(Score):
    """Bahdanau et al. (2014), Eq. 6 and App. A.1.2, the "alignment model" (Luong et al. 2015,
    Eq. 8, *concat*): score(q, k_j) = v^T tanh(W q + U k_j). U k_j is computed once per batch.

    Computed as 2 v^T sigmoid(2 (W q + U k_j)), which is v^T tanh(...) + sum(v): tanh(z) =
    2 sigmoid(2z) - 1, and the constant sum(v), the same for every j, leaves the attention
    weights unchanged (softmax, argmax and the window of local attention ignore it). On a CPU,
    sigmoid is cheaper than tanh, and this is the largest element-wise operation of a
    decoder step, (B, S, A). `project` returns 2 U k_j.

    With `heads` H, the A features form H slices of A / H, and `per_head` gives each head h
    its own score v_h^T tanh(W_h q + U_h k_j) over its slice (multi-head additive attention,
    Chen et al. 2018); the single score is their sum."""

    def __init__(self, query_size: int, key_size: int, size: int, heads: int = 1,
                 operations: Operations = PLAIN_OPERATIONS) -> None:
        super().__init__()
        self.operations = operations
        if size % heads:
            raise ValueError(f"the additive scorer's size {size} is not a multiple of its "
                             f"{heads} heads")
        self.heads = heads
        self.key_layer = nn.Linear(key_size, size, bias=False)
        self.query_layer = nn.Linear(query_size, size, bias=False)
        self.v = nn.Linear(size, 1, bias=False)

    def project(self, keys: torch.Tensor) -> torch.Tensor:
        return 2 * self.key_layer(keys)  # (B, S, A)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, proj: torch.Tensor | None
                ) -> torch.Tensor:
        scores = self.per_head(query, keys, proj)  # (B, S, H)
        return scores.squeeze(2) if self.heads == 1 else scores.sum(2)  # (B, S)

    def per_head(self, query: torch.Tensor, keys: torch.Tensor, proj: torch.Tensor | None
                 ) -> torch.Tensor:
        """(B, Q) query, (N, S, A) or (N, g, S, A) proj -> (B, S, H) unnormalised scores of
        each head (the keys themselves are not read)."""
        n, s, a, h = proj.size(0), proj.size(-2), self.v.in_features, self.heads
        q = 2 * self.query_layer(query).view(n, -1, a)  # (N, g, A)
        v = self.v.weight.view(h, a // h)  # (H, A / H): v_h
        return self.operations.additive_score(proj, q, v).view(-1, s, h)  # (B, S, H)


class DotScore(Score):
    """Luong et al. (2015), Eq. 8, *dot*: score(h_t, h_s) = h_t^T h_s (needs Q == K)."""

    def forward(self, query: torch.Tensor, keys: torch.Tensor, proj: torch.Tensor | None
                ) -> torch.Tensor:
        return _per_query(keys, query)  # (B, S)


class GeneralScore(Score):
    """Luong et al. (2015), Eq. 8, *general*: score(h_t, h_s) = h_t^T W_a h_s, with W_a h_s
    computed once per batch."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.key_layer = nn.Linear(key_size, query_size, bias=False)

    def project(self, keys: torch.Tensor) -> torch.Tensor:
        return self.key_layer(keys)  # (B, S, Q)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, proj: torch.Tensor | None
                ) -> torch.Tensor:
        return _per_query(proj, query)  # (B, S)


SCORES = ("additive", "dot", "general")


def build_score(kind: str, query_size: int, key_size: int, size: int, heads: int = 1,
                operations: Operations = PLAIN_OPERATIONS) -> Score:
    if kind == "additive":
        return AdditiveScore(query_size, key_size, size, heads, operations)
    if kind == "dot":
        return DotScore()
    if kind == "general":
        return GeneralScore(query_size, key_size)
    raise ValueError(f"unknown attention score {kind!r}, expected one of {SCORES}")

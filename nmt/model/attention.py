"""Attention: every variant behind one interface.

    memory = attention.prepare(keys, mask)                   # once per batch: keys projected
    context, weights = attention(query, memory, t, coverage) # once per target step t

`coverage` (B, S) is the sum of the weights of the earlier steps; only the coverage model reads
it (`uses_coverage`), and the decoder keeps it in its state.

A variant decides *which* source states are attended and how the scores of a score function
(`nmt.model.scores`: additive, dot, general) become weights:

    none      no context at all: the decoder sees the source only through its initial state
    global    all source states (Luong et al. 2015, Sec. 3.1; Bahdanau et al. 2014, Sec. 3.1)
    local-m   a window around p_t = t (Luong et al. 2015, Sec. 3.2, monotonic)
    local-p   a window around a predicted p_t, Gaussian-weighted (Luong et al. 2015, Sec. 3.2)
    hard      exactly one source state (Xu et al. 2015, Sec. 4.1), straight-through trained

and `coverage` adds the attention history to the additive score of global attention (Tu et al.
2016), so that the model can learn not to attend again to words it has already translated;
`heads` > 1 splits global additive attention into heads that each weigh the source on their own
(Chen et al. 2018).

Shapes: B batch, S source length, K key size (2 x encoder size), Q query size (decoder size).
Queries come in groups of `memory.group` rows that share one memory row (beam search: the K
hypotheses of a sentence), so B = memory rows x group; training has groups of 1.
`weights` is (B, S) and exactly 0 on padding; except for `none` it is a distribution (sums to 1)
over the positions the variant may look at. `context` is (B, context_size), the weighted sum of
the keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nmt.model.operations import PLAIN_OPERATIONS, Operations
from nmt.model.scores import AdditiveScore, Score, build_score

TYPES = ("none", "global", "local-m", "local-p", "hard")


@dataclass
class Memory:
    """Encoder annotations as seen by attention, prepared once per batch."""

    keys: torch.Tensor  # (N, S, K) encoder annotations, also the values (MultiHeadAttention:
    #                     its values, (N, H, S, K / H))
    proj: torch.Tensor | None  # (N, S, ...) keys projected once per batch (None if unused)
    mask: torch.Tensor  # (N, S) True on real source tokens
    group: int = 1  # query rows per memory row: B = N x group

    def select(self, index: torch.Tensor) -> Memory:
        """Memory rows `index` (N',), e.g. to drop finished sentences."""
        proj = None if self.proj is None else self.proj.index_select(0, index)
        return Memory(self.keys.index_select(0, index), proj, self.mask.index_select(0, index),
                      self.group)

    def grouped(self, group: int) -> Memory:
        """The same memory, shared by `group` query rows per memory row."""
        return Memory(self.keys, self.proj, self.mask, group)

    def row_mask(self) -> torch.Tensor:
        """(B, S) the mask of each query row."""
        return self.mask if self.group == 1 else self.mask.repeat_interleave(self.group, 0)

    def lengths(self) -> torch.Tensor:
        """(B,) number of real source tokens of each query row."""
        lengths = self.mask.sum(dim=1)  # (N,)
        return lengths if self.group == 1 else lengths.repeat_interleave(self.group)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of (B, S) scores, exactly 0 where mask is False; in float32
    (or wider) whatever the scores' precision."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1,
                         dtype=at_least_float32(scores))


def at_least_float32(x: torch.Tensor) -> torch.dtype:
    """float32 for bfloat16 or float16 (autocast's products), else x's own dtype."""
    return torch.promote_types(x.dtype, torch.float32)


class GlobalAttention(nn.Module):
    """Global attention (Luong et al. 2015, Sec. 3.1, Eq. 7; Bahdanau et al. 2014, Eq. 5-6):
    a_t = softmax(score(h_t, h_s)) over every source position s, c_t = sum_s a_t(s) h_s.
    Subclasses change `align`, the scores-to-weights step."""

    uses_coverage = False

    def __init__(self, score: Score, key_size: int) -> None:
        super().__init__()
        self.score = score
        self.context_size = key_size

    def prepare(self, keys: torch.Tensor, mask: torch.Tensor) -> Memory:
        return Memory(keys, self.score.project(keys), mask)

    def align(self, query: torch.Tensor, memory: Memory, step: int,
              coverage: torch.Tensor | None) -> torch.Tensor:
        """(B, Q) query -> (B, S) attention weights."""
        scores = self.score(query, memory.keys, memory.proj)  # (B, S)
        return masked_softmax(scores, memory.row_mask())

    def forward(self, query: torch.Tensor, memory: Memory, step: int = 0,
                coverage: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.align(query, memory, step, coverage)  # (B, S)
        n, s, k = memory.keys.shape
        context = torch.bmm(weights.view(n, -1, s), memory.keys).view(-1, k)  # (B, K)
        return context, weights


class CoverageAttention(GlobalAttention):
    """Global additive attention with a coverage vector (Tu et al. 2016, "Modeling Coverage for
    Neural Machine Translation", Eq. 9 with the linguistic coverage of Eq. 6 without
    fertility): C_t = sum_{t' < t} a_t', and

        score(q, h_j) = v^T tanh(W q + U h_j + V C_{t,j})

    V C_{t,j} joins the per-batch projection U h_j at each step."""

    uses_coverage = True

    def __init__(self, score: AdditiveScore, key_size: int) -> None:
        super().__init__(score, key_size)
        self.coverage_layer = nn.Linear(1, score.v.in_features, bias=False)  # V

    def align(self, query: torch.Tensor, memory: Memory, step: int,
              coverage: torch.Tensor | None) -> torch.Tensor:
        mask = memory.row_mask()  # (B, S)
        if coverage is None:
            coverage = mask.new_zeros(mask.shape, dtype=query.dtype)
        cover = self.coverage_layer(coverage.unsqueeze(2))  # (B, S, A)
        n, s, a = memory.proj.shape
        # (N, group, S, A); doubled, as AdditiveScore.project doubles U h_j
        proj = memory.proj.unsqueeze(1) + 2 * cover.view(n, -1, s, a)
        return masked_softmax(self.score(query, memory.keys, proj), mask)


class MultiHeadAttention(GlobalAttention):
    """Multi-head additive attention (Chen et al. 2018, "The Best of Both Worlds", Sec. 3.1,
    RNMT+; the heads of Vaswani et al. 2017, Sec. 3.2.2, with the additive score): H heads,
    each with its own additive score over its slice of the scorer's A features
    (`AdditiveScore.per_head`), its own weights and its own slice of the projected states:

        a_t^h = softmax_s(v_h^T tanh(W_h h_t + U_h h_s))    (B, S) for each head h
        c_t^h = sum_s a_t^h(s) (W_V h_s)^h                  (B, K / H)
        c_t   = [c_t^1; ...; c_t^H]                          (B, K)

    W_V h_s is computed once per batch and stands in `memory.keys`, head by head,
    (N, H, S, K / H): the additive score reads only `memory.proj`. The weights returned, for
    plots and the server, are the heads' mean, a distribution that is 0 on padding like every
    head's."""

    def __init__(self, score: AdditiveScore, key_size: int) -> None:
        super().__init__(score, key_size)
        if key_size % score.heads:
            raise ValueError(f"the key size {key_size} is not a multiple of the "
                             f"{score.heads} attention heads")
        self.value_layer = nn.Linear(key_size, key_size, bias=False)  # W_V

    def prepare(self, keys: torch.Tensor, mask: torch.Tensor) -> Memory:
        n, s, k = keys.shape
        h = self.score.heads
        values = self.value_layer(keys).view(n, s, h, k // h).transpose(1, 2)  # (N, H, S, K/H)
        return Memory(values.contiguous(), self.score.project(keys), mask)

    def forward(self, query: torch.Tensor, memory: Memory, step: int = 0,
                coverage: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score.per_head(query, memory.keys, memory.proj)
        mask = memory.row_mask().unsqueeze(2)  # (B, S, 1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1,
                                dtype=at_least_float32(scores))  # (B, S, H)
        n, h, s, d = memory.keys.shape
        per_head = weights.view(n, -1, s, h).permute(0, 3, 1, 2)  # (N, H, g, S)
        # sum_s a^h(s) v^h_s: as a product and a sum, which runs faster than bmm's many small
        # products for training's g = 1
        context = (per_head.unsqueeze(4) * memory.keys.unsqueeze(2)).sum(3)  # (N, H, g, K / H)
        context = context.transpose(1, 2).reshape(-1, h * d)  # (B, K)
        return context, weights.mean(2)  # (B, K), (B, S)


class LocalAttention(GlobalAttention):
    """Local attention (Luong et al. 2015, Sec. 3.2): only the window [p_t - D, p_t + D] of
    source positions is attended; every other position gets exactly 0.

    local-m (monotonic): p_t = t, clipped to the last real source position, so that targets
        longer than their source still see its end; weights are the softmax of the scores
        over the window.
    local-p (predictive, Eq. 9): p_t = S_b * sigmoid(v_p^T tanh(W_p h_t)), S_b the length of
        the sentence, and the scores are weighted by a Gaussian centred on p_t with
        sigma = D / 2 (Eq. 10). Eq. 10 multiplies a window softmax by the Gaussian, so its
        weights sum to less than 1; here they are renormalised, softmax(score - (s - p_t)^2 /
        (2 sigma^2)) over the window, which keeps the context a weighted mean of the states and
        p_t differentiable through the Gaussian term.

    The window is clipped at the sentence edges and never covers padding."""

    def __init__(self, score: Score, key_size: int, window: int, predictive: bool,
                 query_size: int, size: int) -> None:
        super().__init__(score, key_size)
        self.window = window
        self.predictive = predictive
        if predictive:
            self.position = nn.Sequential(nn.Linear(query_size, size, bias=False), nn.Tanh(),
                                          nn.Linear(size, 1, bias=False))  # v_p, W_p of Eq. 9

    def centre(self, query: torch.Tensor, memory: Memory, step: int) -> torch.Tensor:
        """(B,) aligned source position p_t, a real number for local-p."""
        lengths = memory.lengths().to(query.dtype)  # (B,)
        if self.predictive:
            return lengths * torch.sigmoid(self.position(query).squeeze(1))
        return torch.clamp(lengths - 1, max=float(step))

    def align(self, query: torch.Tensor, memory: Memory, step: int,
              coverage: torch.Tensor | None) -> torch.Tensor:
        scores = self.score(query, memory.keys, memory.proj)  # (B, S)
        p = self.centre(query, memory, step)  # (B,)
        positions = torch.arange(scores.size(1), device=scores.device, dtype=scores.dtype)
        distance = positions.unsqueeze(0) - p.unsqueeze(1)  # (B, S)
        inside = (distance.abs() <= self.window) & memory.row_mask()  # (B, S)
        if self.predictive:
            sigma = self.window / 2
            scores = scores - distance.pow(2) / (2 * sigma ** 2)
        return masked_softmax(scores, inside)


class HardAttention(GlobalAttention):
    """Hard attention (Xu et al. 2015, Sec. 4.1): the context is exactly one source state.

    Inference attends to the argmax of the scores. Training samples the position with the
    straight-through Gumbel-softmax estimator (Jang et al. 2017, Sec. 2-3; Bengio et al. 2013):
    the forward pass uses a one-hot sample of softmax(scores), the backward pass the gradient
    of the relaxed sample softmax((scores + g) / tau). It was chosen over REINFORCE with a
    baseline (Xu et al. 2015, Eq. 11-12) because it needs no baseline network or reward
    shaping, gives low-variance gradients from one sample, and keeps training a single
    differentiable loss like every other variant."""

    def __init__(self, score: Score, key_size: int, temperature: float) -> None:
        super().__init__(score, key_size)
        self.temperature = temperature

    def align(self, query: torch.Tensor, memory: Memory, step: int,
              coverage: torch.Tensor | None) -> torch.Tensor:
        scores = self.score(query, memory.keys, memory.proj)  # (B, S)
        logits = scores.masked_fill(~memory.row_mask(), float("-inf"))
        if self.training:
            return F.gumbel_softmax(logits, tau=self.temperature, hard=True)  # (B, S) one-hot
        return F.one_hot(logits.argmax(dim=1), logits.size(1)).to(scores.dtype)


class NoAttention(nn.Module):
    """No attention: the plain encoder-decoder (Sutskever et al. 2014; Cho et al. 2014), whose
    decoder knows the source only through the fixed-length vector it starts from (the bridge of
    the encoder's final states). The context is empty and the weights are all zero."""

    context_size = 0
    uses_coverage = False

    def prepare(self, keys: torch.Tensor, mask: torch.Tensor) -> Memory:
        return Memory(keys, None, mask)

    def forward(self, query: torch.Tensor, memory: Memory, step: int = 0,
                coverage: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, s = query.size(0), memory.mask.size(1)
        return query.new_zeros(b, 0), query.new_zeros(b, s)  # (B, 0), (B, S)


Attention = GlobalAttention | NoAttention


def build_attention(kind: str, score: str, query_size: int, key_size: int, size: int,
                    window: int, temperature: float, coverage: bool, heads: int = 1,
                    operations: Operations = PLAIN_OPERATIONS) -> Attention:
    """The attention module for `model.attention` settings; an additive score computes
    through `operations`."""
    if coverage and (kind != "global" or score != "additive"):
        raise ValueError("coverage needs global attention with the additive score")
    if heads > 1 and (kind != "global" or score != "additive" or coverage):
        raise ValueError("attention heads need global attention with the additive score, "
                         "without coverage")
    if kind == "none":
        return NoAttention()
    scorer = build_score(score, query_size, key_size, size, heads, operations)
    if kind == "global":
        if coverage:
            return CoverageAttention(scorer, key_size)
        if heads > 1:
            return MultiHeadAttention(scorer, key_size)
        return GlobalAttention(scorer, key_size)
    if kind in ("local-m", "local-p"):
        return LocalAttention(scorer, key_size, window, kind == "local-p", query_size, size)
    if kind == "hard":
        return HardAttention(scorer, key_size, temperature)
    raise ValueError(f"unknown attention type {kind!r}, expected one of {TYPES}")

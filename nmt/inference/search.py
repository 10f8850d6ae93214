"""Greedy and beam search over `encode` and `decode_step` of a `Seq2Seq` (or an `Ensemble` of
them), batched over sentences (and beams). Sentences that finish leave the batch, so the
remaining steps cost less.

Shapes: B sentences, K beam size, S source length, V target vocabulary, H decoder size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nmt.data.tokenizer import BOS, EOS
from nmt.errors import UsageError
from nmt.model.seq2seq import Seq2Seq

Model = Seq2Seq  # or nmt.inference.ensemble.Ensemble: the same encode and decode_step


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, EOS excluded
    score: float  # log-probability (beam: divided by the length penalty)
    attention: torch.Tensor | None = None  # (len(tokens) + 1, S): one row per step, EOS's last
    alternatives: list[list[tuple[int, float]]] | None = None  # greedy: top tokens per step


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty (Wu et al. 2016, Eq. 14): ((5 + |Y|) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.inference_mode()
def greedy(model: Model, src: torch.Tensor, src_len: torch.Tensor, max_len: torch.Tensor,
           keep_attention: bool = False, top_k: int = 0
           ) -> list[Hypothesis]:
    """Picks the most likely token at each step; returns one hypothesis per sentence.
    max_len (B,): most output tokens per sentence, EOS excluded."""
    memory, state = model.encode(src, src_len)
    b = src.size(0)
    rows = torch.arange(b)  # sentence of each active row
    prev = torch.full((b,), BOS, dtype=torch.long, device=src.device)
    tokens: list[list[int]] = [[] for _ in range(b)]
    scores = [0.0] * b
    attn: list[list[torch.Tensor]] = [[] for _ in range(b)]
    alts: list[list[list[tuple[int, float]]]] = [[] for _ in range(b)]
    for t in range(int(max_len.max()) + 1):
        state, weights, logp = model.decode_step(prev, state, memory, t)  # (b', V)
        best_lp, best = logp.max(dim=1)
        forced = max_len[rows] <= t  # length limit reached: finish with EOS
        best = torch.where(forced.to(best.device), torch.full_like(best, EOS), best)
        best_lp = logp.gather(1, best.unsqueeze(1)).squeeze(1)
        done = best == EOS
        for r, (i, y, lp) in enumerate(zip(rows.tolist(), best.tolist(), best_lp.tolist())):
            if keep_attention:
                attn[i].append(weights[r].cpu())
            if top_k:
                top = logp[r].topk(top_k)
                alts[i].append(list(zip(top.indices.tolist(), top.values.exp().tolist())))
            if y != EOS:
                tokens[i].append(y)
            scores[i] += lp
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            rows = rows[keep.cpu()]
            memory, state, best = memory.select(keep), state.select(keep), best[keep]
        prev = best
    return [Hypothesis(tokens[i], scores[i],
                       torch.stack(attn[i]) if keep_attention else None,
                       alts[i] if top_k else None) for i in range(b)]


def widest_beam(vocab: int) -> int:
    """The widest beam a `vocab`-piece target vocabulary allows: the first step ranks 2 x beam
    candidates among the vocabulary's pieces."""
    return max(1, vocab // 2)


def check_beam(beam: int, vocab: int, name: str = "--beam") -> None:
    if beam > widest_beam(vocab):
        raise UsageError(f"{name}: {beam} is wider than this model's {vocab}-piece target "
                         f"vocabulary allows (at most {widest_beam(vocab)})")


@torch.inference_mode()
def beam_search(model: Model, src: torch.Tensor, src_len: torch.Tensor, max_len: torch.Tensor,
                beam: int, n_best: int = 1, alpha: float = 1.0,
                keep_attention: bool = False, early_stop: bool = False
                ) -> list[list[Hypothesis]]:
    """Beam search; returns the `n_best` hypotheses of each sentence, best first, scored by
    log-probability / length_penalty.

    A sentence stops when `beam` hypotheses have ended or, with `early_stop` (as OpenNMT-py and
    Joey NMT do), as soon as its best candidate, by log-probability, is an ending one and
    `n_best` have ended: every live hypothesis already scores lower and can only lose more.
    Without a length penalty (alpha 0) the two rules return the same best hypothesis; with one,
    a longer hypothesis may in principle have overtaken it.

    The first step runs once per sentence, not once per beam (all beams start equal)."""
    b, k = src.size(0), beam
    dev = src.device
    memory, state = model.encode(src, src_len)
    width = 1  # live hypotheses per sentence: one until the first step has run
    sent = torch.arange(b)  # sentence of each active group of `width` rows
    scores = torch.zeros((b, 1), device=dev)  # (n, width) cumulative log-probabilities
    history = torch.empty((b, 0), dtype=torch.long, device=dev)  # (n*width, t)
    att_hist = None
    prev = torch.full((b,), BOS, dtype=torch.long, device=dev)
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    n_done = torch.zeros(b, dtype=torch.long)  # (n,) finished hypotheses per active sentence
    for t in range(int(max_len.max()) + 1):
        state, weights, logp = model.decode_step(prev, state, memory, t)  # logp (nw, V)
        if keep_attention:
            w = weights.unsqueeze(1)  # (n*width, 1, S)
            att_hist = w if att_hist is None else torch.cat([att_hist, w], dim=1)
        n, v = scores.size(0), logp.size(1)
        at_limit = (max_len[sent] <= t).to(dev)  # (n,) must end now
        if bool(at_limit.any()):
            rows = at_limit.repeat_interleave(width)
            forced = torch.full_like(logp[rows], float("-inf"))
            forced[:, EOS] = logp[rows][:, EOS]
            logp[rows] = forced
        cand = (scores.unsqueeze(2) + logp.view(n, width, v)).view(n, width * v)
        top_s, top_i = cand.topk(2 * k, dim=1)  # (n, 2K)
        top_beam, top_tok = top_i // v, top_i % v
        is_eos = top_tok == EOS
        # finalise EOS candidates ranked within the first K
        ended = is_eos[:, :k] & (top_s[:, :k] > float("-inf"))  # (n, K)
        for g, r in ended.nonzero().tolist():
            i = int(sent[g])
            row = g * width + int(top_beam[g, r])
            toks = history[row].tolist()
            att = att_hist[row].cpu() if keep_attention else None
            finished[i].append(Hypothesis(
                toks, float(top_s[g, r]) / length_penalty(len(toks) + 1, alpha), att))
        n_done += ended.sum(dim=1).cpu()
        # continue with the best K candidates that are not EOS
        order = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :k]
        scores = top_s.gather(1, order)  # (n, K)
        src_rows = (torch.arange(n, device=dev).unsqueeze(1) * width
                    + top_beam.gather(1, order)).view(-1)  # (n*K,)
        prev = top_tok.gather(1, order).view(-1)
        history = torch.cat([history[src_rows], prev.unsqueeze(1)], dim=1)
        if keep_attention:
            att_hist = att_hist[src_rows]
        state = state.select(src_rows)
        if width < k:  # after the first step every sentence has K live hypotheses
            memory = memory.grouped(k)  # one memory row per sentence, shared by its K rows
            width = k
        done = (n_done >= k) | at_limit.cpu()
        if early_stop:
            done |= is_eos[:, 0].cpu() & (n_done >= n_best)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            rows = (keep.unsqueeze(1) * k + torch.arange(k)).view(-1).to(dev)
            sent, n_done, scores = sent[keep], n_done[keep], scores[keep.to(dev)]
            prev, history = prev[rows], history[rows]
            memory, state = memory.select(keep.to(dev)), state.select(rows)
            if keep_attention:
                att_hist = att_hist[rows]
    return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]

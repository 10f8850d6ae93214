"""Greedy and beam search over `Seq2Seq.encode` and `Decoder.step`, batched over sentences (and
beams). Sentences that finish leave the batch, so the remaining steps cost less.

Shapes: B sentences, K beam size, S source length, V target vocabulary, H decoder size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nmt.data.tokenizer import BOS, EOS
from nmt.model.seq2seq import Seq2Seq


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
def greedy(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, max_len: torch.Tensor,
           keep_attention: bool = False, top_k: int = 0) -> list[Hypothesis]:
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
        state, weights = model.decoder.step(model.decoder.embed_inputs(prev), state, memory, t)
        logp = model.log_probs(state.feed)  # (b', V)
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


@torch.inference_mode()
def beam_search(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, max_len: torch.Tensor,
                beam: int, n_best: int = 1, alpha: float = 1.0,
                keep_attention: bool = False) -> list[list[Hypothesis]]:
    """Beam search; returns the `n_best` hypotheses of each sentence, best first, scored by
    log-probability / length_penalty. A sentence stops when `beam` hypotheses have ended."""
    b, k = src.size(0), beam
    memory, state = model.encode(src, src_len)
    expand = torch.arange(b, device=src.device).repeat_interleave(k)  # (B*K,)
    memory, state = memory.select(expand), state.select(expand)
    sent = torch.arange(b)  # sentence of each active group of K rows
    scores = torch.full((b, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # (n, K) cumulative log-probabilities; one live beam at first
    history = torch.empty((b * k, 0), dtype=torch.long, device=src.device)  # (n*K, t)
    att_hist = None
    prev = torch.full((b * k,), BOS, dtype=torch.long, device=src.device)
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    for t in range(int(max_len.max()) + 1):
        state, weights = model.decoder.step(model.decoder.embed_inputs(prev), state, memory, t)
        if keep_attention:
            w = weights.unsqueeze(1)  # (n*K, 1, S)
            att_hist = w if att_hist is None else torch.cat([att_hist, w], dim=1)
        logp = model.log_probs(state.feed)  # (n*K, V)
        n, v = scores.size(0), logp.size(1)
        at_limit = (max_len[sent] <= t).to(logp.device)  # (n,) must end now
        if bool(at_limit.any()):
            rows = at_limit.repeat_interleave(k)
            forced = torch.full_like(logp[rows], float("-inf"))
            forced[:, EOS] = logp[rows][:, EOS]
            logp[rows] = forced
        cand = (scores.unsqueeze(2) + logp.view(n, k, v)).view(n, k * v)  # (n, K*V)
        top_s, top_i = cand.topk(2 * k, dim=1)  # (n, 2K)
        top_beam, top_tok = top_i // v, top_i % v
        is_eos = top_tok == EOS
        # finalise EOS candidates ranked within the first K
        for g, r in (is_eos[:, :k] & (top_s[:, :k] > float("-inf"))).nonzero().tolist():
            i = int(sent[g])
            row = g * k + int(top_beam[g, r])
            toks = history[row].tolist()
            att = att_hist[row].cpu() if keep_attention else None
            finished[i].append(Hypothesis(
                toks, float(top_s[g, r]) / length_penalty(len(toks) + 1, alpha), att))
        # continue with the best K candidates that are not EOS
        order = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :k]  # (n, K)
        scores = top_s.gather(1, order)
        src_rows = (torch.arange(n, device=logp.device).unsqueeze(1) * k
                    + top_beam.gather(1, order)).view(-1)  # (n*K,)
        prev = top_tok.gather(1, order).view(-1)
        history = torch.cat([history[src_rows], prev.unsqueeze(1)], dim=1)
        if keep_attention:
            att_hist = att_hist[src_rows]
        state = state.select(src_rows)
        done = torch.tensor([len(finished[int(i)]) >= k for i in sent]) | at_limit.cpu()
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            rows = (keep.unsqueeze(1) * k + torch.arange(k)).view(-1).to(logp.device)
            sent, scores = sent[keep], scores[keep.to(logp.device)]
            prev, history = prev[rows], history[rows]
            memory, state = memory.select(rows), state.select(rows)
            if keep_attention:
                att_hist = att_hist[rows]
    return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]

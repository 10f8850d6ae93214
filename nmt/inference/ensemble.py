"""Ensemble decoding: several models with one target vocabulary searched as one, each step's
log-probabilities the mean of theirs (as OpenNMT-py does), over the same batched searches.

    ensemble = Ensemble([model_a, model_b])
    hyps = beam_search(ensemble, src, src_len, max_len, beam=5)

Each model keeps its own memory and decoder state (`Members`); the attention weights shown for
a step are the mean of the models' (rows still sum to 1 over the source). An ensemble of one
model searches exactly as the model alone.
"""

from __future__ import annotations

import torch
from torch import nn

from nmt.model.seq2seq import Seq2Seq


class Members(tuple):
    """One value per model (memories or decoder states), selected or grouped together."""

    def select(self, index: torch.Tensor) -> Members:
        return Members(m.select(index) for m in self)

    def grouped(self, group: int) -> Members:
        return Members(m.grouped(group) for m in self)


class Ensemble(nn.Module):
    def __init__(self, models: list[Seq2Seq]) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = nn.ModuleList(models)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[Members, Members]:
        encoded = [m.encode(src, src_len) for m in self.models]
        return Members(e[0] for e in encoded), Members(e[1] for e in encoded)

    def decode_step(self, prev: torch.Tensor, states: Members, memories: Members, t: int
                    ) -> tuple[Members, torch.Tensor, torch.Tensor]:
        """As `Seq2Seq.decode_step`: -> the models' new states, the mean attention weights
        (B, S) and the mean log-probabilities (B, V)."""
        steps = [m.decode_step(prev, s, mem, t)
                 for m, s, mem in zip(self.models, states, memories)]
        weights = torch.stack([w for _, w, _ in steps]).mean(dim=0)  # (B, S)
        logp = torch.stack([lp for _, _, lp in steps]).mean(dim=0)  # (B, V)
        return Members(s for s, _, _ in steps), weights, logp

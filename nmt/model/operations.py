"""The operations that a faster implementation may replace without the model knowing it, as the
model writes them: the additive attention score, the LSTM cell's update and the summed
cross-entropy of training. `build_model` takes another implementation that computes the same
values (the fast layer's fused kernels, `nmt.fast.kernels.FUSED`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Operations:
    def additive_score(self, proj: torch.Tensor, q: torch.Tensor, v: torch.Tensor
                       ) -> torch.Tensor:
        """proj (N, S, A) or (N, g, S, A) projected keys, q (N, g, A) projected queries, v
        (H, D) with A = H x D -> (N, g, S, H): 2 v_h^T sigmoid(proj + q) over each head's
        features (`nmt.model.scores.AdditiveScore`)."""
        if proj.dim() == 3:
            proj = proj.unsqueeze(1)  # (N, 1, S, A)
        y = torch.sigmoid(proj + q.unsqueeze(2))  # (N, g, S, A)
        if v.size(0) == 1:  # one head: a matrix-vector product
            return 2 * F.linear(y, v)  # (N, g, S, 1)
        return 2 * (y.unflatten(3, tuple(v.shape)) * v).sum(4)  # (N, g, S, H)

    def lstm_cell(self, gates: torch.Tensor, c: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """gates (B, 4H) pre-activations in the order i, f, g, o, c (B, H) -> h', c' (B, H):
            c' = sigmoid(f) * c + sigmoid(i) * tanh(g),  h' = sigmoid(o) * tanh(c')
        (Hochreiter and Schmidhuber 1997, with the forget gate of Gers et al. 2000)."""
        i, f, g, o = gates.chunk(4, dim=1)  # each (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor,
                      label_smoothing: float) -> torch.Tensor:
        """logits (N, V), target (N,) -> the summed cross-entropy, label-smoothed."""
        return F.cross_entropy(logits, target, reduction="sum", label_smoothing=label_smoothing)


PLAIN_OPERATIONS = Operations()

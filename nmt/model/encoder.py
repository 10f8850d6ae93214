"""Bidirectional LSTM encoder (Bahdanau et al. 2014, Sec. 3.2): one annotation per source token,
the forward and backward states concatenated; padding never enters a state.

The weights are those of one `nn.LSTM`. On float32 CPU tensors with the fused kernels
(`nmt.kernels`), the encoder runs its own step loop over them: the input products of all steps
at once, then per step a packed recurrent product (`nmt.fast.deferred`) and the fused cell.
The backward direction reads each sentence reversed within its length, so that both directions
run over padding only after a sentence's end, where it changes nothing that is kept. Elsewhere
(CUDA, autocast, no C compiler), `nn.LSTM` runs on packed sequences; both give the same results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt import kernels
from nmt.data.tokenizer import PAD
from nmt.fast.deferred import linear, step_loop
from nmt.model.dropout import Dropout


def reversal_index(lengths: torch.Tensor, s: int) -> torch.Tensor:
    """(B, S) positions that reverse each sentence within its length (padding stays): gathering
    with it reverses, and gathering again restores."""
    t = torch.arange(s, device=lengths.device).unsqueeze(0)  # (1, S)
    n = lengths.unsqueeze(1)  # (B, 1)
    return torch.where(t < n, n - 1 - t, t)


def _gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, S, D), index (B, S) -> x[b, index[b, t]] (B, S, D)."""
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.size(2)))


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, emb_size: int, hidden_size: int, layers: int,
                 dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb_size, padding_idx=PAD)
        self.dropout = Dropout(dropout)
        self.rnn = nn.LSTM(emb_size, hidden_size, layers, batch_first=True, bidirectional=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.between = Dropout(self.rnn.dropout)  # between layers, as nn.LSTM's dropout
        self.output_size = 2 * hidden_size

    def forward(self, src: torch.Tensor, src_len: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """src (B, S) ids, src_len (B,) lengths ->
        annotations (B, S, 2He), zero on padding, and the top layer's final (h, c), each (B, 2He)
        (forward state after the last real token, backward state after the first)."""
        x = self.dropout(self.embed(src))  # (B, S, E)
        if kernels.usable(x):
            return self._loop(x, src_len.to(src.device), src != PAD)
        packed = pack_padded_sequence(x, src_len.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, c) = self.rnn(packed)  # h, c: (layers * 2, B, He)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))

        def top(s: torch.Tensor) -> torch.Tensor:
            return torch.cat([s[-2], s[-1]], dim=-1)  # (B, 2He)

        return out, (top(h), top(c))

    def _loop(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        reverse = reversal_index(lengths, x.size(1))  # (B, S)
        last = (lengths - 1).view(-1, 1)  # (B, 1) the step of a sentence's last token
        with step_loop():
            for layer in range(self.rnn.num_layers):
                if layer:
                    x = self.between(x)
                out_f, h_f, c_f = self._direction(x, last, f"_l{layer}")
                out_b, h_b, c_b = self._direction(_gather_steps(x, reverse), last,
                                                  f"_l{layer}_reverse")
                x = torch.cat([out_f, _gather_steps(out_b, reverse)], dim=2)  # (B, S, 2He)
                x = x * mask.unsqueeze(2)
        return x, (torch.cat([h_f, h_b], dim=1), torch.cat([c_f, c_b], dim=1))

    def _direction(self, x: torch.Tensor, last: torch.Tensor, suffix: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One direction of one layer over x (B, S, D) -> its states (B, S, He) and the final
        (h, c), each (B, He), taken at step `last`."""
        rnn = self.rnn
        bias = getattr(rnn, "bias_ih" + suffix) + getattr(rnn, "bias_hh" + suffix)
        inputs = F.linear(x, getattr(rnn, "weight_ih" + suffix), bias)  # (B, S, 4He)
        w_hh = getattr(rnn, "weight_hh" + suffix)
        c = inputs.new_zeros(inputs.size(0), w_hh.size(1))  # (B, He)
        hs, cs = [], []
        for t, gates in enumerate(inputs.unbind(1)):  # (B, 4He)
            if t:  # the initial state is zero
                gates = gates + linear(hs[-1], w_hh)
            h, c = kernels.lstm_cell(gates, c)
            hs.append(h)
            cs.append(c)
        states = torch.stack(hs, dim=1)  # (B, S, He)
        index = last.unsqueeze(2).expand(-1, 1, states.size(2))  # (B, 1, He)
        final_c = torch.stack(cs, dim=1).gather(1, index).squeeze(1)
        return states, states.gather(1, index).squeeze(1), final_c

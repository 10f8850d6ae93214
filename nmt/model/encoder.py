"""Bidirectional LSTM encoder (Bahdanau et al. 2014, Sec. 3.2): one annotation per source token,
the forward and backward states concatenated; padding never enters a state (`nn.LSTM` on packed
sequences)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.data.tokenizer import PAD


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, emb_size: int, hidden_size: int, layers: int,
                 dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb_size, padding_idx=PAD)
        self.dropout = nn.Dropout(dropout)
        self.rnn = nn.LSTM(emb_size, hidden_size, layers, batch_first=True, bidirectional=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.output_size = 2 * hidden_size

    def forward(self, src: torch.Tensor, src_len: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """src (B, S) ids, src_len (B,) lengths ->
        annotations (B, S, 2He), zero on padding, and the top layer's final (h, c), each (B, 2He)
        (forward state after the last real token, backward state after the first)."""
        x = self.dropout(self.embed(src))  # (B, S, E)
        packed = pack_padded_sequence(x, src_len.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, c) = self.rnn(packed)  # h, c: (layers * 2, B, He)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))

        def top(s: torch.Tensor) -> torch.Tensor:
            return torch.cat([s[-2], s[-1]], dim=-1)  # (B, 2He)

        return out, (top(h), top(c))

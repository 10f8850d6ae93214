"""LSTM decoder with attention, in two wirings.

One step t with `luong` wiring (Luong et al. 2015, Sec. 3 and 3.3): attend *after* the LSTM,
with its new state:
    gates = W_x y_{t-1} + W_f h~_{t-1} + W_h h_{t-1} + b     (input feeding: W_f h~_{t-1})
    h_t, c_t = LSTM(gates, c_{t-1})
    c_t', a_t = attention(h_t, annotations)                   (context vector, weights)
    h~_t = tanh(W_c [c_t'; h_t])                              (Eq. 5, the attentional state)

With `bahdanau` wiring (Bahdanau et al. 2014, Sec. 3.1 and App. A.2.2): attend *before* the
LSTM, with the previous state, and feed the context into the step:
    c_t', a_t = attention(h_{t-1}, annotations)               (Eq. 5-6, query s_{i-1})
    gates = W_x y_{t-1} + W_f c_t' + W_h h_{t-1} + b          (s_i = f(s_{i-1}, y_{i-1}, c_i))
    h_t, c_t = LSTM(gates, c_{t-1})
    h~_t = tanh(W_c [c_t'; h_t])                              (the readout, one tanh layer in
                                                               place of the paper's maxout)

With `model.layer_norm` (Ba et al. 2016, Sec. 3.1, layer-normalised LSTM), each layer's gate
pre-activations are normalised per part, and the cell before its output:
    gates = LN(W_x y_{t-1}) + LN(W_h [feed; h_{t-1}]) + b
    h_t = o * tanh(LN(c_t))
(layer l > 0: LN(W_h [h^{l-1}_t; h^l_{t-1}]) + b), each LN with its own gain and bias.

With `model.attention.coverage`, the state also carries the sum of the attention weights so far
(Tu et al. 2016), which the attention reads and each step extends.

`embed_inputs` computes the W_x y part for many steps at once (one matrix product for the whole
target in training); `step` does the rest of one step and is the only path, used by teacher
forcing (`forward`) and by search alike. The output layer p(y_t) = softmax(W_s h~_t) (Eq. 6)
lives in the model, so training can apply it once to the real tokens of all steps.

The cell's update runs as `operations.lstm_cell`, given when the model is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nmt.data.tokenizer import PAD
from nmt.model.attention import Attention, Memory
from nmt.model.operations import PLAIN_OPERATIONS, Operations


@dataclass
class DecoderState:
    h: torch.Tensor  # (L, B, H) hidden state of each decoder layer
    c: torch.Tensor  # (L, B, H) cell state of each decoder layer
    feed: torch.Tensor  # (B, H) previous attentional state h~_{t-1} (zeros at t = 0)
    coverage: torch.Tensor | None = None  # (B, S) sum of earlier attention (coverage model)

    def select(self, index: torch.Tensor) -> DecoderState:
        coverage = None if self.coverage is None else self.coverage.index_select(0, index)
        return DecoderState(self.h.index_select(1, index), self.c.index_select(1, index),
                            self.feed.index_select(0, index), coverage)


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, emb_size: int, hidden_size: int, layers: int,
                 dropout: float, input_feeding: bool, wiring: str,
                 attention: Attention, layer_norm: bool = False,
                 operations: Operations = PLAIN_OPERATIONS) -> None:
        super().__init__()
        self.operations = operations
        if wiring not in ("luong", "bahdanau"):
            raise ValueError(f"unknown decoder wiring {wiring!r}")
        self.hidden_size = hidden_size
        self.layers = layers
        self.early = wiring == "bahdanau"  # attend before the LSTM step
        self.input_feeding = input_feeding and not self.early
        self.embed = nn.Embedding(vocab_size, emb_size, padding_idx=PAD)
        self.dropout = nn.Dropout(dropout)
        h4 = 4 * hidden_size
        self.input_layer = nn.Linear(emb_size, h4)  # W_x and the gate bias
        context_size = attention.context_size
        feed = context_size if self.early else hidden_size if self.input_feeding else 0
        # recurrent weights (4H, in) of layer 0 act on [feed; h_{t-1}], where feed is h~_{t-1}
        # (luong, input feeding) or c_t' (bahdanau); those of layer l > 0 act on [h_{l-1}; h_l]
        self.recurrent = nn.ParameterList(
            [nn.Parameter(torch.empty(h4, feed + hidden_size))]
            + [nn.Parameter(torch.empty(h4, 2 * hidden_size)) for _ in range(layers - 1)]
        )
        self.upper_bias = nn.ParameterList(
            [nn.Parameter(torch.zeros(h4)) for _ in range(layers - 1)])
        self.attention = attention
        self.combine = nn.Linear(context_size + hidden_size, hidden_size, bias=False)  # W_c
        self.layer_norm = layer_norm
        if layer_norm:  # LN of the input part, of each layer's recurrent part, of each cell
            self.input_norm = nn.LayerNorm(h4)
            self.recurrent_norm = nn.ModuleList([nn.LayerNorm(h4) for _ in range(layers)])
            self.cell_norm = nn.ModuleList([nn.LayerNorm(hidden_size) for _ in range(layers)])
        bound = hidden_size ** -0.5
        for w in self.recurrent:
            nn.init.uniform_(w, -bound, bound)

    def embed_inputs(self, y: torch.Tensor) -> torch.Tensor:
        """(..., ) previous-token ids -> (..., 4H) their contribution to layer 0's gates."""
        emb = self.dropout(self.embed(y))  # (..., E)
        wx = F.linear(emb, self.input_layer.weight)  # (..., 4H) W_x y
        return (self.input_norm(wx) if self.layer_norm else wx) + self.input_layer.bias  # + b

    def _cell(self, gates: torch.Tensor, c: torch.Tensor, layer: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """gates (B, 4H) pre-activations in the order i, f, g, o, c (B, H) -> h', c' (B, H)."""
        if not self.layer_norm:
            return self.operations.lstm_cell(gates, c)
        i, f, g, o = gates.chunk(4, dim=1)  # each (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(self.cell_norm[layer](c)), c

    def step(self, x: torch.Tensor, state: DecoderState, memory: Memory,
             t: int = 0) -> tuple[DecoderState, torch.Tensor]:
        """x (B, 4H) from `embed_inputs` -> (new state, attention weights (B, S)).
        The new state's `feed` is the attentional state h~_t (B, H)."""
        hs, cs = [], []
        below = state.feed if self.input_feeding else None
        if self.early:
            context, weights = self.attention(state.h[-1], memory, t, state.coverage)
            below = context  # (B, K)
        for layer in range(self.layers):
            prev = state.h[layer]
            inp = prev if below is None else torch.cat([below, prev], dim=1)
            bias = x if layer == 0 else self.upper_bias[layer - 1]
            wh = F.linear(inp, self.recurrent[layer])  # (B, 4H)
            if self.layer_norm:
                wh = self.recurrent_norm[layer](wh)
            h, c = self._cell(bias + wh, state.c[layer], layer)
            hs.append(h)
            cs.append(c)
            below = self.dropout(h) if layer + 1 < self.layers else h
        if not self.early:
            context, weights = self.attention(h, memory, t, state.coverage)  # (B, K), (B, S)
        att = self.dropout(torch.tanh(self.combine(torch.cat([context, h], dim=1))))  # (B, H)
        coverage = None
        if self.attention.uses_coverage:
            coverage = weights if state.coverage is None else state.coverage + weights
        return DecoderState(torch.stack(hs), torch.stack(cs), att, coverage), weights

    def forward(self, tgt_in: torch.Tensor, state: DecoderState,
                memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: tgt_in (B, T) -> attentional states (B, T, H), weights (B, T, S)."""
        x = self.embed_inputs(tgt_in)  # (B, T, 4H), one product for all steps
        outputs, weights = [], []
        for t, x_t in enumerate(x.unbind(1)):  # unbind: one backward node
            state, w = self.step(x_t, state, memory, t)
            outputs.append(state.feed)
            weights.append(w)
        return torch.stack(outputs, dim=1), torch.stack(weights, dim=1)

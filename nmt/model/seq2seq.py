"""The encoder-decoder model and `build_model`, the one place config becomes modules.

    src (B, S) --Encoder--> annotations (B, S, K) --Attention.prepare--> Memory
                        \\-> final states --Bridge--> DecoderState
    tgt_in (B, T) --Decoder (step x T)--> attentional states (B, T, H) --generator--> logits (.., V)
"""

from __future__ import annotations

import torch
from torch import nn

from nmt.config import ModelConfig
from nmt.data.tokenizer import PAD
from nmt.model.attention import Memory, at_least_float32, build_attention
from nmt.model.decoder import Decoder, DecoderState
from nmt.model.encoder import Encoder
from nmt.model.operations import PLAIN_OPERATIONS, Operations


class Bridge(nn.Module):
    """Decoder initial state from the encoder's final states (Bahdanau et al. 2014, App. A.2.2:
    s_0 = tanh(W_s h_1^<-)); here from both directions, for h and c, copied to every layer.
    `zeros` starts from zero states instead."""

    def __init__(self, kind: str, key_size: int, hidden_size: int, layers: int) -> None:
        super().__init__()
        self.kind, self.hidden_size, self.layers = kind, hidden_size, layers
        if kind == "projection":
            self.h_layer = nn.Linear(key_size, hidden_size)
            self.c_layer = nn.Linear(key_size, hidden_size)

    def forward(self, final: tuple[torch.Tensor, torch.Tensor]) -> DecoderState:
        h_enc, c_enc = final  # each (B, K)
        b = h_enc.size(0)
        if self.kind == "projection":
            h = torch.tanh(self.h_layer(h_enc))  # (B, H)
            c = self.c_layer(c_enc)
        else:
            h = c = h_enc.new_zeros(b, self.hidden_size)
        expand = (self.layers, b, self.hidden_size)
        return DecoderState(h.unsqueeze(0).expand(expand).contiguous(),
                            c.unsqueeze(0).expand(expand).contiguous(),
                            h_enc.new_zeros(b, self.hidden_size))


class Seq2Seq(nn.Module):
    def __init__(self, encoder: Encoder, bridge: Bridge, decoder: Decoder,
                 generator: nn.Linear) -> None:
        super().__init__()
        self.encoder, self.bridge, self.decoder, self.generator = (
            encoder, bridge, decoder, generator)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[Memory, DecoderState]:
        """src (B, S), src_len (B,) -> attention memory and the decoder's initial state."""
        annotations, final = self.encoder(src, src_len)  # (B, S, K)
        mask = src != PAD  # (B, S)
        return self.decoder.attention.prepare(annotations, mask), self.bridge(final)

    def forward(self, src: torch.Tensor, src_len: torch.Tensor,
                tgt_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced attentional states (B, T, H) and attention weights (B, T, S)."""
        memory, state = self.encode(src, src_len)
        return self.decoder(tgt_in, state, memory)

    def loss(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor,
             tgt_out: torch.Tensor, label_smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy over non-padding target tokens, and their number; the output
        layer runs once, over the N real tokens of all steps."""
        att, _ = self(src, src_len, tgt_in)  # (B, T, H)
        real = tgt_out != PAD  # (B, T)
        logits = self.generator(att[real])  # (N, V)
        gold = tgt_out[real]  # (N,)
        return self.decoder.operations.cross_entropy(logits, gold, label_smoothing), gold.numel()

    def log_probs(self, att: torch.Tensor) -> torch.Tensor:
        """(B, H) attentional states -> (B, V) log-probabilities of the next token, in float32
        (or wider) whatever the products' precision."""
        logits = self.generator(att)  # (B, V)
        return torch.log_softmax(logits, dim=-1, dtype=at_least_float32(logits))

    def decode_step(self, prev: torch.Tensor, state: DecoderState, memory: Memory, t: int
                    ) -> tuple[DecoderState, torch.Tensor, torch.Tensor]:
        """One search step: prev (B,) the previous tokens -> the new state, the attention
        weights (B, S) and the log-probabilities of the next token (B, V)."""
        x = self.decoder.embed_inputs(prev)  # (B, 4H)
        state, weights = self.decoder.step(x, state, memory, t)
        return state, weights, self.log_probs(state.feed)


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int,
                operations: Operations = PLAIN_OPERATIONS) -> Seq2Seq:
    """Builds the model described by `model` in the config; its additive score, LSTM cell and
    loss compute through `operations` (`nmt.model.operations`: the formulas as written by
    default)."""
    encoder = Encoder(src_vocab, cfg.emb_size, cfg.hidden_size, cfg.enc_layers, cfg.dropout)
    key_size = encoder.output_size
    a = cfg.attention
    attention = build_attention(a.type, a.score, query_size=cfg.decoder_size, key_size=key_size,
                                size=a.size, window=a.window, temperature=a.temperature,
                                coverage=a.coverage, heads=a.heads, operations=operations)
    decoder = Decoder(tgt_vocab, cfg.emb_size, cfg.decoder_size, cfg.dec_layers, cfg.dropout,
                      cfg.input_feeding, a.wiring, attention, cfg.layer_norm, operations)
    generator = nn.Linear(cfg.decoder_size, tgt_vocab, bias=False)
    if cfg.tie_embeddings:
        generator.weight = decoder.embed.weight
    bridge = Bridge(cfg.bridge, key_size, cfg.decoder_size, cfg.dec_layers)
    return Seq2Seq(encoder, bridge, decoder, generator)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

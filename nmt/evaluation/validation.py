"""Validation during training: the teacher-forced loss on the validation split, and BLEU/chrF of
greedy translations through `Translator`, the same path `nmt eval` takes, so the numbers agree."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nmt.config import Config
from nmt.data.batching import Dataset, collate, token_batches
from nmt.data.prepare import Prepared
from nmt.evaluation.metrics import corpus_scores
from nmt.inference.translator import Translator
from nmt.model.seq2seq import Seq2Seq

log = logging.getLogger(__name__)


@dataclass
class Validation:
    """One validation's scores: the teacher-forced loss per target token, BLEU and chrF."""

    loss: float
    bleu: float
    chrf: float

    def score(self, metric: str) -> float:
        """The `train.metric` score, higher is better (the loss is negated)."""
        return -self.loss if metric == "loss" else getattr(self, metric)


def make_validator(model: Seq2Seq, prepared: Prepared, cfg: Config,
                   device: torch.device) -> Callable[[], Validation]:
    """A function that scores `model` on the validation split of `prepared`."""
    valid = Dataset.load(prepared.ids("valid"))
    batches = token_batches(valid.widths, cfg.train.batch_tokens, 0, 0, shuffle=False)
    sources = prepared.lines("valid", prepared.src_lang)
    refs = prepared.lines("valid", prepared.tgt_lang)
    if cfg.train.valid_max_sentences:
        sources = sources[:cfg.train.valid_max_sentences]
        refs = refs[:cfg.train.valid_max_sentences]
    tokenizer = prepared.tokenizer()

    def validate() -> Validation:
        model.eval()
        total, tokens = 0.0, 0
        with torch.inference_mode():
            for index in batches:
                b = collate(valid, index).to(device)
                loss, n = model.loss(b.src, b.src_len, b.tgt_in, b.tgt_out)
                total, tokens = total + loss.item(), tokens + n
        # a new translator each time: it packs the weights as they are now
        translator = Translator(model, tokenizer, cfg.decode, 4 * cfg.data.max_pieces, device)
        hyps = [t.text for t in translator.translate(sources, beam=1)]
        bleu, chrf = corpus_scores(hyps, refs, ("bleu", "chrf"), prepared.tgt_lang)
        log.debug("validation scores: %s [%s]; %s [%s]", bleu.text, bleu.signature, chrf.text,
                  chrf.signature)
        return Validation(total / max(tokens, 1), bleu.value, chrf.value)

    return validate

"""Corpus-level scores with sacrebleu, each with its signature, and BLEU by source length.

BLEU tokenises as sacrebleu does for the target language: `zh` for Chinese, `ja-mecab` and
`ko-mecab` for Japanese and Korean (where their packages are installed; else `13a`, said once),
`13a` for every other language. The signature says which (`tok:`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.languages import canonical

METRICS = {"bleu": BLEU, "chrf": CHRF, "ter": TER}
log = logging.getLogger(__name__)
LENGTH_BUCKETS = ((1, 10), (11, 20), (21, 30), (31, 40), (41, None))


@dataclass
class Score:
    name: str  # bleu, chrf or ter
    value: float
    signature: str  # sacrebleu's signature: how to reproduce the number
    text: str  # sacrebleu's formatted score line


def metric(name: str, target_lang: str = "", **kwargs):
    """sacrebleu's metric `name` ("bleu", "chrf", "ter"); BLEU tokenised for `target_lang`."""
    if name != "bleu":
        return METRICS[name](**kwargs)
    lang = canonical(target_lang).split("-")[0] if target_lang else ""
    return BLEU(trg_lang=lang if _tokenizer_works(lang) else "", **kwargs)


@functools.cache
def _tokenizer_works(lang: str) -> bool:
    """Whether sacrebleu's tokeniser for `lang` loads here (says so once where it does not)."""
    try:
        BLEU(trg_lang=lang)
        return True
    except (ImportError, RuntimeError, OSError):
        log.warning("BLEU: sacrebleu's tokeniser for %s is not installed (pip install "
                    "'sacrebleu[%s]'); tokenising %s with 13a", lang, lang, lang)
        return False


def corpus_scores(hypotheses: list[str], references: list[str],
                  names: tuple[str, ...] = ("bleu", "chrf"), target_lang: str = ""
                  ) -> list[Score]:
    """Scores detokenised hypotheses against one reference each, in `target_lang`."""
    scores = []
    for name in names:
        metric_ = metric(name, target_lang)
        result = metric_.corpus_score(hypotheses, [references])
        scores.append(Score(name, float(result.score), str(metric_.get_signature()),
                            str(result)))
    return scores

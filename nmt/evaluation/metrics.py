"""Corpus-level scores with sacrebleu, each with its signature, and BLEU by source length."""

from __future__ import annotations

from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF, TER

METRICS = {"bleu": BLEU, "chrf": CHRF, "ter": TER}
LENGTH_BUCKETS = ((1, 10), (11, 20), (21, 30), (31, 40), (41, None))


@dataclass
class Score:
    name: str  # bleu, chrf or ter
    value: float
    signature: str  # sacrebleu's signature: how to reproduce the number
    text: str  # sacrebleu's formatted score line


def corpus_scores(hypotheses: list[str], references: list[str],
                  names: tuple[str, ...] = ("bleu", "chrf")) -> list[Score]:
    """Scores detokenised hypotheses against one reference each."""
    scores = []
    for name in names:
        metric = METRICS[name]()
        result = metric.corpus_score(hypotheses, [references])
        scores.append(Score(name, float(result.score), str(metric.get_signature()), str(result)))
    return scores

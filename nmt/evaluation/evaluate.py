"""`nmt eval`: translate a test set, score it with sacrebleu, optionally by source length."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from nmt.data.corpus import read_lines
from nmt.errors import DataError
from nmt.evaluation.metrics import LENGTH_BUCKETS, Score, corpus_scores
from nmt.inference.translator import Translator


@dataclass
class Bucket:
    label: str  # e.g. "11-20"
    sentences: int
    bleu: float


@dataclass
class EvalResult:
    checkpoint: str
    sentences: int
    beam: int
    scores: list[Score]
    hypotheses: str  # file with one detokenised hypothesis per line
    seconds: float
    by_length: list[Bucket] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list, repr=False)  # the hypotheses themselves

    @property
    def sentences_per_s(self) -> float:
        return self.sentences / self.seconds if self.seconds else 0.0


def read_test_set(src: Path | None, ref: Path | None,
                  tsv: Path | None) -> tuple[list[str], list[str]]:
    """Sources and references from a pair of line-aligned files or a TSV (source, reference)."""
    if tsv is not None:
        sources, refs = [], []
        for number, line in enumerate(read_lines(tsv), start=1):
            cols = line.split("\t")
            if len(cols) < 2:
                raise DataError(f"{tsv}:{number}: expected source<TAB>reference")
            sources.append(cols[0])
            refs.append(cols[1])
        return sources, refs
    assert src is not None and ref is not None
    sources, refs = read_lines(src), read_lines(ref)
    if len(sources) != len(refs):
        raise DataError(f"{src} has {len(sources)} lines but {ref} has {len(refs)}: "
                        f"sources and references must be line-aligned")
    return sources, refs


def bucket_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def by_length(sources: list[str], hyps: list[str], refs: list[str], target_lang: str = ""
              ) -> list[Bucket]:
    """BLEU per source-length bucket (words); the buckets partition the test set."""
    out = []
    for lo, hi in LENGTH_BUCKETS:
        idx = [i for i, s in enumerate(sources) if lo <= max(1, len(s.split())) <= (hi or 10**9)]
        if not idx:
            continue
        (bleu,) = corpus_scores([hyps[i] for i in idx], [refs[i] for i in idx], ("bleu",),
                                target_lang)
        out.append(Bucket(bucket_label(lo, hi), len(idx), bleu.value))
    return out


def evaluate(translator: Translator, sources: list[str], refs: list[str], beam: int,
             metrics: tuple[str, ...], hyp_path: Path, checkpoint: str,
             lengths: bool = False, progress: bool = True) -> EvalResult:
    start = time.perf_counter()
    translations = translator.translate(sources, beam=beam, progress=progress)
    seconds = time.perf_counter() - start
    hyps = [t.text for t in translations]
    hyp_path.parent.mkdir(parents=True, exist_ok=True)
    hyp_path.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    target = translator.languages[1]
    result = EvalResult(checkpoint, len(sources), beam,
                        corpus_scores(hyps, refs, metrics, target), str(hyp_path), seconds,
                        outputs=hyps)
    if lengths:
        result.by_length = by_length(sources, hyps, refs, target)
    return result

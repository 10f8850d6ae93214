"""Paired bootstrap resampling (Koehn 2004, "Statistical Significance Tests for Machine
Translation Evaluation") between systems that translated one test set, with sacrebleu's own
implementation (`sacrebleu.significance.PairedTest`, test type `bs`, as `sacrebleu --paired-bs`):

    every resample draws the test set's sentences with replacement (the same draw for every
    system); a system's 95% interval is the mean of its resampled scores ± half the width of
    their central 95%; its p-value against the first system (the baseline) is the share of
    resamples whose centred absolute score difference exceeds the observed one.

The draws are seeded (sacrebleu's SACREBLEU_SEED, 12345 unless set), so the figures repeat; the
seed and the resample count are part of each signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from sacrebleu.significance import PairedTest

from nmt.evaluation.metrics import metric

DEFAULT_RESAMPLES = 1000
SIGNIFICANT = 0.05  # p-values below it are marked


@dataclass
class Interval:
    """One metric's score for one system, with its bootstrap interval."""

    name: str  # bleu, chrf or ter
    score: float  # on the whole test set
    mean: float  # of the resampled scores
    ci: float  # half-width of the 95% interval around `mean`
    p_value: float | None  # against the first system; None for the first itself

    @property
    def low(self) -> float:
        return self.mean - self.ci

    @property
    def high(self) -> float:
        return self.mean + self.ci

    def text(self, label: str) -> str:
        """As sacrebleu prints it: `BLEU 25.10 (μ 25.08 ± 0.95) (p = 0.0210)*`."""
        line = f"{label} {self.score:.2f} (μ {self.mean:.2f} ± {self.ci:.2f})"
        if self.p_value is not None:
            line += f" (p = {self.p_value:.4f})" + ("*" if self.p_value < SIGNIFICANT else "")
        return line


@dataclass
class Comparison:
    """The paired bootstrap of several systems on one test set."""

    resamples: int
    labels: dict[str, str]  # metric -> sacrebleu's name for it (BLEU, chrF2, TER)
    signatures: dict[str, str]  # metric -> sacrebleu's signature, with bs and seed
    systems: list[list[Interval]]  # per system, per metric; the first is the baseline


def paired_bootstrap(systems: list[list[str]], references: list[str],
                     metrics: tuple[str, ...] = ("bleu",),
                     resamples: int = DEFAULT_RESAMPLES, target_lang: str = "") -> Comparison:
    """Compares every system's hypotheses (one list per system, aligned with `references`)
    with the first system's, for each metric (BLEU tokenised for `target_lang`)."""
    named = [(str(i), hyps) for i, hyps in enumerate(systems)]
    scorers = {name: metric(name, target_lang, references=[references]) for name in metrics}
    signatures, results = PairedTest(named, scorers, None, test_type="bs",
                                     n_samples=resamples)()
    labels = [key for key in results if key != "System"]  # sacrebleu's names, in our order
    out: list[list[Interval]] = []
    for i, hyps in enumerate(systems):
        row = []
        for name, label in zip(metrics, labels):
            r = results[label][i]
            # sacrebleu's p is (resampled differences above the observed one + 1) / (n + 1);
            # for a system identical to the baseline every difference is 0, which would read
            # as p = 1 / (n + 1), a difference where there is none
            p = 1.0 if i and hyps == systems[0] else r.p_value
            row.append(Interval(name, float(r.score), float(r.mean), float(r.ci),
                                None if p is None else float(p)))
        out.append(row)
    return Comparison(resamples, dict(zip(metrics, labels)),
                      {name: signatures[label].format() for name, label in zip(metrics, labels)},
                      out)

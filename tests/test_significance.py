"""Paired bootstrap resampling between systems on one test set (sacrebleu's `paired_bs`), and
how `nmt eval` reports it for several checkpoints."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest
from typer.testing import CliRunner

from nmt.cli import app
from nmt.evaluation.metrics import corpus_scores
from nmt.evaluation.significance import paired_bootstrap

runner = CliRunner()

WORDS = ("o a gato cão vê tem livro bola casa vermelha grande pequeno corre sobre sob e não "
         "muito hoje amanhã").split()


def synthetic(n: int = 150, seed: int = 0) -> tuple[list[str], list[str]]:
    """References made of random words, and hypotheses that lose one word in three."""
    gen = random.Random(seed)
    refs = [" ".join(gen.choice(WORDS) for _ in range(gen.randint(4, 14))) for _ in range(n)]
    hyps = [" ".join(w for j, w in enumerate(r.split()) if j % 3 != 1) for r in refs]
    return hyps, refs


def drop(reference: str, k: int) -> str:
    """The reference without its second word of every k."""
    return " ".join(w for j, w in enumerate(reference.split()) if j % k != 1)


def systems_of_varied_quality(n: int = 300) -> tuple[list[list[str]], list[str]]:
    """A baseline (one word in three lost) and four systems against it: much better (the
    reference, a word replaced in every other sentence), better on every sentence (one word in
    four lost in 6 of 7 sentences), as long but scrambled (the reference's words sorted), and
    slightly different (one word in four lost in 3 sentences of 300)."""
    gen = random.Random(0)
    refs = [" ".join(gen.choice(WORDS) for _ in range(gen.randint(4, 14))) for _ in range(n)]

    def replace_one(reference: str) -> str:
        words = reference.split()
        words[gen.randrange(len(words))] = gen.choice(WORDS)
        return " ".join(words)

    base = [drop(r, 3) for r in refs]
    return [base,
            [replace_one(r) if i % 2 else r for i, r in enumerate(refs)],
            [drop(r, 3) if i % 7 else drop(r, 4) for i, r in enumerate(refs)],
            [" ".join(sorted(r.split())) for r in refs],
            [drop(r, 4) if i % 100 == 0 else b for i, (r, b) in enumerate(zip(refs, base))]], refs


def sentence_stats(hyps: list[str], refs: list[str]) -> np.ndarray:
    """(sentences, 10) BLEU's sufficient statistics of each sentence: matches and totals of 1-
    to 4-grams, hypothesis and reference length."""
    bleu = BLEU(effective_order=True)  # the statistics do not depend on it; it quiets a warning
    rows = []
    for hyp, ref in zip(hyps, refs):
        s = bleu.sentence_score(hyp, [ref])
        rows.append([*s.counts, *s.totals, s.sys_len, s.ref_len])
    return np.array(rows, dtype=np.int64)


def bleu_of(stats: np.ndarray) -> float:
    """Corpus BLEU (smoothing 'exp', sacrebleu's default) of summed sentence statistics."""
    return BLEU.compute_bleu(stats[:4].tolist(), stats[4:8].tolist(), int(stats[8]),
                             int(stats[9]), smooth_method="exp").score


@pytest.fixture(autouse=True)
def _default_seed(monkeypatch):
    """sacrebleu's own seed (12345) for every bootstrap, whatever the environment says."""
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)


def test_scores_intervals_and_p_values_are_sacrebleus_paired_bootstrap():
    """Every figure, for each of several systems and metrics, is what sacrebleu's paired
    bootstrap (`PairedTest`, test type `bs`, as `sacrebleu --paired-bs`) gives for that system
    against the first, called here one metric at a time."""
    systems, refs = systems_of_varied_quality()
    ours = paired_bootstrap(systems, refs, ("bleu", "chrf", "ter"), resamples=1000)
    p_values = set()
    for j, (name, metric) in enumerate((("bleu", BLEU), ("chrf", CHRF), ("ter", TER))):
        _, theirs = PairedTest([(str(i), s) for i, s in enumerate(systems)],
                               {name: metric(references=[refs])}, None, test_type="bs",
                               n_samples=1000)()
        (label, results), = ((k, v) for k, v in theirs.items() if k != "System")
        assert ours.labels[name] == label
        for i, result in enumerate(results):
            mine = ours.systems[i][j]
            assert mine.name == name
            assert mine.score == pytest.approx(result.score, abs=1e-9)
            assert mine.mean == pytest.approx(result.mean, abs=1e-4)
            assert mine.ci == pytest.approx(result.ci, abs=1e-4) and mine.ci > 0
            if i == 0:
                assert mine.p_value is None
            else:
                assert mine.p_value == pytest.approx(result.p_value, abs=1e-12)
                p_values.add(round(mine.p_value, 3))
    assert min(p_values) < 0.01 and max(p_values) > 0.1  # clear and unclear differences alike


def test_p_values_and_intervals_match_a_bootstrap_written_out_here():
    """Koehn's paired bootstrap for BLEU, written out from sentence statistics with draws of
    its own: each resample draws the sentences with replacement, the same for both systems;
    p is the share of resamples whose centred |difference| exceeds the observed one, plus one,
    over resamples plus one; the interval is the mean ± half the central 95%. Only the draws
    differ from ours, so the figures agree to within the noise of 2,000 resamples."""
    systems, refs = systems_of_varied_quality()
    n = 2000
    ours = paired_bootstrap(systems, refs, ("bleu",), resamples=n)
    draws = np.random.default_rng(7).integers(0, len(refs), size=(n, len(refs)))
    resampled, observed = [], []
    for hyps in systems:
        stats = sentence_stats(hyps, refs)
        observed.append(bleu_of(stats.sum(0)))
        resampled.append(np.array([bleu_of(s) for s in stats[draws].sum(1)]))
    for i, (mine,) in enumerate(ours.systems):
        assert mine.score == pytest.approx(observed[i], abs=1e-9)
        scores = np.sort(resampled[i])
        ci = (scores[n - n // 40 - 1] - scores[n // 40]) / 2
        assert mine.ci == pytest.approx(ci, rel=0.15)
        assert mine.mean == pytest.approx(scores.mean(), abs=0.15 * ci)
        if i:
            differences = np.abs(resampled[i] - resampled[0])
            centred = differences - differences.mean()
            p = (np.sum(centred > abs(observed[i] - observed[0])) + 1) / (n + 1)
            assert mine.p_value == pytest.approx(p, abs=0.05), (i, mine.p_value, p)


def test_a_system_against_itself_is_no_different_and_inside_its_interval():
    """Every resampled difference of a system and its copy is 0, which sacrebleu's count
    (differences *above* the observed 0, plus one) turns into p = 1 / (resamples + 1), a
    significant difference; a copy of the baseline has p = 1 instead. Its score and
    interval are the baseline's."""
    hyps, refs = synthetic()
    c = paired_bootstrap([hyps, list(hyps)], refs, ("bleu", "chrf"))
    _, theirs = PairedTest([("0", hyps), ("1", list(hyps))], {"bleu": BLEU(references=[refs])},
                           None, test_type="bs", n_samples=1000)()
    assert theirs["BLEU"][1].p_value == pytest.approx(1 / 1001)
    for first, again in zip(*c.systems):
        assert first.p_value is None and again.p_value == 1.0
        assert first.low < first.score < first.high  # a real interval around the score
        assert (again.score, again.low, again.high) == (first.score, first.low, first.high)


@pytest.mark.parametrize("better_first", [False, True])
def test_a_clearly_better_system_is_significant(better_first):
    _, refs = synthetic()
    shuffled = refs[1:] + refs[:1]  # each hypothesis is the next sentence's reference
    systems = [refs, shuffled] if better_first else [shuffled, refs]
    c = paired_bootstrap(systems, refs, ("bleu", "chrf"))
    for s in c.systems[1]:
        assert s.p_value < 0.05, s
    best = 0 if better_first else 1
    assert all(s.score == pytest.approx(100.0) for s in c.systems[best])
    assert all(s.high < 50 for s in c.systems[1 - best])


def test_the_resampling_is_seeded_and_signed():
    hyps, refs = synthetic()
    other, _ = synthetic(seed=1)
    a = paired_bootstrap([hyps, other[:len(refs)]], refs, ("bleu",), resamples=200)
    b = paired_bootstrap([hyps, other[:len(refs)]], refs, ("bleu",), resamples=200)
    assert a == b
    assert "bs:200" in a.signatures["bleu"] and "seed:" in a.signatures["bleu"]
    assert a.labels == {"bleu": "BLEU"}


def test_eval_of_two_checkpoints_reports_intervals_and_p_values(trained_run):
    args = ["eval", "--checkpoint", str(trained_run / "best.pt"), "--checkpoint",
            str(trained_run / "last.pt"), "--chrf", "--bootstrap", "300"]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    table = text.stdout.split("paired bootstrap, 300 resamples, against")[1].splitlines()
    assert "BLEU" in table[1] and "chrF2" in table[1] and "(p = " not in table[1]
    assert table[2].count("(p = ") == 2 and "±" in table[2]
    assert "bs:300" in text.stdout
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    first, second = json.loads(as_json.stdout)
    assert [s["name"] for s in second["bootstrap"]["scores"]] == ["bleu", "chrf"]
    assert all(s["p_value"] is None for s in first["bootstrap"]["scores"])
    for s in second["bootstrap"]["scores"]:
        assert 0 < s["p_value"] <= 1 and s["low"] <= s["mean"] <= s["high"]
    assert "outputs" not in first
    off = runner.invoke(app, [*args[:-2], "--bootstrap", "0"])
    assert off.exit_code == 0 and "paired bootstrap" not in off.stdout


def test_eval_on_different_test_sets_skips_the_bootstrap(trained_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("last.pt", "test.pt"):
        (other / name).write_bytes((trained_run / name).read_bytes())
    lines = (trained_run / "test.en").read_text().splitlines()
    (other / "test.en").write_text("\n".join(lines[:-1] + ["The dog sees the book."]) + "\n")
    result = runner.invoke(app, ["eval", "--checkpoint", str(trained_run / "last.pt"),
                                 "--checkpoint", str(other / "last.pt")])
    assert result.exit_code == 0, result.output
    assert "paired bootstrap" not in result.stdout
    assert "no paired bootstrap: the checkpoints were scored on different test sets" in \
        result.stderr


def test_bleu_tokenises_for_the_target_language():
    """Chinese is scored with sacrebleu's `zh` tokeniser (by two- or three-letter code, and in
    the bootstrap too), which splits characters: 13a sees one word and no match."""
    hyps, refs = ["我爱你们"], ["我爱你"]
    (plain,) = corpus_scores(hyps, refs, ("bleu",))
    for lang in ("zh", "zho", "zh-Hans"):
        (zh,) = corpus_scores(hyps, refs, ("bleu",), target_lang=lang)
        assert "tok:zh" in zh.signature and zh.value > plain.value == 0
    comparison = paired_bootstrap([hyps * 20, refs * 20], refs * 20, ("bleu",), 50, "zh")
    assert "tok:zh" in comparison.signatures["bleu"]
    (pt,) = corpus_scores(hyps, refs, ("bleu",), target_lang="pt")
    assert "tok:13a" in pt.signature

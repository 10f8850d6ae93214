"""Paired bootstrap resampling between systems on one test set (sacrebleu's `paired_bs`), and
how `nmt eval` reports it for several checkpoints."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from nmt.cli import app
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


def test_a_system_against_itself_is_no_different_and_inside_its_interval():
    hyps, refs = synthetic()
    c = paired_bootstrap([hyps, list(hyps)], refs, ("bleu", "chrf"))
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

"""scripts/domains.py: each corpus's share of a split scored per checkpoint, and compared with
the first checkpoint by paired bootstrap on that share alone."""

from __future__ import annotations

import sys

from nmt.evaluation.metrics import corpus_scores

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import domains  # noqa: E402


def test_each_corpus_is_scored_on_its_own_pairs():
    refs = [f"the cat number {i} sleeps on the red sofa" for i in range(40)]
    corpus = [i % 2 for i in range(40)]  # corpus 0: even lines, corpus 1: odd lines
    # the second system is right on corpus 1 and wrong on corpus 0; the first the other way
    first = [r if c == 0 else "a dog" for r, c in zip(refs, corpus)]
    second = [r if c == 1 else "a dog" for r, c in zip(refs, corpus)]
    rows, signature = domains.compare([first, second, list(first)], refs, corpus,
                                      ["chat", "subtitles"], "pt")
    assert [(r["corpus"], r["pairs"]) for r in rows] == [("all", 40), ("chat", 20),
                                                          ("subtitles", 20)]
    assert "nrefs:1" in signature and "bs:1000" in signature
    for row, idx in zip(rows, [range(40), range(0, 40, 2), range(1, 40, 2)]):
        for hyps, scored in zip([first, second], row["systems"]):
            bleu, chrf = corpus_scores([hyps[k] for k in idx], [refs[k] for k in idx],
                                       ("bleu", "chrf"), "pt")
            assert scored["bleu"]["score"] == bleu.value and scored["chrf"]["score"] == chrf.value
        assert row["systems"][2]["bleu"]["p"] == 1.0  # identical to the first
        assert row["systems"][0]["bleu"]["p"] is None  # the baseline
    assert rows[0]["systems"][0]["bleu"]["ci"] > 0  # half right, half wrong: an interval
    chat, subtitles = rows[1]["systems"], rows[2]["systems"]
    assert chat[0]["bleu"]["score"] > 99.9 and chat[1]["bleu"]["score"] < 1
    assert subtitles[1]["bleu"]["score"] > 99.9 and subtitles[0]["bleu"]["score"] < 1
    assert chat[1]["bleu"]["p"] < 0.05 and subtitles[1]["bleu"]["p"] < 0.05


def test_the_table_has_a_row_per_corpus_and_the_signature():
    rows = [{"corpus": "all", "pairs": 1200, "systems": [
        {"bleu": {"score": 20.0, "ci": 1.0, "p": None}, "chrf": {"score": 40.0}},
        {"bleu": {"score": 22.5, "ci": 1.1, "p": 0.001}, "chrf": {"score": 42.0}}]}]
    text = domains.table(rows, ["parent", "tuned"], "nrefs:1|bs:1000", "test")
    assert "| all | 1,200 | 20.00 ± 1.00 | 40.00 | 22.50 ± 1.10 | 42.00 | 0.001 |" in text
    assert "`nrefs:1|bs:1000`" in text

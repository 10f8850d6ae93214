"""Corpus weights: an epoch holds weight x size pairs of each corpus (whole repeats plus a
seeded random part drawn anew each epoch); weight 1 everywhere is exactly the unweighted epoch;
the prepared data records each pair's corpus; bad weights are one-line config errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nmt import checkpoint
from nmt.cli import app
from nmt.config import from_dict
from nmt.data.batching import Dataset, epoch_batches, epoch_pairs, token_batches
from nmt.data.prepare import prepare
from nmt.errors import ConfigError
from nmt.train import resume_config, train

from conftest import ROOT, TINY_CORPUS, drop_prepared_field, tiny_config

SIZES = (100, 30, 7)
CORPUS = np.repeat(np.arange(3), SIZES)  # pairs 0-99 from corpus 0, 100-129 from 1, ...


def counts(pairs: np.ndarray) -> list[int]:
    return np.bincount(CORPUS[pairs], minlength=3).tolist()


def test_an_epoch_holds_weight_times_size_of_each_corpus():
    pairs = epoch_pairs(CORPUS, (1.0, 2.5, 0.3), seed=1, epoch=0)
    assert counts(pairs) == [100, 75, 2]  # 0.3 x 7 = 2.1 -> 2
    repeats = np.bincount(pairs, minlength=len(CORPUS))
    assert (repeats[:100] == 1).all()
    assert sorted(np.bincount(repeats[100:130]).tolist()) == [0, 0, 15, 15]  # 15 x 2, 15 x 3
    assert set(np.flatnonzero(repeats[130:])) <= set(range(7))


def test_batches_keep_the_composition():
    widths = np.random.default_rng(0).integers(3, 20, len(CORPUS))
    batches = epoch_batches(widths, CORPUS, (0.5, 3.0, 1.0), 60, seed=2, epoch=4)
    assert all(widths[b].max() * len(b) <= 60 for b in batches)
    assert counts(np.concatenate(batches)) == [50, 90, 7]


def test_epochs_draw_other_fractional_parts_and_repeat_themselves():
    weights = (0.5, 1.5, 1.0)
    first = epoch_pairs(CORPUS, weights, seed=1, epoch=0)
    assert not np.array_equal(first, epoch_pairs(CORPUS, weights, seed=1, epoch=1))
    assert not np.array_equal(first, epoch_pairs(CORPUS, weights, seed=2, epoch=0))
    assert np.array_equal(first, epoch_pairs(CORPUS, weights, seed=1, epoch=0))


def test_weight_one_everywhere_is_the_unweighted_epoch():
    widths = np.random.default_rng(0).integers(3, 20, len(CORPUS))
    assert np.array_equal(epoch_pairs(CORPUS, (1.0, 1.0, 1.0), 5, 3), np.arange(len(CORPUS)))
    for epoch in range(3):
        plain = token_batches(widths, 60, 5, epoch)
        for weights in [(), (1.0, 1.0, 1.0)]:
            same = epoch_batches(widths, CORPUS, weights, 60, 5, epoch)
            assert [b.tolist() for b in same] == [b.tolist() for b in plain]


@pytest.mark.parametrize("weight, expected", [
    (0, "data.corpora[0].weight: expected a number > 0 (its share of an epoch), got 0.0"),
    (-2.5, "data.corpora[0].weight: expected a number > 0 (its share of an epoch), got -2.5"),
    ("lots", "data.corpora[0].weight: expected float, got 'lots'"),
    (True, "data.corpora[0].weight: expected float, got True"),
])
def test_bad_weights_are_config_errors(weight, expected):
    with pytest.raises(ConfigError) as err:
        from_dict({"data": {"corpora": [{"path": "a.tsv", "weight": weight}]}})
    assert err.value.problems == [expected]


def test_cli_bad_weight_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  corpora:\n    - path: a.tsv\n    - path: b.tsv\n      weight: -1\n")
    result = CliRunner().invoke(app, ["data", "prepare", "-c", str(cfg)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {cfg}: data.corpora[1].weight: expected a number > 0 (its share of an epoch), "
        f"got -1.0"]


# -- two corpora, prepared and trained --------------------------------------------------------

def two_corpora(tmp: Path, weights: tuple[float, float], **train):
    """configs/tiny.yaml over its corpus cut in two files: 400 pairs and 200 pairs."""
    lines = TINY_CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp / "big.tsv").write_text("".join(lines[:400]), encoding="utf-8")
    (tmp / "small.tsv").write_text("".join(lines[400:]), encoding="utf-8")
    cfg = tiny_config(tmp, **train)
    first = cfg.data.corpora[0]
    corpora = (replace(first, path="big.tsv", weight=weights[0]),
               replace(first, path="small.tsv", weight=weights[1]))
    return replace(cfg, data=replace(cfg.data, corpora=corpora))


def test_prepared_data_remembers_each_pairs_corpus(tmp_path):
    cfg = two_corpora(tmp_path, (1.0, 3.0))
    prepared = prepare(cfg.data, progress=False)
    small = {line.split("\t")[0] for line in (tmp_path / "small.tsv").read_text().splitlines()}
    for split in ("train", "valid", "test"):
        data = Dataset.load(prepared.ids(split))
        english = prepared.text(split, "en").read_text().splitlines()
        assert data.corpus.tolist() == [int(s in small) for s in english]
    assert prepare(two_corpora(tmp_path, (0.5, 1.0)).data, progress=False).path == prepared.path


def test_data_prepared_before_weights_is_prepared_again_when_weights_need_it(tmp_path):
    cfg = two_corpora(tmp_path, (1.0, 1.0))
    prepared = prepare(cfg.data, progress=False)
    drop_prepared_field(prepared, "corpus")  # as nmt wrote it before corpus weights
    assert prepare(cfg.data, progress=False).summary.cached  # unweighted: still good
    weighted = two_corpora(tmp_path, (1.0, 2.0))
    again = prepare(weighted.data, progress=False)
    assert not again.summary.cached and Dataset.load(again.ids("train")).corpus is not None


def test_weighted_training_resumes_exactly(tmp_path):
    settings = {"valid_every": 20, "valid_max_sentences": 4}
    full = train(two_corpora(tmp_path, (0.5, 2.5), max_steps=60, **settings),
                 runs_dir=tmp_path / "a")
    log = (full / "train.log").read_text()
    assert "corpus weights: big.tsv: " in log and " x 2.5 = " in log
    half = train(two_corpora(tmp_path, (0.5, 2.5), max_steps=40, **settings),
                 runs_dir=tmp_path / "b")
    resumed = train(resume_config(half, ["train.max_steps=60"]), resume=half)
    a, b = (checkpoint.load(run / "last.pt") for run in (full, resumed))
    assert a["resume"]["progress"]["epoch"] >= 1  # the resumed run crossed an epoch
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_prepare_summary_shows_the_composition(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text((ROOT / "configs" / "tiny.yaml").read_text().replace(
        "    - path: tests/data/tiny.en-pt.tsv", "    - path: tests/data/tiny.en-pt.tsv\n"
        "      weight: 1.5"))
    result = CliRunner().invoke(app, ["data", "prepare", "-c", str(cfg), "--set",
                                      f"data.prepared_dir={tmp_path / 'prepared'}"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("corpus weights"))
    assert "tests/data/tiny.en-pt.tsv: 520 x 1.5 = 780 (780 pairs per epoch)" in row

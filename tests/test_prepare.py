"""The prepared-data cache: content, reuse, invalidation, corruption; and token batching."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nmt.data.batching import Dataset, collate, padding_fraction, token_batches
from nmt.data.prepare import prepare
from nmt.data.tokenizer import BOS, EOS, PAD
from nmt.errors import DataError

from conftest import tiny_config


@pytest.fixture
def cfg(tmp_path):
    return tiny_config(tmp_path).data


def test_prepare_splits_and_encodes(cfg):
    p = prepare(cfg, progress=False)
    s = p.summary
    assert s.splits == {"train": s.kept - 80, "valid": 40, "test": 40}
    assert not s.cached and s.vocab["en"] > 50
    tok = p.tokenizer()
    test = Dataset.load(p.ids("test"))
    refs = p.text("test", "pt").read_text().splitlines()
    assert len(test) == len(refs) == 40
    assert tok.decode_tgt([test.target(i).tolist() for i in range(3)]) == refs[:3]
    train_en = set(p.text("train", "en").read_text().splitlines())
    assert not train_en & set(p.text("test", "en").read_text().splitlines())


def test_cache_is_reused_and_invalidated(cfg, tmp_path):
    first = prepare(cfg, progress=False)
    again = prepare(cfg, progress=False)
    assert again.summary.cached and again.path == first.path
    changed = prepare(replace(cfg, vocab_size=100), progress=False)
    assert changed.path != first.path
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text(corpus.read_text() + "A brand new line.\tUma linha nova.\n")
    edited = prepare(cfg, progress=False)
    assert edited.path not in (first.path, changed.path) and not edited.summary.cached


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest"])
def test_damaged_cache_is_rebuilt(cfg, damage):
    first = prepare(cfg, progress=False)
    target = first.path / ("manifest.json" if damage == "manifest" else "train.npz")
    if damage == "delete":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:50])
    again = prepare(cfg, progress=False)
    assert not again.summary.cached
    assert Dataset.load(again.ids("train")).src_len.sum() > 0


def test_no_usable_pair_is_an_error(cfg, tmp_path):
    (tmp_path / "corpus.tsv").write_text("empty side\t \n\nBell\x07\tSino\n")
    with pytest.raises(DataError, match=r"corpus.tsv: no usable pair .*control characters"):
        prepare(cfg, progress=False)


def test_missing_required_corpus_names_the_fix(cfg, tmp_path):
    (tmp_path / "corpus.tsv").unlink()
    with pytest.raises(DataError, match="nmt data download"):
        prepare(cfg, progress=False)


def test_optional_missing_corpus_is_skipped(cfg):
    extra = replace(cfg.corpora[0], path="absent.tsv", required=False)
    p = prepare(replace(cfg, corpora=cfg.corpora + (extra,)), progress=False)
    assert p.summary.kept > 500


def random_lengths(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 40, n), rng.integers(1, 40, n)


@pytest.mark.parametrize("budget", [45, 200, 1000])
def test_batches_respect_budget_and_cover_every_pair_once(budget):
    src, tgt = random_lengths()
    widths = np.maximum(src, tgt + 1)
    batches = token_batches(widths, budget, seed=3, epoch=0)
    for b in batches:
        assert len(b) * widths[b].max() <= budget
    everything = np.sort(np.concatenate(batches))
    assert np.array_equal(everything, np.arange(len(src)))


def test_batch_order_is_a_function_of_seed_and_epoch():
    src, tgt = random_lengths()
    widths = np.maximum(src, tgt + 1)

    def order(seed, epoch):
        return [b.tolist() for b in token_batches(widths, 500, seed, epoch)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_bucketing_reduces_padding():
    rng = np.random.default_rng(1)
    src = rng.integers(1, 40, 1000)
    tgt = np.maximum(1, src + rng.integers(-3, 4, 1000))  # translations have similar lengths
    widths = np.maximum(src, tgt + 1)
    bucketed = token_batches(widths, 1000, 0, 0)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(src))
    sizes = np.cumsum([len(b) for b in bucketed])[:-1]
    unsorted = np.split(perm, sizes)
    assert padding_fraction(bucketed, src, tgt) < 0.5 * padding_fraction(unsorted, src, tgt)


def test_collate_pads_and_shifts_targets():
    ds = Dataset(src=np.array([5, 6, 7, 8, 9], np.int32), src_len=np.array([2, 3], np.int32),
                 tgt=np.array([10, 11, 12], np.int32), tgt_len=np.array([1, 2], np.int32))
    b = collate(ds, np.array([0, 1]))
    assert b.index.tolist() == [1, 0]  # longest source first
    assert b.src.tolist() == [[7, 8, 9], [5, 6, PAD]]
    assert b.src_len.tolist() == [3, 2]
    assert b.tgt_in.tolist() == [[BOS, 11, 12], [BOS, 10, PAD]]
    assert b.tgt_out.tolist() == [[11, 12, EOS], [10, EOS, PAD]]
    assert b.n_tokens == 5

"""Subword regularisation (data.sampling_alpha, data.sampling_nbest): training batches are the
same text in other SentencePiece pieces, drawn anew for each (seed, epoch, batch position);
validation, translation, evaluation and serving keep the one segmentation; a resumed run and a
2-process run draw what an uninterrupted single process draws; bad values are one-line errors."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from typer.testing import CliRunner

from nmt import checkpoint
from nmt.cli import app
from nmt.config import TrainConfig, from_dict
from nmt.data.batching import Batch, Dataset, Resegmented, collate, epoch_batches
from nmt.data.prepare import prepare
from nmt.data.sampling import BpeDropout, UnigramSampling
from nmt.data.tokenizer import BOS, EOS, PAD, Tokenizer, train_model
from nmt.errors import ConfigError
from nmt.evaluation.validation import make_validator
from nmt.inference.translator import load_translator
from nmt.model.seq2seq import build_model
from nmt.train import resume_config, train
from nmt.training.schedule import Schedule
from nmt.training.trainer import Trainer

from conftest import ROOT, TINY_CORPUS, drop_prepared_field, tiny_config, tiny_train_command

runner = CliRunner()
ALPHA = {"unigram": 0.3, "bpe": 0.1}


def sampled_config(tmp: Path, spm_type: str = "unigram", **train):
    """configs/tiny.yaml with subword sampling on."""
    cfg = tiny_config(tmp, **train)
    return replace(cfg, data=replace(cfg.data, spm_type=spm_type,
                                     sampling_alpha=ALPHA[spm_type]))


def sampler_of(cfg, seed: int = 1) -> tuple[Resegmented, Dataset, Tokenizer]:
    """The training batches' `Collate` of a config with sampling on, its data and tokenizer."""
    prepared = prepare(cfg.data, progress=False)
    data = Dataset.load(prepared.ids("train"))
    tok = prepared.tokenizer()
    d = cfg.data
    sampler = Resegmented(data, prepared.lines("train", "en"), prepared.lines("train", "pt"),
                          *tok.samplers(d.spm_type, d.sampling_alpha, d.sampling_nbest), seed,
                          cfg.train.batch_tokens)
    return sampler, data, tok


def pairs(parts: list[Batch]) -> dict[int, tuple[list[int], list[int]]]:
    """Pair index -> (source ids, target ids) of a batch's parts, padding, BOS and EOS removed."""
    out = {}
    for batch in parts:
        assert batch.src_len.tolist() == sorted(batch.src_len.tolist(), reverse=True)
        for row, i in enumerate(batch.index.tolist()):
            n = int(batch.src_len[row])
            assert (batch.src[row, n:] == PAD).all()
            y = batch.tgt_out[row].tolist()
            end = y.index(EOS)
            assert batch.tgt_in[row, :end + 1].tolist() == [BOS] + y[:end]
            out[i] = (batch.src[row, :n].tolist(), y[:end])
    return out


def padded(batch: Batch) -> int:
    """Padded tokens: sentences x the widest pair, as train.batch_tokens counts them."""
    return len(batch.index) * max(int(batch.src.shape[1]), int(batch.tgt_in.shape[1]))


@pytest.mark.parametrize("spm_type", ["unigram", "bpe"])
def test_training_batches_are_other_segmentations_of_the_same_text(tmp_path, spm_type):
    cfg = sampled_config(tmp_path, spm_type)
    sampler, data, tok = sampler_of(cfg)
    changed = same = 0
    for position, index in enumerate(epoch_batches(data.widths, data.corpus, (), 400, 1, 0)[:6]):
        parts = sampler(index, 0, position)
        assert sorted(i for b in parts for i in b.index.tolist()) == sorted(index.tolist())
        for i, (src, tgt) in pairs(parts).items():
            fixed_src, fixed_tgt = data.source(i).tolist(), data.target(i).tolist()
            assert tok.src.decode(src) == tok.src.decode(fixed_src)
            assert tok.decode_tgt([tgt]) == tok.decode_tgt([fixed_tgt])
            if (src, tgt) == (fixed_src, fixed_tgt):
                same += 1
            else:
                changed += 1
    assert changed > 0, "sampling never changed a segmentation"
    assert same + changed == sum(len(b) for b in
                                 epoch_batches(data.widths, data.corpus, (), 400, 1, 0)[:6])


DRAW = """
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {tests!r})
from test_subword_sampling import sampled_config, sampler_of
cfg = sampled_config(Path({tmp!r}))
parts = sampler_of(cfg)[0](np.array({index}), {epoch}, {position})
print(json.dumps([[b.index.tolist(), b.src.tolist(), b.tgt_in.tolist()] for b in parts]))
"""


def another_process_draws(cfg, index: np.ndarray, epoch: int, position: int) -> list:
    """What a fresh Python process draws for this batch (prepared data already cached)."""
    code = DRAW.format(tests=str(ROOT / "tests"), tmp=cfg.data.dir, index=index.tolist(),
                       epoch=epoch, position=position)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_seed_epoch_and_position_fix_the_draw(tmp_path):
    cfg = sampled_config(tmp_path)
    sampler, data, tok = sampler_of(cfg)
    index = epoch_batches(data.widths, data.corpus, (), 400, 1, 0)[0]

    def ids(parts: list[Batch]) -> list:
        return [[b.index.tolist(), b.src.tolist(), b.tgt_in.tolist()] for b in parts]

    first = ids(sampler(index, 2, 5))
    sampler(index[:3], 0, 0)  # other draws, and the deterministic encoder, in between
    tok.encode_src(["The cat sees the ball."])
    assert ids(sampler(index, 2, 5)) == first
    assert ids(sampler_of(cfg, seed=1)[0](index, 2, 5)) == first
    assert another_process_draws(cfg, index, 2, 5) == first  # a resumed run, another rank
    assert ids(sampler(index, 3, 5)) != first  # another epoch
    assert ids(sampler(index, 2, 6)) != first  # another batch position
    assert ids(sampler_of(cfg, seed=2)[0](index, 2, 5)) != first  # another train.seed


# -- the samplers against sentencepiece ---------------------------------------------------------

ODD = ["The cat ☃☃ sees 北京 the ball.", "☃", "  a  b ", "x☃y", "Ünïcödé ﬁ café", ""]


@pytest.fixture(scope="module")
def models() -> dict[str, spm.SentencePieceProcessor]:
    """Unigram and BPE models of the tiny corpus."""
    sentences = [s for line in TINY_CORPUS.read_text(encoding="utf-8").splitlines()
                 for s in line.split("\t")]
    return {kind: spm.SentencePieceProcessor(model_proto=train_model(sentences, 120, kind, 1.0))
            for kind in ("unigram", "bpe")}


def test_unsampled_paths_are_sentencepieces_own_segmentations(models):
    """The best unigram path and BPE with no dropout are `encode`'s: the samplers segment over
    the model's own pieces, scores, merges, normalisation and unknown characters."""
    sentences = [s for line in TINY_CORPUS.read_text(encoding="utf-8").splitlines()[:100]
                 for s in line.split("\t")] + ODD
    unigram, bpe = models["unigram"], models["bpe"]
    assert UnigramSampling(unigram, 0.3, -1).best(sentences) == unigram.encode(sentences)
    assert BpeDropout(bpe, 0.0).sample(sentences, random.Random(0)) == bpe.encode(sentences)


def segmentations(sampler: UnigramSampling, word: str, end: int | None = None) -> list:
    """Every (ids, score) path through a word's lattice."""
    end = len(word) if end is None else end
    if end == 0:
        return [((), 0.0)]
    return [(ids + (i,), score + s) for b, i, s in sampler._nodes(word)[end]
            for ids, score in segmentations(sampler, word, b)]


def test_unigram_draws_follow_p_to_the_alpha(models):
    """Kudo 2018: a segmentation x is drawn with probability P(x)^alpha / Z."""
    sampler = UnigramSampling(models["unigram"], 0.5, -1)
    word = sampler.vocab.words(["Their teacher"])[0][1]
    exact = {ids: math.exp(0.5 * score) for ids, score in segmentations(sampler, word)}
    z = sum(exact.values())
    assert len(exact) > 5
    draws, rng = 4000, random.Random(0)
    seen = Counter(tuple(sampler._backward(sampler._lattice(word), rng.random))
                   for _ in range(draws))
    assert set(seen) <= set(exact)
    assert max(abs(seen[ids] / draws - p / z) for ids, p in exact.items()) < 0.03


def test_nbest_draws_are_among_the_n_best(models):
    processor = models["unigram"]
    sentence = "Their teacher writes a letter."
    candidates = processor.nbest_encode(sentence, nbest_size=4)
    sampler = UnigramSampling(processor, 0.2, 4)
    rng = random.Random(0)
    drawn = [sampler.sample([sentence], rng)[0] for _ in range(200)]
    assert all(ids in candidates for ids in drawn)
    assert len({tuple(ids) for ids in drawn}) > 1


def test_prepared_pairs_know_their_line(tmp_path):
    """Pairs over data.max_pieces leave the ids but not the text: `line` maps ids to text."""
    cfg = tiny_config(tmp_path)
    cfg = replace(cfg, data=replace(cfg.data, max_pieces=14))
    prepared = prepare(cfg.data, progress=False)
    tok = prepared.tokenizer()
    for split in ("train", "valid"):
        data = Dataset.load(prepared.ids(split))
        english = prepared.text(split, "en").read_text(encoding="utf-8").splitlines()
        portuguese = prepared.text(split, "pt").read_text(encoding="utf-8").splitlines()
        if split == "train":
            assert len(data) < len(english)  # some pairs were dropped
        else:
            assert data.line.tolist() == list(range(len(english)))
        for i, line in enumerate(data.line.tolist()):
            assert tok.encode_src([english[line]])[0] == data.source(i).tolist()
            assert tok.encode_tgt([portuguese[line]])[0] == data.target(i).tolist()


def test_data_prepared_without_lines_is_prepared_again_when_sampling_needs_it(tmp_path):
    plain = tiny_config(tmp_path)
    prepared = prepare(plain.data, progress=False)
    drop_prepared_field(prepared, "line")  # as nmt wrote it before subword sampling
    assert prepare(plain.data, progress=False).summary.cached  # no sampling: still good
    again = prepare(sampled_config(tmp_path).data, progress=False)
    assert again.path == prepared.path  # sampling is not part of the cache key
    assert not again.summary.cached and Dataset.load(again.ids("train")).line is not None


def test_grown_batches_come_in_parts_that_fit_the_budget(tmp_path):
    """Sampled segmentations are longer than the prepared ones that cut the batches: a batch
    grown beyond train.batch_tokens is cut, by its sampled widths, into parts that fit."""
    cfg = sampled_config(tmp_path)
    sampler, data, _ = sampler_of(cfg)
    batches = epoch_batches(data.widths, data.corpus, (), 400, 1, 0)
    split = 0
    for position, index in enumerate(batches):
        parts = sampler(index, 0, position)
        assert sorted(i for b in parts for i in b.index.tolist()) == sorted(index.tolist())
        assert all(padded(b) <= 400 or len(b.index) == 1 for b in parts)
        whole = sum(len(b.index) for b in parts) * max(
            max(int(b.src.shape[1]), int(b.tgt_in.shape[1])) for b in parts)
        split += len(parts) > 1
        assert (len(parts) > 1) == (whole > 400)
    assert split > 0  # the tiny corpus's sampled batches do outgrow 400 tokens


def test_an_update_is_scaled_by_the_sampled_tokens(tmp_path):
    cfg = sampled_config(tmp_path)
    sampler, data, tok = sampler_of(cfg)
    index = epoch_batches(data.widths, data.corpus, (), 400, 1, 0)[0]
    sampled = sum(b.n_tokens for b in sampler(index, 0, 0))
    fixed = collate(data, index).n_tokens
    assert sampled != fixed
    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01),
                      Schedule("constant", 0.01, 0, 0.5, 0, 0.0), data, lambda: None,
                      TrainConfig(), tmp_path, {}, torch.device("cpu"), collate=sampler)
    loss, tokens = trainer.update([index], 0.01)
    assert tokens == sampled


# -- trained with sampling ---------------------------------------------------------------------

SETTINGS = {"valid_every": 20, "valid_max_sentences": 8}


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory) -> tuple[Path, int]:
    """A tiny run of 60 updates with sampling on, and how many draws its batches made."""
    tmp = tmp_path_factory.mktemp("sampled")
    draws = []
    real = UnigramSampling.sample

    def counted(self, sentences, rng):
        draws.append(len(sentences))
        return real(self, sentences, rng)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(UnigramSampling, "sample", counted)
        run = train(sampled_config(tmp, max_steps=60, **SETTINGS), runs_dir=tmp / "runs")
    return run, len(draws)


def test_sampled_training_resumes_exactly(sampled_run, tmp_path):
    full, draws = sampled_run
    assert draws == 2 * 60  # the sources and the targets of each update's one batch
    assert "subword sampling in training batches: unigram, alpha 0.3, among all " \
           "segmentations" in (full / "train.log").read_text()
    half = train(sampled_config(tmp_path, max_steps=40, **SETTINGS), runs_dir=tmp_path / "b")
    resumed = train(resume_config(half, ["train.max_steps=60"]), resume=half)
    a, b = (checkpoint.load(run / "last.pt") for run in (full, resumed))
    assert a["resume"]["progress"]["epoch"] >= 1  # the resumed run crossed an epoch
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.fixture
def no_sampling(monkeypatch):
    """Any subword sampling from here on fails the test."""

    def refuse(*args, **kw):
        raise AssertionError("sampled outside training batches")

    monkeypatch.setattr(UnigramSampling, "sample", refuse)
    monkeypatch.setattr(BpeDropout, "sample", refuse)


def test_validation_and_search_never_sample(sampled_run, tmp_path, no_sampling):
    run, _ = sampled_run
    cfg = resume_config(run, [])
    assert cfg.data.sampling_alpha == 0.3  # the checkpoint's config has sampling on
    sampler, _, _ = sampler_of(cfg)
    with pytest.raises(AssertionError, match="sampled outside"):  # the spy is live
        sampler(np.arange(4), 0, 0)
    translator = load_translator(run)
    v = make_validator(translator.model, prepare(cfg.data, progress=False), cfg,
                       torch.device("cpu"))()
    assert np.isfinite(v.loss)
    assert translator.translate(["The cat sees the ball."], beam=2)[0].text
    result = runner.invoke(app, ["translate", "--checkpoint", str(run), "The cat sees the ball."])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), "--bleu", "--beam", "1"])
    assert result.exit_code == 0, result.output


def test_serving_never_samples(sampled_run, no_sampling):
    pytest.importorskip("fastapi", reason="nmt serve needs fastapi")
    from fastapi.testclient import TestClient

    from nmt.serve.app import create_app
    from nmt.serve.options import ServeOptions

    with TestClient(create_app(load_translator(sampled_run[0]), ServeOptions())) as client:
        answer = client.post("/translate", json={"text": "The cat sees the ball.", "beam": 2})
    assert answer.status_code == 200, answer.text


def train_loss(run: Path) -> list[float]:
    rows = (run / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("train_loss")
    return [float(r.split(",")[column]) for r in rows[1:]]


def test_two_processes_draw_what_one_process_draws(tmp_path):
    """2 gloo processes of one batch each per update == 1 process accumulating 2 batches: each
    rank samples its own batch with the seed the single process gives it. In fp32, where the
    two agree to float32 rounding (bf16's rounding, amplified by Adam, is larger than 1e-4)."""
    on = ("--set", "data.sampling_alpha=0.3", "--set", "train.max_steps=10",
          "--set", "train.precision=fp32")
    one = subprocess.run(tiny_train_command(tmp_path, tmp_path / "one", *on,
                                            "--set", "train.accumulate=2"),
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(tiny_train_command(tmp_path, tmp_path / "two", *on, "--nproc", "2"),
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    a, b = (checkpoint.load(runs / "tiny" / "last.pt") for runs in (tmp_path / "one",
                                                                    tmp_path / "two"))
    assert train_loss(tmp_path / "two" / "tiny") == pytest.approx(
        train_loss(tmp_path / "one" / "tiny"), rel=1e-4)
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-4), k


# -- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    ({"sampling_alpha": -0.1}, "data.sampling_alpha: expected in [0, 1] (0: off), got -0.1"),
    ({"sampling_alpha": 1.5}, "data.sampling_alpha: expected in [0, 1] (0: off), got 1.5"),
    ({"sampling_alpha": "some"}, "data.sampling_alpha: expected float, got 'some'"),
    ({"sampling_alpha": 0.1, "sampling_nbest": 1},
     "data.sampling_nbest: expected -1 (every segmentation) or in [2, 512], got 1"),
    ({"sampling_alpha": 0.1, "sampling_nbest": 0},
     "data.sampling_nbest: expected -1 (every segmentation) or in [2, 512], got 0"),
    ({"sampling_alpha": 0.1, "sampling_nbest": 513},
     "data.sampling_nbest: expected -1 (every segmentation) or in [2, 512], got 513"),
    ({"spm_type": "bpe", "sampling_alpha": 0.1, "sampling_nbest": 8},
     "data.sampling_nbest: BPE-dropout (spm_type 'bpe') samples from no n-best list; leave it "
     "at -1, got 8"),
    ({"spm_type": "bpe", "sampling_alpha": 1.0},
     "data.sampling_alpha: a BPE-dropout of 1 drops every merge, leaving characters; expected "
     "a probability below 1 (e.g. 0.1)"),
])
def test_bad_sampling_settings_are_config_errors(data, expected):
    with pytest.raises(ConfigError) as err:
        from_dict({"data": data})
    assert err.value.problems == [expected]


def test_good_sampling_settings_load():
    assert from_dict({}).data.sampling_alpha == 0  # off by default
    cfg = from_dict({"data": {"sampling_alpha": 0.1, "sampling_nbest": 64}})
    assert (cfg.data.sampling_alpha, cfg.data.sampling_nbest) == (0.1, 64)
    assert from_dict({"data": {"spm_type": "bpe", "sampling_alpha": 0.1}}).data.sampling_nbest == -1


def test_cli_bad_sampling_value_is_one_line(tmp_path):
    config = ROOT / "configs" / "tiny.yaml"
    result = runner.invoke(app, ["train", "-c", str(config), "--runs-dir", str(tmp_path),
                                 "--set", "data.sampling_nbest=1"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: data.sampling_nbest: expected -1 (every segmentation) or in "
        f"[2, 512], got 1"]
    assert not any(tmp_path.iterdir())

"""Checkpoint averaging: the element-wise mean of one model's checkpoints, `nmt average` on a
run directory or on files, and `train.average_last` writing a validated averaged.pt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt import checkpoint
from nmt.cli import app
from nmt.config import Config, ModelConfig, TrainConfig, to_dict
from nmt.errors import UsageError
from nmt.train import train
from nmt.training.averaging import average, select

from conftest import small_model, tiny_config

runner = CliRunner()


def fake_checkpoint(path: Path, seed: int, step: int, decoder_size: int = 32,
                    tokenizer: bytes = b"spm", run_seed: int = 1) -> dict[str, torch.Tensor]:
    """A small model's random weights, saved as a checkpoint with an integer buffer too, of a
    run with `train.seed: run_seed` that validates every 500 updates."""
    torch.manual_seed(seed)
    weights = {k: torch.randn_like(v) for k, v in small_model().state_dict().items()}
    weights["counter"] = torch.tensor([step])
    cfg = Config(model=ModelConfig(emb_size=16, hidden_size=16, decoder_size=decoder_size),
                 train=TrainConfig(seed=run_seed, valid_every=500))
    checkpoint.save(path, {"config": to_dict(cfg), "tokenizer": {"src": tokenizer,
                                                                 "tgt": tokenizer},
                           "model": weights, "step": step, "score": float(seed)})
    return weights


def test_two_checkpoints_average_to_their_exact_mean(tmp_path):
    a = fake_checkpoint(tmp_path / "a.pt", seed=1, step=100)
    b = fake_checkpoint(tmp_path / "b.pt", seed=2, step=200)
    mean = average([tmp_path / "a.pt", tmp_path / "b.pt"])["model"]
    for k, v in a.items():
        if v.is_floating_point():
            assert torch.equal(mean[k], ((v.double() + b[k].double()) / 2).to(v.dtype)), k
            assert not torch.equal(mean[k], v)
    assert torch.equal(mean["counter"], b["counter"])  # not a float: the newest's


def test_one_checkpoint_averages_to_itself(tmp_path):
    a = fake_checkpoint(tmp_path / "a.pt", seed=1, step=100)
    alone = average([tmp_path / "a.pt"])
    assert all(torch.equal(alone["model"][k], v) for k, v in a.items())
    assert alone["step"] == 100 and alone["averaged"] == [{"file": str(tmp_path / "a.pt"),
                                                           "step": 100}]


def test_checkpoints_of_other_models_are_refused(tmp_path):
    fake_checkpoint(tmp_path / "a.pt", seed=1, step=100)
    fake_checkpoint(tmp_path / "wider.pt", seed=2, step=200, decoder_size=48)
    fake_checkpoint(tmp_path / "other-spm.pt", seed=3, step=300, tokenizer=b"other")
    with pytest.raises(UsageError, match=r"wider.pt does not match .*a.pt: another model "
                                         r"config \(model.decoder_size: 48 against 32\)"):
        average([tmp_path / "a.pt", tmp_path / "wider.pt"])
    with pytest.raises(UsageError, match="another tokenizer"):
        average([tmp_path / "a.pt", tmp_path / "other-spm.pt"])
    result = runner.invoke(app, ["average", str(tmp_path / "a.pt"), str(tmp_path / "wider.pt"),
                                 "-o", str(tmp_path / "out.pt")])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "another model config" in result.stderr
    assert not (tmp_path / "out.pt").exists()


def test_checkpoints_of_other_seeds_are_refused_unless_forced(tmp_path):
    fake_checkpoint(tmp_path / "a.pt", seed=1, step=100)
    fake_checkpoint(tmp_path / "b.pt", seed=2, step=200, run_seed=7)
    other = checkpoint.load(tmp_path / "b.pt")
    name = next(iter(other["model"]))
    other["model"][name] = torch.zeros(len(other["model"][name]) + 1)
    checkpoint.save(tmp_path / "wider.pt", other)
    with pytest.raises(UsageError, match=r"b.pt does not match .*a.pt: another seed "
                                         r"\(train.seed: 7 against 1\); --force"):
        average([tmp_path / "a.pt", tmp_path / "b.pt"])
    both = [str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "-o", str(tmp_path / "out.pt")]
    refused = runner.invoke(app, ["average", *both])
    assert refused.exit_code == 2, refused.output
    assert len(refused.stderr.strip().splitlines()) == 1 and "train.seed" in refused.stderr
    assert not (tmp_path / "out.pt").exists()
    forced = runner.invoke(app, ["average", *both, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "another seed" in forced.stderr and (tmp_path / "out.pt").exists()
    shapes = runner.invoke(app, ["average", str(tmp_path / "a.pt"), str(tmp_path / "wider.pt"),
                                 "-o", str(tmp_path / "no.pt"), "--force"])
    assert shapes.exit_code == 2 and "other parameter names or shapes" in shapes.stderr


@pytest.mark.parametrize("steps, apart", [((500, 1000, 1500), False), ((500, 1500, 4000), True)])
def test_the_steps_averaged_are_said_with_a_warning_when_far_apart(tmp_path, steps, apart):
    """A run without train.average_last keeps its best step-N.pt: --last K may then average
    checkpoints far apart in training, and says so."""
    run = tmp_path / "run"
    for step in (100, *steps):  # validations every 500 updates
        fake_checkpoint(run / f"step-{step}.pt", seed=step, step=step)
    result = runner.invoke(app, ["average", str(run), "--last", "3"])
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "averaged" in line]
    assert len(said) == 1 and f"steps {', '.join(map(str, steps))}" in said[0]
    assert ("WARNING" in said[0] and "not consecutive" in said[0]) == apart


def test_averaged_run_checkpoints_translate_and_evaluate(trained_run, tmp_path):
    out = tmp_path / "avg.pt"
    made = runner.invoke(app, ["average", str(trained_run), "--best", "2", "-o", str(out)])
    assert made.exit_code == 0, made.output
    assert made.stdout.strip() == str(out)
    steps = [checkpoint.load(p)["model"] for p in select(trained_run, best=2)]
    averaged = checkpoint.load(out)
    assert "resume" not in averaged
    for k, v in averaged["model"].items():
        assert torch.equal(v, ((steps[0][k].double() + steps[1][k].double()) / 2).float()), k
    said = runner.invoke(app, ["translate", "--checkpoint", str(out), "The cat sees the ball."])
    assert said.exit_code == 0, said.output
    assert said.stdout.strip()
    scored = runner.invoke(app, ["eval", "--checkpoint", str(out), "--src",
                                 str(trained_run / "test.en"), "--ref",
                                 str(trained_run / "test.pt"), "-o", str(tmp_path / "hyp.txt")])
    assert scored.exit_code == 0, scored.output
    assert "BLEU" in scored.stdout


@pytest.mark.parametrize("args, message", [
    ([], "Missing argument"),
    (["{run}"], "give --last K or --best K"),
    (["{run}", "--last", "1", "--best", "1"], "not both"),
    (["{run}", "--last", "9"], "fewer than --last 9"),
    (["{run}/last.pt", "--last", "1"], "choose from a run directory"),
    (["{run}", "{run}/last.pt"], "give one run directory"),
    (["{run}/last.pt", "-o", "{run}/last.pt"], "is one of the checkpoints"),
    (["{run}", "--last", "0"], "--last"),
])
def test_cli_usage_errors_are_one_line(trained_run, args, message):
    result = runner.invoke(app, ["average", *[a.format(run=trained_run) for a in args]])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_training_averages_its_last_checkpoints(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=40, valid_every=10, valid_max_sentences=4,
                      average_last=3, keep_best=1)
    run = train(cfg, runs_dir=tmp_path / "runs")
    kept = sorted(int(p.stem.split("-")[1]) for p in run.glob("step-*.pt"))
    best = int(os.readlink(run / "best.pt").split("-")[1].split(".")[0])
    assert set(kept) == {20, 30, 40} | {best}
    assert select(run, last=2) == [run / "step-30.pt", run / "step-40.pt"]
    assert select(run, best=1) == [run / f"step-{best}.pt"]
    averaged = checkpoint.load(run / "averaged.pt")
    last3 = [checkpoint.load(run / f"step-{s}.pt")["model"] for s in (20, 30, 40)]
    for k, v in averaged["model"].items():
        expected = ((last3[0][k].double() + last3[1][k].double() + last3[2][k].double()) / 3)
        assert torch.equal(v, expected.float()), k
    assert averaged["step"] == 40 and isinstance(averaged["score"], float)
    log = (run / "train.log").read_text()
    assert "averaged.pt, the mean of steps 20, 30, 40: loss" in log

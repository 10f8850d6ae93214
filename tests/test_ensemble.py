"""Ensemble decoding (`nmt.inference.ensemble`): the mean of the models' log-probabilities per
step, through the same batched searches; an ensemble of one is the model alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nmt import checkpoint
from nmt.data.tokenizer import BOS, train_model
from nmt.inference.ensemble import Ensemble
from nmt.inference.translator import Translator, load_translator

from conftest import padded_batch, small_model


@pytest.fixture(scope="module")
def sources(trained_run) -> list[str]:
    return (trained_run / "test.en").read_text(encoding="utf-8").splitlines()[:25]


@pytest.mark.parametrize("beam", [1, 4])
def test_an_ensemble_of_one_translates_as_the_model_alone(trained_run, sources, beam):
    alone = Translator.from_checkpoint(trained_run / "best.pt")
    one = Translator.from_checkpoint(trained_run / "best.pt")
    one.model = Ensemble([one.model])
    a, b = alone.translate(sources, beam=beam, n_best=2 if beam > 1 else 1, keep_attention=True), \
        one.translate(sources, beam=beam, n_best=2 if beam > 1 else 1, keep_attention=True)
    assert [t.text for t in a] == [t.text for t in b]
    for x, y in zip(a, b):
        assert [h.score for h in x.hypotheses] == [h.score for h in y.hypotheses]
        assert torch.equal(x.hypotheses[0].attention, y.hypotheses[0].attention)


def test_a_step_of_two_models_is_the_mean_of_their_log_probabilities():
    torch.manual_seed(1)
    first, second = small_model().eval(), small_model(kind="local-p").eval()
    src, lengths = padded_batch()
    prev = torch.full((3,), BOS)
    ensemble = Ensemble([first, second]).eval()
    with torch.no_grad():
        memories, states = ensemble.encode(src, lengths)
        _, weights, logp = ensemble.decode_step(prev, states, memories, 0)
        steps = []
        for model in (first, second):
            memory, state = model.encode(src, lengths)
            steps.append(model.decode_step(prev, state, memory, 0))
    assert torch.allclose(logp, (steps[0][2] + steps[1][2]) / 2)
    assert torch.allclose(weights, (steps[0][1] + steps[1][1]) / 2)
    assert torch.allclose(weights.sum(dim=1), torch.ones(3))
    assert not torch.allclose(logp, steps[0][2])  # the second model counts


def test_an_ensemble_from_the_command_line(trained_run, sources, tmp_path):
    """`nmt translate --ensemble A,B` searches with both models, as the translator of an
    in-process ensemble does, and `nmt eval --ensemble A,B` scores them as one more system. B is
    A with its output layer negated, so that B's log-probabilities differ from A's everywhere
    and a search that ignored B would give A's translations."""
    other = tmp_path / "other.pt"
    data = checkpoint.load(trained_run / "best.pt")
    data["model"]["generator.weight"] = -data["model"]["generator.weight"]
    checkpoint.save(other, data)
    nmt = [sys.executable, "-m", "nmt"]
    alone = subprocess.run([*nmt, "translate", "--checkpoint", str(trained_run), *sources[:5]],
                           capture_output=True, text=True, check=True)
    both = subprocess.run([*nmt, "translate", "--ensemble", f"{trained_run},{other}",
                           *sources[:5]], capture_output=True, text=True, check=True)
    expected = load_translator(trained_run, ensemble=(other,)).translate(sources[:5])
    assert both.stdout == "".join(f"{t.text}\n" for t in expected)
    assert both.stdout != alone.stdout and alone.stdout.count("\n") == 5
    assert "in the ensemble" in both.stderr
    scored = subprocess.run([*nmt, "eval", "--checkpoint", str(trained_run), "--ensemble",
                             f"{trained_run},{other}", "--bootstrap", "100", "--json"],
                            capture_output=True, text=True, check=True)
    single, ensemble = json.loads(scored.stdout)
    assert " + " in ensemble["checkpoint"] and " + " not in single["checkpoint"]
    assert ensemble["scores"][0]["value"] < single["scores"][0]["value"]  # B drags it down
    clash = subprocess.run([*nmt, "translate", "--checkpoint", str(trained_run), "--ensemble",
                            f"{trained_run},{other}", "Hello."], capture_output=True, text=True)
    assert clash.returncode == 2 and "--ensemble" in clash.stderr


def test_models_with_another_tokenizer_are_refused_in_one_line(trained_run, tmp_path):
    data = checkpoint.load(trained_run / "best.pt")
    size = Translator.from_checkpoint(trained_run / "best.pt").tokenizer.tgt_vocab_size
    text = (trained_run / "test.en").read_text(encoding="utf-8").splitlines() * 20
    other = train_model(text, size, "bpe", 1.0)
    data["tokenizer"] = {"src": other, "tgt": other}
    odd = tmp_path / "odd.pt"
    torch.save(data, odd)
    assert Translator.from_checkpoint(odd).tokenizer.tgt_vocab_size == size  # loads alone
    with pytest.raises(Exception, match="tokenizer differs"):
        load_translator(trained_run, ensemble=(odd,))
    out = subprocess.run([sys.executable, "-m", "nmt", "translate", "--ensemble",
                          f"{trained_run},{odd}", "Hello."], capture_output=True, text=True)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "tokenizer differs" in errors[0], out.stderr
    assert "Traceback" not in out.stderr

"""scripts/race.py against a fake OpenNMT-py: a peer that starts slowly, logs each step and writes
checkpoints, so that the race's clock, its copying of checkpoints, the recipe it hands the peer
and its table can be checked in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from bench import PEERS  # noqa: E402
from race_peers import Launch, Recipe, render  # noqa: E402

STARTUP_S = 2.0  # the fake peer's imports and vocabulary
STEP_S = 0.02  # its time an update
MINUTES = 0.1

FAKE_TRAIN = f'''#!{sys.executable}
"""Logs OpenNMT-py's step lines and saves checkpoints as its config says."""
import json, sys, time
from pathlib import Path
import yaml
launched = time.time()
config = yaml.safe_load(open(sys.argv[sys.argv.index("-config") + 1]))
times = Path(config["save_model"]).parent / "fake-times.json"
time.sleep({STARTUP_S})
step = 0
while step < config["train_steps"]:
    time.sleep({STEP_S})
    step += 1
    if step == 1:
        first = time.time()
    part = times.with_suffix(".part")  # whole or not at all: the race may stop it here
    part.write_text(json.dumps({{"launched": launched, "first": first, "last": time.time()}}))
    part.replace(times)
    if step % config["report_every"] == 0:
        print(f"[INFO] Step {{step}}/{{config['train_steps']}}; acc: 1.0; ppl: 9.0; xent: 2.2; "
              f"lr: {{config['learning_rate']}}; sents: 8; bsz: 10/ 12/ 1; 500/600 tok/s; "
              f"{{int(time.time() - launched)}} sec", flush=True)
    if step % config["save_checkpoint_steps"] == 0:
        Path(f"{{config['save_model']}}_step_{{step}}.pt").write_bytes(b"weights" * 100)
        old = step - config["keep_checkpoint"] * config["save_checkpoint_steps"]
        Path(f"{{config['save_model']}}_step_{{old}}.pt").unlink(missing_ok=True)
'''

FAKE_TRANSLATE = f'''#!{sys.executable}
"""Translates by copying each source line."""
import sys
args = sys.argv
open(args[args.index("-output") + 1], "w").write(open(args[args.index("-src") + 1]).read())
'''


def fake_peers(root: Path) -> Path:
    bin_ = root / "onmt" / "bin"
    bin_.mkdir(parents=True)
    for name, text in (("onmt_train", FAKE_TRAIN), ("onmt_translate", FAKE_TRANSLATE),
                       ("onmt_build_vocab", "#!/bin/sh\nexit 0\n"),
                       ("python", f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    return root


def race(tmp: Path, seeds: str, *more: str) -> dict:
    """Runs race.py on the tiny config against the fake peer; returns its race.json."""
    peers = tmp / "peers"
    if not peers.exists():
        fake_peers(peers)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "race.py"), "--config",
         str(ROOT / "configs" / "tiny.yaml"), "--minutes", str(MINUTES),
         "--seeds", seeds, "--points", "5", "--calibrate", "1", "--runs", str(tmp / "runs"),
         "--out", str(tmp / "out"), "--set", f"data.dir={ROOT}",
         "--set", f"data.prepared_dir={tmp / 'prepared'}", "--set", "train.valid_every=10",
         "--set", "train.valid_max_sentences=4", "--set", "train.schedule=linear",
         "--set", "train.decay_fraction=0.2", *more],
        check=True, cwd=tmp, capture_output=True, timeout=300,
        env={**__import__("os").environ, "NMT_PEERS": str(peers)})
    return json.loads((tmp / "out" / "race.json").read_text())


def test_race_clock_checkpoints_recipe_and_table(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    result = race(tmp_path, "nmt=1,onmt=2")
    entries = result["entries"]
    assert [(e["toolkit"], e["seed"]) for e in entries] == [("nmt", 1), ("onmt", 1), ("onmt", 2)]
    rate = result["rates"]["onmt"]  # updates a minute, from the untimed run
    assert 0.5 < rate / (60 / STEP_S) <= 1.05

    for e in entries[1:]:
        run = runs / f"onmt-seed{e['seed']}"
        times = json.loads((run / "run" / "fake-times.json").read_text())
        # the clock starts at the first update, not at launch, and stops a budget later
        assert STARTUP_S <= e["startup_s"] < STARTUP_S + 1.5
        assert MINUTES * 60 - 0.5 <= times["last"] - times["first"] < MINUTES * 60 + 3
        # every checkpoint was copied as it appeared, the peer keeping only its last two
        copies = sorted((runs / f"onmt-seed{e['seed']}-checkpoints").glob("model_step_*.pt"))
        assert len(copies) >= 4
        assert len(e["curve"]) == len(copies)
        minutes = [m for m, _, _ in e["curve"]]
        assert minutes == sorted(minutes) and 0 <= minutes[0] and minutes[-1] <= MINUTES
        # the budget lost after the last checkpoint is at most about one interval of points
        assert e["last_checkpoint"] >= MINUTES * (1 - 1 / 5) - 0.02
        # the peer was given nmt's recipe, its decay placed by its measured speed
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["batch_type"], config["batch_size"]) == ("tokens", 400)
        assert (config["learning_rate"], config["label_smoothing"]) == (0.005, 0.1)
        assert config["seed"] == e["seed"]
        updates = rate * MINUTES
        assert abs(config["start_decay_steps"] - 0.8 * updates) <= 0.05 * updates + 2
        assert config["learning_rate_decay"] == 0.5

    table = (out / "race.md").read_text()
    for label in ("nmt seed 1", "OpenNMT-py seed 1", "OpenNMT-py seed 2"):
        assert f"| {label} |" in table
    assert "OpenNMT-py: BLEU" in table and "spread" in table
    assert "bs:1000" in table
    assert (out / "race.png").stat().st_size > 0

    # --reuse: the runs of this race are scored again, not trained; only onmt seed 3 trains
    best = runs / "nmt-seed1" / "tiny" / "best.pt"
    trained_at = best.stat().st_mtime_ns
    again = race(tmp_path, "nmt=1,onmt=3", "--reuse")
    assert best.stat().st_mtime_ns == trained_at
    assert [(e["toolkit"], e["seed"]) for e in again["entries"]] == [
        ("nmt", 1), ("onmt", 1), ("onmt", 2), ("onmt", 3)]
    for before, after in zip(entries, again["entries"]):
        assert after == before  # the same entry, the same scores
    assert again["entries"][3]["curve"] and again["entries"][3]["trained"]
    assert (runs / "onmt-seed3-checkpoints").is_dir()
    assert again["rates"] == result["rates"]  # seed 3 was placed by the earlier calibration
    assert "| OpenNMT-py seed 3 |" in (out / "race.md").read_text()


def test_joey_keeps_every_checkpoint_under_either_recipe(tmp_path):
    """Joey NMT writes a checkpoint only when it beats the ones it keeps (by its own validation
    on a few sentences) unless told to keep all: the race would then lose every later one."""
    for name, recipe in (("nmt", Recipe(2000, 0.002, 0.1, 0.2)), ("own", None)):
        launch = Launch("joey", name, 1, tmp_path, tmp_path / "out", 100)
        config = render(PEERS / "joey.template.yaml", launch, 1000, 50, recipe)
        assert config["training"]["keep_best_ckpts"] == -1

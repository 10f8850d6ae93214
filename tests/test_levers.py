"""scripts/levers.py: variants trained side by side for the same minutes, scored on one split
with paired bootstrap against the first, and per corpus on the pairs that came from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from sacrebleu.metrics import BLEU

from nmt.data.prepare import prepare

from conftest import ROOT, TINY_CORPUS, drop_prepared_field, tiny_config


def two_corpus_config(tmp: Path) -> Path:
    """configs/tiny.yaml reading the tiny corpus as two files, `first` and `second`."""
    lines = TINY_CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp / "first.tsv").write_text("".join(lines[:400]), encoding="utf-8")
    (tmp / "second.tsv").write_text("".join(lines[400:]), encoding="utf-8")
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw["data"].update(dir=str(tmp), prepared_dir=str(tmp / "prepared"),
                       corpora=[{"path": "first.tsv"}, {"path": "second.tsv"}])
    raw["train"].update(valid_every=10, valid_max_sentences=4, average_last=2)
    path = tmp / "two.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_variants_are_compared_on_the_split_and_per_corpus(tmp_path):
    config = two_corpus_config(tmp_path)
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "levers.py"), "--config", str(config),
                    "--levers", "", "--variant", "base:",
                    "--variant", "smooth:train.label_smoothing=0.3", "--minutes", "0.1",
                    "--runs", str(tmp_path / "runs"), "--out", str(out)],
                   check=True, cwd=tmp_path, capture_output=True)
    result = json.loads((out / "levers.json").read_text())
    names = [o["name"] for o in result["outcomes"]]
    assert names == ["base", "base (averaged)", "smooth", "smooth (averaged)"]
    assert result["outcomes"][0]["p_value"] is None
    assert all(0 < o["p_value"] <= 1 for o in result["outcomes"][1:])
    assert result["outcomes"][2]["overrides"] == ["train.label_smoothing=0.3"]
    assert "bs:1000" in result["signature"]

    # each corpus's BLEU is that of the validation pairs read from its file
    pairs = {}
    for corpus in ("first", "second"):
        for line in (tmp_path / f"{corpus}.tsv").read_text(encoding="utf-8").splitlines():
            pairs[line.split("\t")[0]] = corpus
    prepared = next((tmp_path / "prepared").iterdir())
    sources = (prepared / "valid.en").read_text(encoding="utf-8").splitlines()
    refs = (prepared / "valid.pt").read_text(encoding="utf-8").splitlines()
    for o in result["outcomes"]:
        run = Path(o["checkpoint"]).parent
        hyps = (run / f"valid.hyp.{Path(o['checkpoint']).name}.txt").read_text(
            encoding="utf-8").splitlines()
        assert len(hyps) == len(sources)
        for corpus in ("first", "second"):
            idx = [i for i, s in enumerate(sources) if pairs[s] == corpus]
            assert idx
            bleu = BLEU().corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score
            assert abs(o["by_corpus"][corpus] - bleu) < 0.01
    assert (out / "levers.md").read_text().count("\n| ") == 4

    # --reuse assesses the variants trained already and trains only the new one
    base = tmp_path / "runs" / "base" / "best.pt"
    stamp = base.stat().st_mtime_ns
    subprocess.run([sys.executable, str(ROOT / "scripts" / "levers.py"), "--config", str(config),
                    "--levers", "", "--variant", "base:", "--variant", "drop:model.dropout=0.3",
                    "--minutes", "0.1", "--runs", str(tmp_path / "runs"), "--out", str(out),
                    "--reuse"], check=True, cwd=tmp_path, capture_output=True)
    assert base.stat().st_mtime_ns == stamp
    result = json.loads((out / "levers.json").read_text())
    assert [o["name"] for o in result["outcomes"]] == [
        "base", "base (averaged)", "drop", "drop (averaged)"]
    assert (tmp_path / "runs" / "drop" / "best.pt").exists()


def test_prepared_data_without_each_pairs_corpus_is_prepared_again_for_origins(tmp_path):
    cfg = tiny_config(tmp_path)
    prepared = prepare(cfg.data, progress=False)
    drop_prepared_field(prepared, "corpus", "valid")  # as nmt wrote it before corpus weights
    assert prepare(cfg.data, progress=False).summary.cached  # training does not need it
    again = prepare(cfg.data, progress=False, origins=True)
    assert not again.summary.cached
    with np.load(again.ids("valid")) as z:
        assert {"corpus", "line"} <= set(z.files)

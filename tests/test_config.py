"""The strict config loader: every kind of problem is named by its dotted path, all at once."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from nmt.config import Config, from_dict, load_config, parse_override, to_dict
from nmt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    return err.value.problems


def test_defaults_and_round_trip():
    cfg = from_dict({})
    assert cfg == Config()
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.data.corpora


def test_unknown_key_is_named_with_its_path():
    (msg,) = problems({"train": {"lrr": 0.1}})
    assert msg.startswith("train.lrr: unknown key")
    assert "lr" in msg


def test_wrong_type():
    assert problems({"train": {"batch_tokens": "big"}}) == [
        "train.batch_tokens: expected int, got 'big'"]
    (msg,) = problems({"model": {"dropout": True}})
    assert msg.startswith("model.dropout: expected float")


def test_invalid_choice_lists_valid_ones():
    (msg,) = problems({"model": {"attention": {"score": "cosine"}}})
    assert msg.startswith("model.attention.score:")
    assert "'additive'" in msg and "'cosine'" in msg


@pytest.mark.parametrize("raw, path", [
    ({"model": {"hidden_size": -3}}, "model.hidden_size"),
    ({"model": {"dropout": 1.0}}, "model.dropout"),
    ({"decode": {"beam": 0}}, "decode.beam"),
    ({"train": {"lr": 0}}, "train.lr"),
    ({"model": {"attention": {"window": 0}}}, "model.attention.window"),
    ({"model": {"attention": {"temperature": 0.0}}}, "model.attention.temperature"),
])
def test_out_of_range(raw, path):
    assert problems(raw)[0].startswith(f"{path}: expected")


def test_inconsistent_combination():
    (msg,) = problems({"model": {"tie_embeddings": True, "emb_size": 64, "decoder_size": 128}})
    assert msg.startswith("model.tie_embeddings:")
    (msg,) = problems({"data": {"corpora": [{"path": "a.en", "format": "text"}]}})
    assert msg.startswith("data.corpora[0].target_path:")
    (msg,) = problems({"model": {"bridge": "zeros", "attention": {"type": "none"}}})
    assert msg.startswith("model.bridge:") and "'none'" in msg
    (msg,) = problems({"model": {"attention": {"type": "local-p", "coverage": True}}})
    assert msg.startswith("model.attention.coverage:") and "'local-p'" in msg
    (msg,) = problems({"model": {"attention": {"type": "hard", "score": "dot"},
                                 "decoder_size": 100}})
    assert msg.startswith("model.attention.score: 'dot' needs")
    none = from_dict({"model": {"attention": {"type": "none", "score": "dot"},
                                "decoder_size": 100}})
    assert none.model.attention.type == "none"  # no score is computed, so no size constraint


def test_all_problems_reported_at_once():
    found = problems({"train": {"lr": "fast", "seed": 1.5}, "decode": {"bem": 3}})
    assert len(found) == 3
    assert {m.split(":")[0] for m in found} == {"train.lr", "train.seed", "decode.bem"}


def test_type_range_and_consistency_problems_reported_together():
    found = problems({"train": {"lr": "fast", "batch_tokens": 0},
                      "model": {"tie_embeddings": True, "emb_size": 64, "decoder_size": 128}})
    assert found == [
        "train.lr: expected float, got 'fast'",
        "train.batch_tokens: expected >= 1, got 0",
        "model.tie_embeddings: needs model.emb_size == model.decoder_size, got 64 and 128",
    ]


@pytest.mark.parametrize("raw, expected", [
    # emb_size is broken, so the tie_embeddings rule that reads it has nothing to say
    ({"model": {"tie_embeddings": True, "emb_size": "big"}}, ["model.emb_size"]),
    # out of range: reported once, not again by the batch_tokens / max_pieces rule
    ({"train": {"batch_tokens": -1}}, ["train.batch_tokens"]),
    # a section that is not a mapping: the checks inside it are skipped
    ({"data": 5, "train": {"batch_tokens": 3}}, ["data"]),
    # a corpus without `path` is left out; the target_path rule skips the corpora
    ({"data": {"corpora": [{"format": "text"}]}, "train": {"batch_tokens": 0}},
     ["data.corpora[0].path", "train.batch_tokens"]),
    ({"train": {"betas": [0.9, "x"], "lr": -1.0}}, ["train.betas[1]", "train.lr"]),
])
def test_nothing_spurious_about_broken_keys(raw, expected):
    assert [m.split(":")[0] for m in problems(raw)] == expected


def test_sections_must_be_mappings():
    (msg,) = problems({"train": [1, 2]})
    assert msg.startswith("train: expected a mapping")


def test_overrides_are_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n")
    cfg = load_config(path, ["train.lr=0.0005", "data.max_words=80", "train.betas=[0.8, 0.9]"])
    assert cfg.train.lr == 0.0005 and cfg.data.max_words == 80
    assert cfg.train.betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match="train.batch_tokens: expected int"):
        load_config(path, ["train.batch_tokens=big"])


@pytest.mark.parametrize("bad", ["train.lr", "=3", "train..lr=1", "train.lr=[1,"])
def test_bad_set_syntax(tmp_path, bad):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    with pytest.raises(ConfigError, match="--set"):
        load_config(path, [bad])


def test_invalid_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: [0.1\n  seed: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "line" in str(err.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_readme_documents_every_key():
    import dataclasses

    readme = (ROOT / "README.md").read_text()

    def keys(cls, prefix):
        for f in dataclasses.fields(cls):
            factory = f.default_factory
            if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
                yield from keys(factory, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    missing = [k for k in keys(Config, "") if f"`{k}`" not in readme]
    assert not missing


@pytest.mark.parametrize("text, value", [
    ("1e-4", 1e-4), ("1E+3", 1000.0), ("-2.5e-3", -2.5e-3), (".5", 0.5), ("1.", 1.0),
    ("5e3", 5000.0), ("12", 12), ("-3", -3), ("089", "089"), ("1e", "1e"),
])
def test_overrides_read_yaml_1_2_numbers(text, value):
    parsed = parse_override(f"train.lr={text}")[1]
    assert parsed == value and type(parsed) is type(value)


def test_scientific_notation_in_files_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n  min_lr: 5E-6\n")
    cfg = load_config(path)
    assert cfg.train.lr == 0.0001 and cfg.train.min_lr == 5e-6
    assert load_config(path, ["train.lr=1e-4"]).train.lr == 0.0001
    with pytest.raises(ConfigError, match=r"train.seed: expected int, got 1000.0"):
        load_config(path, ["train.seed=1e3"])


@pytest.mark.parametrize("text, shown", [(".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan")])
@pytest.mark.parametrize("key, path", [
    ("train.lr", "train.lr"), ("train.betas", "train.betas[1]"),
    ("decode.length_penalty", "decode.length_penalty"),
])
def test_floats_must_be_finite(tmp_path, text, shown, key, path):
    value = f"[0.9, {text}]" if key == "train.betas" else text
    section, name = key.split(".")
    expected = [f"{path}: expected a finite number, got {shown}"]
    in_file = tmp_path / "c.yaml"
    in_file.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(in_file)
    assert err.value.problems == expected
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    with pytest.raises(ConfigError) as err:
        load_config(empty, [f"{key}={value}"])
    assert err.value.problems == expected


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", ".", "..", ".hidden", "-x", "",
                                  "a\\b", "a\0b", "x" * 101])
def test_run_name_must_be_a_plain_name(name):
    assert problems({"name": name}) == [
        f"name: expected a plain run name (letters, digits, '.', '_', '-'; no path), "
        f"got {name!r}"]


@pytest.mark.parametrize("name", ["en-pt", "run_1.2", "x" * 100])
def test_plain_run_names_are_accepted(name):
    assert from_dict({"name": name}).name == name


def test_explicit_empty_corpora_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  corpora: []\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == ["data.corpora: expected at least one corpus, got []"]
    path.write_text("data:\n  corpora: [{path: a.tsv}]\ntrain:\n  lr: fast\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["data.corpora=[]"])
    assert [m.split(":")[0] for m in err.value.problems] == ["train.lr", "data.corpora"]
    # absent, the default () is fine, and so is its round trip through to_dict
    assert from_dict({}).data.corpora == ()
    assert from_dict(to_dict(Config())) == Config()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    errors = []

    def load():
        try:
            load_config(fifo)
        except ConfigError as err:
            errors.append(err)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # blocked opening the FIFO for reading: release it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_config blocked on a FIFO")
    (err,) = errors
    assert err.problems == ["not a regular file (expected a YAML config file)"]
    assert err.source == str(fifo)

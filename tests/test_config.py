"""The strict config loader: every kind of problem is named by its dotted path, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmt.config import Config, from_dict, load_config, to_dict
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

"""Config resolution (rftkit/config.py): YAML paths and command-line overrides."""

import pytest
from tests.conftest import EXAMPLES

from rftkit.config import load_config
from rftkit.errors import ConfigError


def test_yaml_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(EXAMPLES / "grpo.yaml")
    assert cfg.data.train == str(EXAMPLES.resolve() / "train.jsonl")
    override = load_config(EXAMPLES / "grpo.yaml", ["data.train=mine.jsonl", "train.steps=7", "lora.target_modules=[q_proj,v_proj]"])
    assert override.data.train == "mine.jsonl" and override.train.steps == 7
    assert override.lora.target_modules == ["q_proj", "v_proj"]


# ---- mixtures and replay -------------------------------------------------------------------

def test_a_mixture_resolves_each_sources_files_relative_to_the_config(tmp_path):
    (tmp_path / "g.yaml").write_text("type: length_penalty\nmax_len: 40\n")
    (tmp_path / "mix.yaml").write_text(
        "data:\n  train:\n    - {path: a.jsonl, weight: 3}\n    - {path: sub/b.parquet, name: code, grader: g.yaml, val: b_val.jsonl}\n"
        "replay: {path: old.jsonl}\n")
    cfg = load_config(tmp_path / "mix.yaml")
    a, b = cfg.data.sources
    assert (a.name, a.path, a.weight) == ("a", str(tmp_path / "a.jsonl"), 3.0)
    assert (b.name, b.path, b.val) == ("code", str(tmp_path / "sub" / "b.parquet"), str(tmp_path / "b_val.jsonl"))
    assert b.grader == {"type": "length_penalty", "max_len": 40}  # the grader file, read
    assert cfg.replay.path == str(tmp_path / "old.jsonl")


@pytest.mark.parametrize("overrides, message", [
    (["data.train=[{path: a.jsonl}, {path: x/a.jsonl}]"], "two sources are named 'a'"),
    (["data.train=[{path: a.jsonl, weight: 0}]"], "greater than 0"),
    (["data.train=[{path: a.jsonl, name: 'a b'}]"], "letters, digits"),
    (["data.train=[{path: a.jsonl}]", "algorithm.name=dpo"], "mixture"),
    (["replay.path=old.jsonl", "algorithm.name=sft"], "replay.path needs algorithm.name: grpo"),
    (["data.format=csv"], "unknown data format 'csv'"),
])
def test_mixture_and_replay_mistakes_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)

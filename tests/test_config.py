"""Config resolution (rftkit/config.py): YAML paths and command-line overrides."""

from tests.conftest import EXAMPLES

from rftkit.config import load_config


def test_yaml_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(EXAMPLES / "grpo.yaml")
    assert cfg.data.train == str(EXAMPLES.resolve() / "train.jsonl")
    override = load_config(EXAMPLES / "grpo.yaml", ["data.train=mine.jsonl", "train.steps=7", "lora.target_modules=[q_proj,v_proj]"])
    assert override.data.train == "mine.jsonl" and override.train.steps == 7
    assert override.lora.target_modules == ["q_proj", "v_proj"]

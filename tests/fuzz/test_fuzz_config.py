"""Fuzzing configs: YAML files and `key=value` overrides give a Config or a UserError (ConfigError),
never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from rftkit.config import Config, load_config, parse_overrides
from rftkit.errors import UserError
from tests.conftest import EXAMPLES
from tests.fuzz.conftest import bounded
from tests.fuzz.strategies import json_values, mutated, scalars, text

SECTIONS = {"model": ["path", "dtype", "device"], "data": ["train", "val"], "rollout": ["num_generations",
            "temperature", "max_new_tokens", "top_p"], "algorithm": ["name", "advantage", "epsilon", "beta"],
            "train": ["steps", "prompts_per_step", "micro_batch_size", "lr", "seed", "threads"],
            "run": ["dir", "checkpoint_interval", "eval_interval"], "grading": ["timeout_s", "workers"],
            "lora": ["enabled", "rank"], "grader": ["type", "pattern"]}
keys = st.one_of(st.sampled_from([f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks]), text)
override = st.one_of(st.tuples(keys, st.one_of(text, scalars.map(str))).map(lambda kv: f"{kv[0]}={kv[1]}"), text)


@given(st.lists(override, max_size=6))
def test_overrides_parse_or_say_why(pairs):
    with bounded():
        try:
            tree = parse_overrides(pairs)
        except UserError:
            event("refused: UserError")
            return
    event("accepted")
    assert isinstance(tree, dict)


section = st.sampled_from(list(SECTIONS)).flatmap(lambda s: st.tuples(st.just(s), st.dictionaries(
    st.one_of(st.sampled_from(SECTIONS[s]), text), st.one_of(scalars, json_values), max_size=4)))
EXAMPLE = yaml.safe_load((EXAMPLES / "grpo.yaml").read_text())
documents = st.one_of(st.lists(section, max_size=5).map(dict).map(yaml.safe_dump), text, json_values.map(yaml.safe_dump),
                      mutated(EXAMPLE).map(yaml.safe_dump), mutated(EXAMPLE, 1).map(yaml.safe_dump))


@given(documents, st.lists(override, max_size=3))
def test_a_config_file_is_a_config_or_a_user_error(document, pairs):
    with tempfile.TemporaryDirectory() as tmp, bounded():
        path = Path(tmp) / "config.yaml"
        path.write_text(document)
        for data in ("train.jsonl", "val.jsonl"):
            (Path(tmp) / data).write_text((EXAMPLES / data).read_text())
        try:
            config = load_config(path, pairs)
        except UserError:
            event("refused: UserError")
            return
    event("accepted")
    assert isinstance(config, Config)

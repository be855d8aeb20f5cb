"""`rft config show` and the field descriptions it prints (rftkit/config.py: describe_config)."""

import pytest
import yaml
from pydantic import BaseModel

from tests.conftest import EXAMPLES, run_cli

from rftkit.config import Config, describe_config, load_config
from rftkit.errors import ConfigError


def _fields(model: type[BaseModel], prefix: str = ""):
    """(dotted key, FieldInfo, section class or None) of every field, recursively from `model`."""
    for name, field in model.model_fields.items():
        section = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        name = field.alias or name  # `async`, a Python keyword, is the `async_` field's name in YAML
        yield prefix + name, field, section
        if section is not None:
            yield from _fields(section, f"{prefix}{name}.")


def _lines_by_key(text: str) -> dict[str, str]:
    """dotted key -> its line, for `rft config show`'s output (sections by indentation)."""
    out, path = {}, []
    for line in text.splitlines():
        if line.startswith("#") or ":" not in line:
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        path = path[:depth] + [line.strip().split(":", 1)[0]]
        out[".".join(path)] = line
    return out


def test_every_config_field_has_a_description():
    missing = [key for key, field, _ in _fields(Config) if not (field.description or "").strip()]
    assert not missing, f"give these fields a Field(description=...): {missing}"


def test_config_show_prints_every_key_with_its_default_and_meaning():
    proc = run_cli("config", "show", str(EXAMPLES / "grpo.yaml"), "train.steps=3")
    assert proc.returncode == 0, proc.stderr
    shown = _lines_by_key(proc.stdout)
    for key, field, _ in _fields(Config):
        assert key in shown, f"{key} is not shown"
        assert field.description in shown[key], f"{key}: its description is not on its line: {shown[key]}"
    assert shown["train.steps"].startswith("  steps: 3 ") and "# default 100;" in shown["train.steps"]
    # the text is the resolved config itself, so it can be saved as a config file
    assert yaml.safe_load(proc.stdout) == load_config(EXAMPLES / "grpo.yaml", ["train.steps=3"]).model_dump()


def test_config_show_without_a_config_shows_the_defaults_and_has_help():
    proc = run_cli("config", "show")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout) == Config().model_dump()
    assert "# default" not in proc.stdout  # nothing differs from its default
    help_ = run_cli("config", "show", "--help")
    assert help_.returncode == 0 and "CONFIG" in help_.stdout


def test_every_value_that_differs_says_its_default():
    text = describe_config(load_config(None, ["lora.rank=4", "grader=math", "algorithm.epsilon_high=0.28"]))
    assert "  rank: 4  " in text and "# default 8;" in text
    assert "grader: math  # default {type: answer_match};" in text
    assert "# default null;" in text


def test_unknown_key_error_points_to_config_show():
    with pytest.raises(ConfigError, match="train.stepz: unknown key .*`rft config show`"):
        load_config(None, ["train.stepz=3"])

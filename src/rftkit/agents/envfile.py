"""`rft env run` and `rft env validate`: an environment tried without a model.

    rft env run env.yaml --item item.json --assistant turns.json [--json]
    rft env validate env.yaml

ENV.yaml holds an `environment:` mapping, exactly what a run config takes, and optionally a
`grader:` (an object, a type name, or a grader file), both relative to ENV.yaml. TURNS.json
is a JSON list of the assistant's raw texts, tool calls in the Hermes format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from rftkit.agents.environment import EnvironmentSpec, build_environment
from rftkit.agents.play import play_scripted
from rftkit.errors import ConfigError, UserError
from rftkit.graders.base import build_grader, load_grader_spec, resolve_grader_paths
from rftkit.types import Item


def load_env_file(path: Path) -> tuple[EnvironmentSpec, Any]:
    """(the checked environment, its grader or None); ConfigError (exit 2) for anything wrong."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or "environment" not in data:
        raise ConfigError(f"{path}: expected a mapping with an `environment:` key (and optionally `grader:`)")
    unknown = sorted(set(data) - {"environment", "grader"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (an env file holds `environment:` and `grader:`)")
    root = path.parent
    env = build_environment(data["environment"], root)
    grader = None
    if data.get("grader") is not None:
        spec = data["grader"]
        if isinstance(spec, str) and Path(spec).suffix:
            spec = load_grader_spec(str(root / spec))
        elif isinstance(spec, dict):
            spec = resolve_grader_paths(spec, root)
        grader = build_grader(spec, f"{path}: grader")
    return env, grader


def read_turns(path: Path) -> list[str]:
    try:
        turns = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}, line {exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise UserError(f"{path}: expected a JSON list of the assistant's turns as strings")
    return turns


def run(path: Path, item: Item, turns: list[str]) -> dict[str, Any]:
    env, grader = load_env_file(path)
    try:
        return play_scripted(env, item, turns, grader)
    finally:
        if grader is not None and hasattr(grader, "close"):
            grader.close()


def describe(env: EnvironmentSpec) -> list[str]:
    limits = env.limits.model_dump()
    lines = [f"type: {env.kind}"] + [f"  {k}: {v}" for k, v in limits.items() if k != "type" and v is not None]
    world = env.new()
    tools = world.tools(Item(id="-", messages=[]))
    if tools:
        lines.append("tools: " + ", ".join(t["function"]["name"] for t in tools))
    return lines

"""`rft grader run` and `rft grader validate`: try a grader on one sample without a model.

    rft grader run grader.yaml --item item.json --output "ANSWER: 56"
    rft grader run grader.yaml --item item.json --output "<think>7*8</think>ANSWER: 56" --reasoning
    rft grader validate grader.yaml --item item.json

A grader file holds one grader object (YAML or JSON). `run` grades through the same
executor as training (deadlines, sandbox, retries), so what it prints is what a run would
see; `validate` builds the grader (types, operations, formula syntax, python source) and,
given an item, checks every template variable against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from rftkit.data.items import item_from_row
from rftkit.errors import ConfigError, UserError
from rftkit.graders.base import Grader, build_grader, grader_problems, load_grader_spec
from rftkit.graders.executor import ThreadGraderExecutor
from rftkit.types import Item


def read_item(path: Path) -> Item:
    """An item from a JSON file holding one object, or from the first row of a JSONL file."""
    if not path.exists():
        raise UserError(f"item file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".jsonl":
        text = next((line for line in text.splitlines() if line.strip()), "")
    try:
        row = json.loads(text) if path.suffix.lower() in (".json", ".jsonl") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from None
    return item_from_row(row, str(path), any_object=True)


def load_grader(path: str) -> Grader:
    spec = load_grader_spec(path)
    if isinstance(spec, str) and not Path(path).suffix:
        return build_grader(spec, "grader")
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a grader file holds one grader object (a mapping with a `type`)")
    return build_grader(spec, f"{path}: grader")


def validate(path: str, item: Item | None) -> list[str]:
    """Problems with the grader in `path`; build errors raise ConfigError (exit 2)."""
    grader = load_grader(path)
    try:
        return grader_problems(grader, item, path) if item is not None else []
    finally:
        if hasattr(grader, "close"):
            grader.close()


def describe(grader: Grader, depth: int = 0) -> list[str]:
    lines = [f"{'  ' * depth}{grader.name} ({type(grader).__name__})"]
    for child in (getattr(grader, "children", None) or {}).values():
        lines += describe(child, depth + 1)
    return lines


def run(path: str, item: Item, output: str, timeout_s: float = 30.0, split: Any = None) -> dict[str, Any]:
    """Grade one output; the result has `reward`, `sub_rewards`, `errors` and `latency_s`.

    `split`: the output split into thinking and answer (rollout/thinking.py `split_thinking`, which the
    CLI's `--reasoning` calls: graders may not import rollout), as a run with `reasoning.enabled` splits
    it. The grader then scores only `split.answer`, and the result adds `reasoning`, `answer` and
    `thinking_status`.
    """
    if split is None:
        return run_grader(load_grader(path), item, output, timeout_s, path)
    result = run_grader(load_grader(path), item, split.answer, timeout_s, path)
    return {**result, "reasoning": split.reasoning, "answer": split.answer, "thinking_status": split.status}


def run_grader(grader: Grader, item: Item, output: str, timeout_s: float = 30.0, where: str = "grader") -> dict[str, Any]:
    """`run` for a grader already built (the service's graders/run endpoint builds it from JSON)."""
    problems = grader_problems(grader, item, where)
    if problems:
        raise ConfigError("the grader does not fit this item:\n  " + "\n  ".join(problems))
    executor = ThreadGraderExecutor(grader, timeout_s=timeout_s, step_budget_s=timeout_s * 4)
    try:
        (score,), _ = executor.grade_calls([(item, output)])
    finally:
        executor.close()
    return {
        "reward": score.reward,
        "sub_rewards": dict(score.breakdown),
        "errors": [score.error] if score.error else [],
        "latency_s": round(score.latency_s, 6),
    }

"""The Grader contract and the table of grader types.

A grader is an object with a `name`, a `needs_reference` flag and
`grade(item, text) -> Score`. It may raise: the executor turns any exception into a
failed Score (reward None, masked out of the loss), so grader code stays plain.

A grader spec is a dict with a `type` key plus that type's options, written in YAML/JSON
or given on the command line as a bare type name (`answer_match`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import yaml

from rftkit.errors import ConfigError, UserError
from rftkit.types import Item, Score


class Grader(Protocol):
    name: str
    needs_reference: bool

    def grade(self, item: Item, text: str) -> Score: ...


def _registry() -> dict[str, type]:
    from rftkit.graders.answer import AnswerMatchGrader

    return {"answer_match": AnswerMatchGrader}


def grader_names() -> list[str]:
    return sorted(_registry())


def build_grader(spec: dict[str, Any] | str, where: str = "grader") -> Grader:
    """A grader from its spec; unknown types or options are a ConfigError naming the field."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: a grader needs a `type` (one of {grader_names()})")
    options = dict(spec)
    kind = options.pop("type")
    cls = _registry().get(kind)
    if cls is None:
        raise ConfigError(f"{where}.type: unknown grader type {kind!r}; valid types: {grader_names()}")
    try:
        return cls(**options)
    except TypeError as exc:  # unknown or missing option
        raise ConfigError(f"{where}: bad options for grader {kind!r}: {exc}") from None


def load_grader_spec(text: str) -> dict[str, Any] | str:
    """A CLI `--grader` value: a grader type name, or a YAML/JSON file holding one grader object."""
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.exists():
            raise UserError(f"grader file not found: {path}")
        try:
            data = json.loads(path.read_text()) if path.suffix.lower() == ".json" else yaml.safe_load(path.read_text())
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
        return data
    return text

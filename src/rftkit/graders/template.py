"""OpenAI grader templates: `{{sample.output_text}}`, `{{sample.output_json.a.b}}`, `{{item.field.path}}`.

A template is plain text with `{{ namespace.path }}` holes. `sample` is what the model
wrote (`output_text`, and `output_json` when that text parses as JSON); `item` is the data
row (`item.reference_answer`, `item.id`, or any other field of the row, dotted into
nested objects). A hole that names another namespace is a config error; a hole whose
path is missing from a row is a `sample_parse_error` (output_json) or an
`invalid_variable_error` (item) at grading time, and `check_item` reports it up front.

    >>> item = Item(id="q1", messages=[], reference_answer="42", metadata={"meta": {"unit": "cm"}})
    >>> render("{{ sample.output_text }} vs {{item.reference_answer}} {{item.meta.unit}}", sample_of("41"), item)
    '41 vs 42 cm'
    >>> render("{{sample.output_json.a.b}}", sample_of('{"a": {"b": [1, 2]}}'), item)
    '[1, 2]'
"""

from __future__ import annotations

import json
import re
from typing import Any

from rftkit.types import Item

HOLE_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
NAMESPACES = ("sample", "item")
SAMPLE_FIELDS = ("output_text", "output_json")
_MISSING = object()


class TemplateError(Exception):
    """A hole that cannot be filled; `flag` is the OpenAI error name."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


def sample_of(text: str) -> dict[str, Any]:
    """The `sample` namespace for one completion."""
    try:
        output_json = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        output_json = _MISSING
    sample: dict[str, Any] = {"output_text": str.__str__(text)}
    if getattr(text, "messages", None) is not None:  # a multi-turn trajectory (types.Answer)
        sample["messages"] = text.messages
    if output_json is not _MISSING:
        sample["output_json"] = output_json
    return sample


def item_dict(item: Item) -> dict[str, Any]:
    """The `item` namespace (and the `item` argument of python graders): the row as JSON."""
    return {**item.metadata, "id": item.id, "messages": item.messages, "reference_answer": item.reference_answer}


def holes(template: str) -> list[str]:
    """The variable paths of a template, e.g. ['sample.output_text', 'item.reference_answer']."""
    return HOLE_RE.findall(template)


def check_syntax(template: Any, field: str) -> None:
    """Raise ValueError naming `field` for a hole outside `sample.*` / `item.*`."""
    if not isinstance(template, str):
        raise ValueError(f"{field}: must be a string (got {type(template).__name__})")
    if template.count("{{") != template.count("}}"):
        raise ValueError(f"{field}: unbalanced '{{{{' and '}}}}' in {template!r}")
    for path in holes(template):
        head, _, rest = path.partition(".")
        if head not in NAMESPACES or not rest:
            raise ValueError(f"{field}: bad template variable {{{{{path}}}}}; use {{{{sample.output_text}}}}, "
                             f"{{{{sample.output_json.KEY}}}} or {{{{item.FIELD}}}}")
        if head == "sample" and rest.split(".")[0] not in SAMPLE_FIELDS:
            raise ValueError(f"{field}: unknown sample field in {{{{{path}}}}}; valid: {list(SAMPLE_FIELDS)}")


def lookup(path: str, sample: dict[str, Any], item: Item) -> Any:
    """The value of one `namespace.dotted.path`; raises TemplateError when it is missing."""
    head, _, rest = path.partition(".")
    value: Any = sample if head == "sample" else item_dict(item)
    for key in rest.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.lstrip("-").isdigit() and -len(value) <= int(key) < len(value):
            value = value[int(key)]
        else:
            flag = "sample_parse_error" if head == "sample" else "invalid_variable_error"
            raise TemplateError(flag, f"{{{{{path}}}}} is missing (no {key!r})")
    return value


def render(template: str, sample: dict[str, Any], item: Item) -> str:
    """Fill every hole; strings go in as they are, anything else as JSON."""

    def fill(match: re.Match) -> str:
        value = lookup(match.group(1), sample, item)
        return value if isinstance(value, str) else json.dumps(value)

    return HOLE_RE.sub(fill, template)


def check_item(templates: dict[str, str], item: Item) -> list[str]:
    """Problems with the `item.*` holes of `templates` ({field name: template}) for this row."""
    problems = []
    for field, template in templates.items():
        for path in holes(template):
            if path.startswith("item."):
                try:
                    lookup(path, {}, item)
                except TemplateError as exc:
                    problems.append(f"{field}: {exc} in row {item.id!r}")
    return problems

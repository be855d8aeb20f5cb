"""`string_check`, OpenAI's string comparison grader, plus what the template graders share.

Accepted verbatim from an OpenAI grader object (`input` and `reference` are templates,
see template.py); the reward is 1.0 when the comparison holds, else 0.0.

    >>> g = StringCheckGrader(name="exact", input="{{sample.output_text}}",
    ...                       reference="{{item.reference_answer}}", operation="ilike")
    >>> g.grade(Item(id="q", messages=[], reference_answer="Paris"), "It is PARIS.").reward
    1.0

Differences from OpenAI: `input`, `reference` and `operation` have defaults
(`{{sample.output_text}}`, `{{item.reference_answer}}`, `eq`) so a bare `string_check`
works on the command line. `needs_reference` is true when a template reads
`item.reference_answer`, so data validation reports rows without one up front.
"""

from __future__ import annotations

from typing import Callable

from rftkit.graders import template
from rftkit.types import Item, Score

# operation -> holds(input, reference)
OPERATIONS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda text, ref: text == ref,
    "ne": lambda text, ref: text != ref,
    "like": lambda text, ref: ref in text,  # input contains reference, case-sensitive
    "ilike": lambda text, ref: ref.casefold() in text.casefold(),
}


class TemplateFields:
    """Named templates of one grader: syntax checked at build, rendered per sample."""

    def __init__(self, fields: dict[str, str]):
        for field, text in fields.items():
            template.check_syntax(text, field)
        self.fields = fields

    @property
    def needs_reference(self) -> bool:
        return any(path == "item.reference_answer" or path.startswith("item.reference_answer.")
                   for text in self.fields.values() for path in template.holes(text))

    def render(self, item: Item, text: str) -> dict[str, str]:
        """Every field filled in; raises template.TemplateError (its message starts with the flag)."""
        sample = template.sample_of(text)
        return {field: template.render(value, sample, item) for field, value in self.fields.items()}

    def check_item(self, item: Item) -> list[str]:
        return template.check_item(self.fields, item)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: must be a non-empty string (got {name!r})")
    return name


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_choice(field: str, value: object, choices: dict) -> str:
    if value not in choices:
        raise ValueError(f"{field}: unknown value {value!r}; valid: {sorted(choices)}")
    return value  # type: ignore[return-value]


class StringCheckGrader:
    def __init__(self, name: str = "string_check", input: str = "{{sample.output_text}}",
                 reference: str = "{{item.reference_answer}}", operation: str = "eq"):
        self.name = check_name(name)
        self.operation = check_choice("operation", operation, OPERATIONS)
        self.templates = TemplateFields({"input": input, "reference": reference})
        self.needs_reference = self.templates.needs_reference

    def grade(self, item: Item, text: str) -> Score:
        try:
            filled = self.templates.render(item, text)
        except template.TemplateError as exc:
            return Score.failed(str(exc))
        return Score(reward=float(OPERATIONS[self.operation](filled["input"], filled["reference"])))

    def check_item(self, item: Item) -> list[str]:
        return self.templates.check_item(item)

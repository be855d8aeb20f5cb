"""`math`: is the model's final answer mathematically equal to `reference_answer`?

The answer is the text of the last `ANSWER:` line, else the content of the last complete
`\\boxed{...}` (nested braces allowed), else whatever `fallback` finds. Answer and
reference are parsed and compared by `math-verify` (sympy underneath), so `1/2`, `0.5`,
`\\frac{1}{2}` and `\\dfrac12` are one answer, `\\sqrt{2}/2` equals `\\frac{\\sqrt2}{2}`,
`x=3` matches `3`, and sets and intervals compare as sets and intervals.

    >>> g = MathGrader()
    >>> g.grade(Item(id="q", messages=[], reference_answer="0.5"), "so it is \\\\boxed{\\\\frac{1}{2}}").reward
    1.0
    >>> g.grade(Item(id="q", messages=[], reference_answer="1/2"), "ANSWER: 1/3").breakdown
    {'correct': 0.0, 'format': 1.0}

Breakdown: `correct` (1/0) and `format` (1 when an `ANSWER:` line or a `\\boxed{}` held the
answer; an answer found only by `fallback` can be correct but is not well-formed).
Reward: `(1 - format_weight) * correct + format_weight * format`, as in `answer_match`.

How this differs from calling math-verify directly:
- We extract the answer ourselves and hand math-verify just that, wrapped in `\\boxed{}`;
  its own free-text extraction (`fallback: math_verify`) would otherwise reward a correct
  number anywhere in a rambling answer. The reference goes through the same path (a
  reference holding a full solution is reduced to its last `\\boxed{}` first).
- math-verify's timeouts are `signal.alarm`, which only works in the main thread, and the
  executor calls graders from worker threads; so both timeouts are off here and the
  executor's per-call deadline bounds a slow comparison instead (an abandoned call keeps
  its thread busy until sympy returns - rare, documented in executor.py).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from math_verify import LatexExtractionConfig, parse, verify

from rftkit.types import Item, Score

FALLBACKS = ("none", "last_number", "math_verify")
# Longer "answers" are wrong without parsing: the LaTeX parser takes ~1 s per 400 characters
# of nested brackets, and no final answer is a page long.
MAX_ANSWER_CHARS = 1000
ANSWER_LINE_RE = re.compile(r"ANSWER:[ \t]*([^\n]*)")
BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")
_BOXED_ONLY = [LatexExtractionConfig(boxed_match_priority=0)]
# `$..$`, `\(..\)`, `\[..\]` around a whole answer line, and a sentence's final period
_WRAPPERS = [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")]


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once that timeouts are off; they are off on purpose (module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _logger in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger).addFilter(_DropTimeoutDisabledWarning())


def last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}`, braces balanced (`\\{` and `\\}` are literal)."""
    for match in reversed(list(BOXED_RE.finditer(text))):
        depth, i = 1, match.end()
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                i += 2  # an escaped character, e.g. the set braces of \{1, 2\}
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == 0:
                return text[match.end():i].strip()
            i += 1
    return None


def _clean(answer: str) -> str:
    answer = answer.strip()
    if BOXED_RE.search(answer):  # "ANSWER: \boxed{5}"
        answer = last_boxed(answer) or answer
    answer = answer.rstrip(". ").strip()
    for left, right in _WRAPPERS:
        inner = answer[len(left):-len(right)]
        wrapped = len(answer) > len(left) + len(right) and answer.startswith(left) and answer.endswith(right)
        if wrapped and left not in inner:
            return inner.strip()
    return answer


def find_answer(text: str, fallback: str = "none") -> tuple[str | None, bool]:
    """(the answer text, whether it came in the expected format) - the last `ANSWER:` line,
    else the last `\\boxed{}`, else the last number when `fallback` is `last_number`."""
    lines = [_clean(a) for a in ANSWER_LINE_RE.findall(text)]
    if lines and lines[-1]:
        return lines[-1], True
    boxed = last_boxed(text)
    if boxed:
        return _clean(boxed), True
    if fallback == "last_number":
        numbers = NUMBER_RE.findall(text)
        if numbers:
            return numbers[-1].replace(" ", ""), False
    return None, False


def parse_answer(answer: str) -> list:
    """math-verify's parse of one answer (sympy objects first, then the raw string); [] if none."""
    return parse(f"\\boxed{{{answer}}}", extraction_config=_BOXED_ONLY, parsing_timeout=None)


@lru_cache(maxsize=4096)
def _parse_reference(reference: str) -> tuple:
    # Reduce a reference holding a worked solution to its final boxed answer.
    answer = last_boxed(reference) if BOXED_RE.search(reference) else reference
    return tuple(parse_answer(_clean(answer or "")))


class MathGrader:
    needs_reference = True

    def __init__(self, fallback: str = "none", format_weight: float = 0.0, name: str = "math"):
        """fallback: where to look when there is neither an `ANSWER:` line nor a `\\boxed{}`:
        `none` (no answer: reward 0), `last_number` (the last number in the text, e.g. `-3.5`
        or `1/2`), or `math_verify` (math-verify's own search over the last 20,000 characters:
        `final answer is ...`, the last LaTeX expression, the last number). format_weight: share of the reward paid
        for the answer being in the expected format alone (0 to 1)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: must be a non-empty string (got {name!r})")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback: must be one of {list(FALLBACKS)} (got {fallback!r})")
        if not isinstance(format_weight, (int, float)) or not 0.0 <= format_weight <= 1.0:
            raise ValueError(f"format_weight: must be a number within [0, 1] (got {format_weight!r})")
        self.fallback, self.format_weight, self.name = fallback, float(format_weight), name

    def reference(self, item: Item) -> tuple | None:
        """The parsed reference answer, or None when there is none usable."""
        ref: Any = item.reference_answer
        if ref is None or isinstance(ref, (dict, list, bool)):
            return None  # a JSON object or list is not a math answer; a bool is a JSON mistake
        return _parse_reference(str(ref).strip()) or None

    def check_item(self, item: Item) -> list[str]:
        if self.reference(item) is None:
            return [f"reference_answer: {item.reference_answer!r} in row {item.id!r} is not a math answer"]
        return []

    def grade(self, item: Item, text: str) -> Score:
        gold = self.reference(item)
        if gold is None:
            return Score.failed(f"invalid_reference_answer: {item.reference_answer!r} is not a math answer")
        answer, well_formed = find_answer(text, self.fallback)
        if answer is not None:
            predicted = parse_answer(answer) if len(answer) <= MAX_ANSWER_CHARS else []
        elif self.fallback == "math_verify":
            predicted = parse(text[-20 * MAX_ANSWER_CHARS:], parsing_timeout=None)
        else:
            predicted = []
        # An answer math-verify cannot parse at all is wrong, not a grader failure.
        correct = float(bool(predicted) and verify(list(gold), predicted, timeout_seconds=None))
        fmt = float(well_formed)
        reward = (1.0 - self.format_weight) * correct + self.format_weight * fmt
        return Score(reward=reward, breakdown={"correct": correct, "format": fmt})

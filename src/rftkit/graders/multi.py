"""`multi`: OpenAI's composite grader - named sub-graders combined by a formula.

    >>> g = MultiGrader(name="mix", calculate_output="0.7 * exact + 0.3 * close", graders={
    ...     "exact": {"type": "string_check", "operation": "eq"},
    ...     "close": {"type": "text_similarity", "evaluation_metric": "rouge_1"}})
    >>> s = g.grade(Item(id="q", messages=[], reference_answer="blue whale"), "a blue whale")
    >>> round(s.reward, 2), s.breakdown    # rouge_1: P = 2/3, R = 1 -> F1 = 0.8; 0.7 * 0 + 0.3 * 0.8
    (0.24, {'exact': 0.0, 'close': 0.8, 'close/rouge_1': 0.8})

The formula is parsed once at build time (formula.py): an unknown name is a config error
listing the sub-graders. The executor grades each child in its own lane (`children`) and
calls `combine`; `grade` does the same sequentially for standalone use. A failed child
fails the whole sample with the child's flag, named (`model_grader_parse_error: graders.judge:
...`), because a formula over a missing value has no meaning. A maths error in the formula
(division by zero, ...) is `other_error` (see formula.py). The reward is the formula's value
as is, not clipped, as OpenAI does.
"""

from __future__ import annotations

import time
from typing import Any

from rftkit.graders.base import RUNTIME_ERROR, Grader, build_grader
from rftkit.graders.formula import NAME_RE, FormulaError, parse
from rftkit.graders.openai import check_name
from rftkit.types import Item, Score

FORMULA_RUNTIME_ERROR = "other_error"


class MultiGrader:
    def __init__(self, graders: dict[str, Any], calculate_output: str, name: str = "multi", where: str = "grader"):
        self.name = check_name(name)
        if not isinstance(graders, dict) or not graders:
            raise ValueError("graders: must be a non-empty mapping of name -> grader object")
        for key in graders:
            if not isinstance(key, str) or not NAME_RE.match(key):
                raise ValueError(f"graders.{key}: a sub-grader's name is a variable of calculate_output, so it must "
                                 "be letters, digits and underscores, not starting with a digit")
        self.children: dict[str, Grader] = {key: build_grader(spec, where=f"{where}.graders.{key}")
                                            for key, spec in graders.items()}
        self.formula = parse(calculate_output, names=self.children, field="calculate_output")
        self.needs_reference = any(getattr(child, "needs_reference", False) for child in self.children.values())

    def combine(self, item: Item, text: str, scores: dict[str, Score]) -> Score:
        """The formula over the children's rewards; breakdown: each reward by name, then "name/key"."""
        breakdown: dict[str, float] = {}
        for key in self.children:
            score = scores.get(key)
            if score is None or score.reward is None:
                error = (score.error if score is not None else None) or "no score"
                flag, _, detail = error.partition(": ") if ": " in error else ("other_error", "", error)
                return Score.failed(f"{flag}: graders.{key}: {detail}")
            breakdown[key] = score.reward
        for key in self.children:
            breakdown.update({f"{key}/{sub}": value for sub, value in scores[key].breakdown.items()})
        try:
            reward = self.formula({key: breakdown[key] for key in self.children})
        except FormulaError as exc:
            return Score.failed(f"{FORMULA_RUNTIME_ERROR}: calculate_output {self.formula.source!r}: {exc}")
        return Score(reward=reward, breakdown=breakdown)

    def grade(self, item: Item, text: str) -> Score:
        start = time.monotonic()
        scores = {key: _grade_one(child, item, text) for key, child in self.children.items()}
        score = self.combine(item, text, scores)
        score.latency_s = time.monotonic() - start
        return score

    def check_item(self, item: Item) -> list[str]:
        return [f"graders.{key}.{problem}" for key, child in self.children.items()
                for problem in (child.check_item(item) if hasattr(child, "check_item") else [])]

    def close(self) -> None:
        for child in self.children.values():
            if hasattr(child, "close"):
                child.close()


def _grade_one(child: Grader, item: Item, text: str) -> Score:
    """A child's score; a child that raises fails like it would in the executor (named by combine)."""
    try:
        return child.grade(item, text)
    except Exception as exc:  # noqa: BLE001 - the contract lets graders raise
        return Score.failed(f"{RUNTIME_ERROR}: {type(exc).__name__}: {exc}")

"""`answer_match`: the verifiable grader of the arithmetic task (and any `ANSWER: <n>` task).

Reads the number after the last `ANSWER:` and compares it with `reference_answer`
numerically (so `56`, `56.0` and `+56` all match `"56"`).

    >>> g = AnswerMatchGrader()
    >>> item = Item(id="q", messages=[], reference_answer="56")
    >>> g.grade(item, "47 + 18 = 65. 65 - 9 = 56. ANSWER: 56").reward
    1.0
    >>> g.grade(item, "ANSWER: 57").breakdown
    {'correct': 0.0, 'format': 1.0}
"""

from __future__ import annotations

import math
import re

from rftkit.types import Item, Score

ANSWER_RE = re.compile(r"ANSWER:\s*([-+]?\d+(?:\.\d+)?)")


def extract_answer(text: str) -> float | None:
    found = ANSWER_RE.findall(text)
    return float(found[-1]) if found else None


class AnswerMatchGrader:
    needs_reference = True

    def __init__(self, format_weight: float = 0.0, tolerance: float = 1e-6, name: str = "answer_match"):
        """format_weight: share of the reward paid for a well-formed `ANSWER: <number>` line alone."""
        if not 0.0 <= format_weight <= 1.0:
            raise TypeError(f"format_weight must be within [0, 1] (got {format_weight})")
        self.format_weight, self.tolerance, self.name = format_weight, tolerance, name

    def grade(self, item: Item, text: str) -> Score:
        try:
            reference = float(str(item.reference_answer).strip())
        except ValueError:
            return Score.failed(f"invalid_reference_answer: {item.reference_answer!r} is not a number")
        answer = extract_answer(text)
        well_formed = float(answer is not None)
        correct = float(answer is not None and math.isclose(answer, reference, abs_tol=self.tolerance))
        reward = (1.0 - self.format_weight) * correct + self.format_weight * well_formed
        return Score(reward=reward, breakdown={"correct": correct, "format": well_formed})

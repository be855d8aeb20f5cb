"""`calibration`: correctness plus a proper scoring rule on the confidence the model states.

    grader: {type: calibration, grader: {type: answer_match}, rule: brier, weight: 1.0}

The model ends its answer with a line such as `CONFIDENCE: 0.8` (or `80%`). With y = 1 when the
inner grader's reward is >= `threshold` (else 0) and c the stated confidence:

    reward = y + weight * S(c, y)      brier: S = -(c - y)^2          in [-1, 0]
                                       log:   S = y log c + (1 - y) log(1 - c), c clipped to [eps, 1 - eps]

Both rules are proper: the expected score is best when c is the true probability of being
right, so the policy is paid for saying how often it is right, not for always saying 1. A
missing or unreadable confidence scores `missing_score` (default -1, the worst Brier score)
and `confidence_parse_error` is not raised: the sample is still graded, the breakdown simply has
no `confidence`. Breakdown: `correct` (y), `confidence` (c), `brier` ((c - y)^2, whatever the rule,
for ECE), `score` (S). `rft eval run` reports expected calibration error from `confidence` and
`correct` (metrics/calibration.py), and the report draws the reliability diagram.

It is a composite (`children`, `combine`): the executor grades the inner grader in its own lane.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from rftkit.graders.base import RUNTIME_ERROR, Grader, build_grader
from rftkit.types import Item, Score

DEFAULT_PATTERN = r"CONFIDENCE:\s*([0-9]*\.?[0-9]+)\s*(%?)"
RULES = ("brier", "log")


def brier_score(c: float, y: float) -> float:
    return -((c - y) ** 2)


def log_score(c: float, y: float, eps: float = 1e-4) -> float:
    c = min(max(c, eps), 1 - eps)
    return y * math.log(c) + (1 - y) * math.log(1 - c)


class CalibrationGrader:
    def __init__(self, grader: Any, rule: str = "brier", weight: float = 1.0, threshold: float = 1.0,
                 pattern: str = DEFAULT_PATTERN, missing_score: float = -1.0, name: str = "calibration",
                 where: str = "grader"):
        if rule not in RULES:
            raise ValueError(f"rule: must be one of {', '.join(RULES)} (got {rule!r})")
        for key, value in (("weight", weight), ("threshold", threshold), ("missing_score", missing_score)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{key}: must be a finite number (got {value!r})")
        try:
            self.pattern = re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(f"pattern: not a valid regular expression: {exc}") from None
        self.name, self.rule, self.weight, self.threshold, self.missing = name, rule, float(weight), float(threshold), float(missing_score)
        self.children: dict[str, Grader] = {"correct": build_grader(grader, where=f"{where}.grader")}
        self.needs_reference = getattr(self.children["correct"], "needs_reference", False)

    def confidence(self, text: str) -> float | None:
        """The last stated confidence as a probability, or None (none stated, or outside [0, 1])."""
        found = self.pattern.findall(text)
        if not found:
            return None
        value, percent = found[-1] if isinstance(found[-1], tuple) else (found[-1], "")
        c = float(value) / (100.0 if percent else 1.0)
        return c if 0.0 <= c <= 1.0 else None

    def combine(self, item: Item, text: str, scores: dict[str, Score]) -> Score:
        inner = scores.get("correct")
        if inner is None or inner.reward is None:
            return Score.failed((inner.error if inner is not None else None) or f"{RUNTIME_ERROR}: no score")
        y = 1.0 if inner.reward >= self.threshold else 0.0
        c = self.confidence(text)
        if c is None:
            return Score(reward=y + self.weight * self.missing, breakdown={"correct": y, "score": self.missing})
        score = brier_score(c, y) if self.rule == "brier" else log_score(c, y)
        return Score(reward=y + self.weight * score,
                     breakdown={"correct": y, "confidence": c, "brier": (c - y) ** 2, "score": score})

    def grade(self, item: Item, text: str) -> Score:
        start = time.monotonic()
        try:
            inner = self.children["correct"].grade(item, text)
        except Exception as exc:  # noqa: BLE001 - graders may raise; fail the sample as the executor would
            inner = Score.failed(f"{RUNTIME_ERROR}: {type(exc).__name__}: {exc}")
        score = self.combine(item, text, {"correct": inner})
        score.latency_s = time.monotonic() - start
        return score

    def check_item(self, item: Item) -> list[str]:
        child = self.children["correct"]
        return [f"grader.{p}" for p in child.check_item(item)] if hasattr(child, "check_item") else []

    def close(self) -> None:
        if hasattr(self.children["correct"], "close"):
            self.children["correct"].close()

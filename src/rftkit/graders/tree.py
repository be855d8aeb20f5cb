"""The grader tree: a `multi` grader's children are graded as leaves, then combined bottom-up.

An executor schedules only leaf calls (`leaves`), each leaf in its own lane; `combine` then
folds one sample's leaf scores back up the tree. Kept apart from the executor so another
executor (a Ray one) schedules the same leaves and combines them the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from rftkit.graders.base import RUNTIME_ERROR, Grader
from rftkit.types import Item, Score


def leaves(grader: Grader) -> list[Grader]:
    """The graders that are called, in the order `combine` consumes their scores."""
    children = getattr(grader, "children", None)
    if not children:
        return [grader]
    return [leaf for child in children.values() for leaf in leaves(child)]


def checked(score: Any) -> Score:
    """A leaf's answer as a Score, or a failed one saying what was wrong with it."""
    if not isinstance(score, Score):
        return Score.failed(f"{RUNTIME_ERROR}: grader returned {type(score).__name__}, not a Score")
    if score.reward is not None and not math.isfinite(score.reward):
        return Score.failed(f"{RUNTIME_ERROR}: grader returned reward {score.reward}")
    return score


def combine(node: Grader, call: tuple[Item, str], leaf_scores: Iterator[Score]) -> Score:
    """The node's Score for one sample, consuming its leaves' scores in `leaves` order."""
    children = getattr(node, "children", None)
    if not children:
        return next(leaf_scores)
    child_scores = {name: combine(child, call, leaf_scores) for name, child in children.items()}
    try:
        score = checked(node.combine(call[0], call[1], child_scores))
    except Exception as exc:  # noqa: BLE001 - a failing combine costs this sample, not the step
        score = Score.failed(f"{RUNTIME_ERROR}: combining {getattr(node, 'name', 'grader')}: {exc}")
    score.latency_s = max(s.latency_s for s in child_scores.values())
    return score

"""`calibration`: correctness plus a proper scoring rule on the stated confidence, through the real executor."""

from __future__ import annotations

import math

import pytest

from rftkit.errors import ConfigError
from rftkit.graders import build_grader
from rftkit.graders.executor import ThreadGraderExecutor
from rftkit.types import Completion, Group, Item

ITEM = Item(id="q", messages=[{"role": "user", "content": "What is 2 + 2?"}], reference_answer="4")


def _grade(spec, text):
    return build_grader(spec).grade(ITEM, text)


@pytest.mark.parametrize("text, reward, confidence", [
    ("ANSWER: 4\nCONFIDENCE: 0.9", 1 - 0.01, 0.9),     # right, confident: 1 - (0.9 - 1)^2
    ("ANSWER: 5\nCONFIDENCE: 0.9", 0 - 0.81, 0.9),     # wrong, confident: the worst
    ("ANSWER: 5\nCONFIDENCE: 20%", 0 - 0.04, 0.2),     # wrong, and said so
    ("ANSWER: 4\nCONFIDENCE: 1", 1.0, 1.0),
])
def test_brier(text, reward, confidence):
    score = _grade({"type": "calibration", "grader": "answer_match"}, text)
    assert score.reward == pytest.approx(reward)
    assert score.breakdown["confidence"] == pytest.approx(confidence)
    assert score.breakdown["correct"] == (1.0 if "ANSWER: 4" in text else 0.0)


def test_log_rule_and_weight():
    score = _grade({"type": "calibration", "grader": "answer_match", "rule": "log", "weight": 0.5},
                   "ANSWER: 4\nCONFIDENCE: 0.8")
    assert score.reward == pytest.approx(1 + 0.5 * math.log(0.8))


def test_a_missing_or_impossible_confidence_scores_the_worst_brier_and_says_none():
    for text in ("ANSWER: 4", "ANSWER: 4\nCONFIDENCE: 1.7"):
        score = _grade({"type": "calibration", "grader": "answer_match"}, text)
        assert score.reward == pytest.approx(0.0) and "confidence" not in score.breakdown


def test_a_proper_rule_pays_most_for_the_true_probability():
    """If the answer is right with probability p, the expected reward is highest at c = p (both rules)."""
    grader = build_grader({"type": "calibration", "grader": "answer_match"})
    for rule in ("brier", "log"):
        grader.rule = rule
        for p in (0.2, 0.5, 0.7):
            def expected(c):
                right = grader.grade(ITEM, f"ANSWER: 4\nCONFIDENCE: {c}").reward
                wrong = grader.grade(ITEM, f"ANSWER: 3\nCONFIDENCE: {c}").reward
                return p * right + (1 - p) * wrong
            best = max((round(0.05 * k, 2) for k in range(1, 20)), key=expected)
            assert best == pytest.approx(p), (rule, p, best)


def test_the_executor_grades_the_inner_grader_and_combines():
    spec = {"type": "calibration", "grader": "answer_match"}
    texts = ["ANSWER: 4\nCONFIDENCE: 0.5", "ANSWER: 7\nCONFIDENCE: 0.5"]
    group = Group(ITEM, [1], [Completion(text=t, token_ids=[1], logprobs=[], finish_reason="stop") for t in texts])
    executor = ThreadGraderExecutor(build_grader(spec))
    try:
        (scores,), stats = executor.score([group])
    finally:
        executor.close()
    assert [s.reward for s in scores] == pytest.approx([0.75, -0.25])
    assert stats.errors == 0


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="rule"):
        build_grader({"type": "calibration", "grader": "answer_match", "rule": "hinge"})
    with pytest.raises(ConfigError, match="grader"):
        build_grader({"type": "calibration", "grader": {"type": "nope"}})

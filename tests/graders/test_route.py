"""`by_source`: a mixture's samples graded by their own source's grader."""

from __future__ import annotations

from rftkit.graders import build_grader
from rftkit.types import Item

SPEC = {"type": "by_source", "default": "answer_match",
        "graders": {"fmt": {"type": "regex", "pattern": r"ANSWER: -?\d+\s*\Z", "mode": "search"}}}


def _item(source):
    return Item(id="q", messages=[{"role": "user", "content": "What is 2 + 2?"}], reference_answer="4", source=source)


def test_each_source_gets_its_own_grader_and_others_the_default():
    grader = build_grader(SPEC)
    assert grader.grade(_item("fmt"), "2 + 2 = 5. ANSWER: 5").reward == 1.0  # the format grader: any number
    assert grader.grade(_item(None), "2 + 2 = 5. ANSWER: 5").reward == 0.0  # answer_match: wrong
    assert grader.grade(_item("arith"), "ANSWER: 4").reward == 1.0
    assert grader.needs_reference  # answer_match (the default) needs one


def test_no_grader_for_a_source_fails_the_sample_naming_it():
    grader = build_grader({"type": "by_source", "graders": {"fmt": "answer_match"}})
    score = grader.grade(_item("chat"), "ANSWER: 4")
    assert score.reward is None and "'chat'" in score.error

"""The answer grader by hand, and the executor's deadlines: a bad grader costs samples, not the run."""

import time

import pytest

from rftkit.errors import ConfigError
from rftkit.graders import build_grader
from rftkit.graders.answer import AnswerMatchGrader, extract_answer
from rftkit.graders.executor import ThreadGraderExecutor
from rftkit.types import Completion, Group, Item, Score

ITEM = Item(id="q", messages=[{"role": "user", "content": "What is 47 + 18 - 9?"}], reference_answer="56")


@pytest.mark.parametrize(
    "text,reward",
    [
        ("47 + 18 = 65. 65 - 9 = 56. ANSWER: 56", 1.0),
        ("ANSWER: 56.0", 1.0),
        ("ANSWER: 55 ... no wait ANSWER: 56", 1.0),  # the last answer line counts
        ("ANSWER: 56 then ANSWER: 57", 0.0),
        ("ANSWER: 57", 0.0),
        ("the answer is 56", 0.0),  # no ANSWER: line
        ("", 0.0),
    ],
)
def test_answer_match(text, reward):
    assert AnswerMatchGrader().grade(ITEM, text).reward == reward


def test_negative_numbers_and_format_weight():
    item = Item(id="n", messages=[], reference_answer="-140")
    assert AnswerMatchGrader().grade(item, "ANSWER: -140").reward == 1.0
    # format_weight 0.2: a well-formed wrong answer earns 0.2, a right one 0.8 + 0.2 = 1.0, none 0
    g = AnswerMatchGrader(format_weight=0.2)
    assert g.grade(item, "ANSWER: 3").reward == pytest.approx(0.2)
    assert g.grade(item, "ANSWER: -140").reward == pytest.approx(1.0)
    assert g.grade(item, "no idea").reward == 0.0
    assert extract_answer("ANSWER:  +7") == 7.0


def test_bad_reference_is_a_failed_score_not_a_crash():
    score = AnswerMatchGrader().grade(Item(id="x", messages=[], reference_answer="forty"), "ANSWER: 40")
    assert score.reward is None and "invalid_reference_answer" in score.error


def test_build_grader_errors_name_the_field():
    with pytest.raises(ConfigError, match="unknown grader type 'nope'"):
        build_grader({"type": "nope"})
    with pytest.raises(ConfigError, match="bad options"):
        build_grader({"type": "answer_match", "colour": "red"})
    with pytest.raises(ConfigError, match="needs a `type`"):
        build_grader({"format_weight": 0.1})


class FlakyGrader:
    """Hangs on 'hang', raises on 'boom', returns garbage on 'junk', grades the rest."""

    needs_reference = False
    name = "flaky"

    def grade(self, item, text):
        if text == "hang":
            time.sleep(5)
        if text == "boom":
            raise ValueError("kaboom")
        if text == "junk":
            return "not a score"
        return Score(reward=float(text == "good"))


def _groups(texts):
    return [Group(item=ITEM, prompt_ids=[1], completions=[Completion(t, [1], [], "stop") for t in texts])]


def test_executor_masks_hangs_errors_and_garbage_without_stalling():
    executor = ThreadGraderExecutor(FlakyGrader(), timeout_s=1.0, step_budget_s=10, workers=4)  # hang: 5 s
    groups = _groups(["good", "hang", "boom", "bad", "junk", "hang", "good"])
    t0 = time.monotonic()
    scores, stats = executor.score(groups)
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, f"a hanging grader stalled the step for {elapsed:.1f}s"
    groups = [g.scored(s) for g, s in zip(groups, scores)]
    rewards = groups[0].rewards
    assert rewards == [1.0, None, None, 0.0, None, None, 1.0]
    errors = [c.score.error for c in groups[0].completions]
    assert errors[1].startswith("unresponsive_reward_error") and errors[5].startswith("unresponsive_reward_error")
    assert errors[2].startswith("python_grader_runtime_error") and "kaboom" in errors[2]
    assert errors[4].startswith("python_grader_runtime_error")
    assert stats.errors == 4 and stats.timeouts == 2 and len(stats.latencies) == 3
    # the pool was replaced, so the next step is not blocked by the two abandoned calls
    groups2 = _groups(["good"] * 8)
    scores2, _ = executor.score(groups2)
    assert groups2[0].scored(scores2[0]).rewards == [1.0] * 8


def test_step_budget_bounds_the_whole_step():
    executor = ThreadGraderExecutor(FlakyGrader(), timeout_s=30, step_budget_s=0.5, workers=2)
    groups = _groups(["hang", "hang", "good"])
    t0 = time.monotonic()
    scores, stats = executor.score(groups)
    assert time.monotonic() - t0 < 2.0
    assert stats.timeouts >= 2 and groups[0].scored(scores[0]).rewards[:2] == [None, None]
import json, pytest
from rftkit.errors import UserError
from rftkit.graders import build_grader, load_grader_spec
from rftkit.types import Item


def test_a_multi_graders_children_may_be_grader_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "exact.json").write_text(json.dumps(
        {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.reference_answer}}",
         "operation": "eq"}))
    (tmp_path / "multi.yaml").write_text("type: multi\nname: m\ngraders:\n  exact: sub/exact.json\ncalculate_output: exact\n")
    grader = build_grader(load_grader_spec(str(tmp_path / "multi.yaml")))
    assert set(grader.children) == {"exact"}
    item = Item(id="q", messages=[{"role": "user", "content": "x"}], reference_answer="42")
    assert grader.children["exact"].grade(item, "42").reward == 1.0


def test_a_missing_sub_grader_file_names_itself(tmp_path):
    (tmp_path / "multi.yaml").write_text("type: multi\ngraders:\n  a: nope.json\ncalculate_output: a\n")
    with pytest.raises(UserError, match="nope.json"):
        load_grader_spec(str(tmp_path / "multi.yaml"))

"""The grader executor: per-grader lanes, batches, composites, fault injection, deadlines."""

import threading
import time

import pytest

from rftkit.errors import ConfigError
from rftkit.graders import build_grader
from rftkit.graders.executor import ThreadGraderExecutor
from rftkit.types import Completion, Group, Item, Score

ITEM = Item(id="q", messages=[{"role": "user", "content": "2+2?"}], reference_answer="4")


class Leaf:
    """Reward = len(text) * scale, after `delay` seconds; counts calls and peak concurrency."""

    needs_reference = False

    def __init__(self, name, scale=1.0, delay=0.0, concurrency=None, deadline_s=None):
        self.name, self.scale, self.delay = name, scale, delay
        if concurrency:
            self.concurrency = concurrency
        if deadline_s:
            self.deadline_s = deadline_s
        self.calls = self.active = self.peak = 0
        self.lock = threading.Lock()

    def grade(self, item, text):
        with self.lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.delay)
        with self.lock:
            self.active -= 1
        return Score(reward=len(text) * self.scale, breakdown={"len": float(len(text))})


class Batched(Leaf):
    batch_size = 3

    def __init__(self, name, wrong_length=False):
        super().__init__(name)
        self.batches, self.wrong_length = [], wrong_length

    def grade_batch(self, calls):
        self.batches.append(len(calls))
        scores = [Score(reward=float(text == "ok")) for _, text in calls]
        return scores[:-1] if self.wrong_length else scores


class Sum:
    """A composite: reward = a + 10 * b."""

    needs_reference = False
    name = "sum"

    def __init__(self, a, b):
        self.children = {"a": a, "b": b}

    def combine(self, item, text, scores):
        if any(s.reward is None for s in scores.values()):
            return Score.failed(next(s.error for s in scores.values() if s.reward is None))
        return Score(reward=scores["a"].reward + 10 * scores["b"].reward,
                     breakdown={name: s.reward for name, s in scores.items()})


def calls(*texts):
    return [(ITEM, t) for t in texts]


def test_batched_leaf_gets_batch_size_samples_per_call_in_order():
    leaf = Batched("b")
    scores, stats = ThreadGraderExecutor(leaf, workers=2).grade_calls(calls("ok", "no", "ok", "ok", "no", "ok", "ok"))
    assert [s.reward for s in scores] == [1, 0, 1, 1, 0, 1, 1]
    assert sorted(leaf.batches) == [1, 3, 3]  # ceil(7 / 3) calls
    assert stats.errors == 0


def test_batch_with_wrong_number_of_scores_fails_those_samples_only():
    scores, stats = ThreadGraderExecutor(Batched("b", wrong_length=True)).grade_calls(calls("ok", "ok", "ok", "ok"))
    assert all(s.reward is None and "grade_batch returned 2 scores for 3 samples" in s.error for s in scores[:3])
    assert scores[3].reward is None  # the last batch has 1 sample and got 0 scores
    assert stats.errors == 4


def test_composite_combines_children_graded_in_their_own_lanes():
    a, b = Leaf("a", scale=1.0), Leaf("b", scale=0.5)
    scores, _ = ThreadGraderExecutor(Sum(a, b)).grade_calls(calls("abc", "", "abcdef"))
    # reward = len + 10 * 0.5 * len = 6 * len
    assert [s.reward for s in scores] == [18.0, 0.0, 36.0]
    assert scores[0].breakdown == {"a": 3.0, "b": 1.5}
    assert a.calls == b.calls == 3


def test_slow_grader_does_not_starve_a_fast_one():
    """Each leaf has its own lane: the fast leaf's calls all finish while the slow one is still busy."""
    slow, fast = Leaf("slow", delay=0.2, concurrency=2), Leaf("fast", concurrency=1)
    t0 = time.monotonic()
    scores, stats = ThreadGraderExecutor(Sum(fast, slow), workers=2).grade_calls(calls(*["x"] * 8))
    elapsed = time.monotonic() - t0
    assert all(s.reward == 11.0 for s in scores)
    assert slow.peak <= 2 and fast.peak == 1  # concurrency limits honoured
    assert 0.75 <= elapsed < 3.0  # 8 calls / 2 lanes * 0.2 s = 0.8 s for the slow leaf


def test_leaf_deadline_overrides_executor_timeout_and_failed_child_fails_the_sample():
    slow = Leaf("slow", delay=5.0, deadline_s=0.5)  # 0.5 s: far above a fast call, even on a loaded machine
    scores, stats = ThreadGraderExecutor(Sum(Leaf("a"), slow), timeout_s=30).grade_calls(calls("ab", "cd"))
    assert all(s.reward is None and s.error.startswith("unresponsive_reward_error: no answer within 0.5s") for s in scores)
    assert stats.timeouts == 2 and stats.errors == 2


def test_score_returns_one_score_per_completion_per_group_and_writes_nothing_into_the_groups():
    items = [Item(id=f"q{i}", messages=[{"role": "user", "content": "?"}]) for i in range(3)]
    texts = [["a", "bb", "ccc"], ["dddd"], ["", "ee"]]
    groups = [Group(item=item, prompt_ids=[1], completions=[Completion(t, [1], [], "stop") for t in ts])
              for item, ts in zip(items, texts)]
    executor = ThreadGraderExecutor(Sum(Leaf("a"), Leaf("b", scale=0.5)), workers=2)
    scores, stats = executor.score(groups)
    executor.close()
    assert [len(s) for s in scores] == [len(ts) for ts in texts]
    assert all(isinstance(s, Score) for per_group in scores for s in per_group)
    # in order: reward = len + 10 * 0.5 * len
    assert [[s.reward for s in per_group] for per_group in scores] == [[6.0 * len(t) for t in ts] for ts in texts]
    assert stats.errors == 0 and len(stats.latencies) == 6
    # the groups are as they were: no score attached in place
    assert all(c.score is None for g in groups for c in g.completions)
    assert [g.rewards for g in groups] == [[None] * len(ts) for ts in texts]
    # Group.scored attaches them to a new group, leaving the original alone
    scored = [g.scored(s) for g, s in zip(groups, scores)]
    assert [g.rewards for g in scored] == [[6.0 * len(t) for t in ts] for ts in texts]
    assert [c.text for g in scored for c in g.completions] == [t for ts in texts for t in ts]
    assert all(c.score is None for g in groups for c in g.completions)


def test_fault_injection_counts_match_what_the_executor_saw():
    grader = build_grader({"type": "answer_match", "fault": {"hang": 0.2, "raise": 0.1, "garbage": 0.1, "hang_s": 5, "seed": 3}})
    executor = ThreadGraderExecutor(grader, timeout_s=0.2, workers=16)
    scores, stats = executor.grade_calls(calls(*["ANSWER: 4"] * 200))
    executor.close()
    injected = stats.injected
    assert sum(injected.values()) > 0 and set(injected) == {"hang", "raise", "garbage"}
    assert stats.timeouts == injected["hang"]
    assert stats.errors == injected["hang"] + injected["raise"] + injected["garbage"]
    assert sum("InjectedFault" in (s.error or "") for s in scores) == injected["raise"]
    assert sum("not a Score" in (s.error or "") for s in scores) == injected["garbage"]
    assert all(s.reward == 1.0 for s in scores if s.error is None)
    assert 20 <= injected["hang"] <= 60 and 8 <= injected["raise"] <= 32  # 200 draws at 20% and 10%


def test_fault_spec_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"grader.fault: unknown option\(s\) \['hnag'\]"):
        build_grader({"type": "answer_match", "fault": {"hnag": 0.2}})
    with pytest.raises(ConfigError, match="sum to at most 1"):
        build_grader({"type": "answer_match", "fault": {"hang": 0.8, "raise": 0.5}})


def test_unknown_type_lists_every_grader_type():
    with pytest.raises(ConfigError) as err:
        build_grader({"type": "strng_check"})
    for kind in ("string_check", "text_similarity", "python", "multi", "http", "code", "math"):
        assert kind in str(err.value)


@pytest.mark.parametrize("queued", [1, 6])
def test_a_hung_call_is_reported_at_its_deadline_not_twice_it(queued):
    """The first wait used to be computed before any call had started: a 6 s deadline fired at 12 s."""
    hang = Leaf("hang", delay=30.0, concurrency=2, deadline_s=0.5)
    executor = ThreadGraderExecutor(hang, timeout_s=0.5, step_budget_s=60.0)
    start = time.monotonic()
    scores, stats = executor.grade_calls([(ITEM, "x")] * queued)  # 6 calls on 2 threads: three waves of deadlines
    took = time.monotonic() - start
    waves = -(-queued // 2)
    assert stats.timeouts == queued and all("no answer within 0.5s" in s.error for s in scores)
    assert took < waves * 0.5 + 0.5, took  # each wave at its deadline, plus a margin for a loaded machine

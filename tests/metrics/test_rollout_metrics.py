"""A step's rollout metrics (rftkit/metrics/__init__.py) and samples.jsonl rows, worked by hand."""

import math

import pytest

from rftkit.graders.executor import GradingStats
from rftkit.metrics import breakdown_means, percentile, rollout_metrics, sample_records
from rftkit.types import Completion, Group, Item, Score


def completion(n_tokens, reward, entropy, finish="stop", breakdown=None):
    score = Score(reward=reward, breakdown=breakdown or {}) if reward is not ... else None
    return Completion("t" * n_tokens, [5] * n_tokens, [], finish, score=score, entropy=entropy)


def groups():
    item = lambda i: Item(f"q{i}", [{"role": "user", "content": f"question {i}"}], reference_answer=str(i))  # noqa: E731
    return [
        Group(item(0), [1], [completion(2, 1.0, 1.0, breakdown={"format": 1.0}), completion(4, 0.0, 3.0, "length")]),
        Group(item(1), [1], [completion(3, 0.5, 0.6, breakdown={"format": 0.0}), completion(1, None, float("nan"))]),
    ]


def test_rollout_metrics_by_hand():
    stats = GradingStats(errors=1, timeouts=0, latencies=[0.1, 0.2, 0.3], injected={"hang": 2})
    m = rollout_metrics(groups(), stats)
    assert m["critic/rewards/mean"] == pytest.approx(0.5)  # (1 + 0 + 0.5) / 3, the failed one left out
    assert (m["critic/rewards/min"], m["critic/rewards/max"]) == (0.0, 1.0)
    assert m["critic/rewards/std"] == pytest.approx(math.sqrt(1 / 6))
    assert m["critic/frac_zero_std_groups"] == 0.5  # group 1 has one graded reward: no spread
    # summed entropies over the tokens of the completions that metered one: (1 + 3 + 0.6) / (2 + 4 + 3)
    assert m["actor/entropy"] == pytest.approx(4.6 / 9)
    assert m["response_length/mean"] == pytest.approx(2.5) and m["response_length/max"] == 4
    assert m["response/clipped_ratio"] == 0.25
    assert m["grader/errors"] == 1 and m["grader/error_rate"] == 0.25 and m["grader/injected_hang"] == 2
    assert m["grader/latency_p50"] == 0.2 and m["grader/latency_p99"] == 0.3
    assert m["grader/sub/format"] == 0.5


def test_entropy_is_not_measured_when_no_completion_metered_it():
    g = Group(Item("q", [{"role": "user", "content": "?"}]), [1], [Completion("a", [5], [], "stop", Score(1.0))])
    assert math.isnan(rollout_metrics([g], GradingStats(0, 0, [0.1]))["actor/entropy"])


def test_percentile_and_breakdown_means():
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0 and percentile([3.0, 1.0, 2.0, 4.0], 0.99) == 4.0
    assert math.isnan(percentile([], 0.5))
    scores = [Score(1.0, {"a": 1.0, "b": 2.0}), Score(None, {"a": 9.0}), None, Score(0.0, {"a": 0.0, "note": "x"})]
    assert breakdown_means(scores) == {"grader/sub/a": 0.5, "grader/sub/b": 2.0}


def test_sample_records_carry_reward_advantage_and_error():
    rows = sample_records(7, groups(), [[0.70711, -0.70711], [0.0, 0.0]])
    assert [r["step"] for r in rows] == [7] * 4
    assert [r["item_id"] for r in rows] == ["q0", "q0", "q1", "q1"]
    assert [r["prompt"] for r in rows] == ["question 0", "question 0", "question 1", "question 1"]
    assert [r["reward"] for r in rows] == [1.0, 0.0, 0.5, None]
    assert [r["advantage"] for r in rows] == [0.7071, -0.7071, 0.0, 0.0]  # rounded to 4 places
    assert [r["finish_reason"] for r in rows] == ["stop", "length", "stop", "stop"]
    assert rows[0]["reference_answer"] == "0" and rows[0]["completion"] == "tt"
    assert [r["advantage"] for r in sample_records(1, groups())] == [0.0] * 4  # not trained on

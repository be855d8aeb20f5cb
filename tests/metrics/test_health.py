"""Each health warning fires on synthetic metrics that show its pattern, and stays silent on a healthy
run: the real 250-step demo run (tests/metrics/fixtures/healthy_grpo_metrics.jsonl) and a flat synthetic one."""

from pathlib import Path

import pytest

from rftkit.metrics.health import CHECKS, HealthMonitor, check_health
from rftkit.train.sinks import read_jsonl

HEALTHY_RUN = Path(__file__).resolve().parent / "fixtures" / "healthy_grpo_metrics.jsonl"


def healthy_rows(n=60, **overrides):
    """Steady metrics; `overrides` maps a metric to a function step -> value."""
    rows = []
    for step in range(1, n + 1):
        row = {
            "step": step, "critic/rewards/mean": 0.3 + 0.002 * step, "critic/frac_zero_std_groups": 0.3,
            "actor/entropy": 0.07, "actor/kl": 0.001, "response_length/mean": 30.0, "response/clipped_ratio": 0.02,
            "grader/error_rate": 0.0,
        }
        if step % 10 == 0:
            row["val/reward_mean"] = 0.3 + 0.002 * step
        for key, fn in overrides.items():
            value = fn(step)
            if value is None:
                row.pop(key, None)
            else:
                row[key] = value
        rows.append(row)
    return rows


def codes(rows):
    return [w.code for w in check_health(rows)]


def test_silent_on_the_real_demo_run_and_on_a_steady_run():
    assert check_health(read_jsonl(HEALTHY_RUN)) == []
    assert check_health(healthy_rows()) == []


def test_reward_hacking_train_up_validation_down():
    rows = healthy_rows(**{
        "critic/rewards/mean": lambda s: 0.2 + 0.01 * s,  # keeps rising
        "val/reward_mean": lambda s: (0.5 - 0.004 * abs(s - 20)) if s % 10 == 0 else None,  # peaks at 20, falls
    })
    assert codes(rows) == ["reward_hacking"]
    w = check_health(rows)[0]
    assert "step 20" in w.message and "reward hacking" in w.advice


def test_validation_dip_without_rising_train_reward_is_not_hacking():
    rows = healthy_rows(**{
        "critic/rewards/mean": lambda s: 0.5 - 0.002 * s,
        "val/reward_mean": lambda s: (0.5 - 0.004 * abs(s - 20)) if s % 10 == 0 else None,
    })
    assert "reward_hacking" not in codes(rows)


def test_length_explosion_and_collapse():
    assert codes(healthy_rows(**{"response_length/mean": lambda s: 30 + 2 * s})) == ["length_explosion"]
    exploding_clip = healthy_rows(**{"response/clipped_ratio": lambda s: 0.0 if s < 30 else 0.8})
    assert codes(exploding_clip) == ["length_explosion"]
    assert codes(healthy_rows(**{"response_length/mean": lambda s: max(3.0, 60 - s)})) == ["length_collapse"]


def test_entropy_collapse():
    rows = healthy_rows(**{"actor/entropy": lambda s: 1.0 if s <= 20 else 0.05})
    assert codes(rows) == ["entropy_collapse"]
    # a steady low entropy (our tiny model starts near 0.07) is not a collapse
    assert codes(healthy_rows(**{"actor/entropy": lambda s: 0.05})) == []


@pytest.mark.parametrize("reward,hint", [(0.02, "SFT first"), (0.98, "too easy")])
def test_no_signal_says_which_way(reward, hint):
    rows = healthy_rows(**{"critic/frac_zero_std_groups": lambda s: 0.8, "critic/rewards/mean": lambda s: reward,
                           "val/reward_mean": lambda s: None})
    warnings = check_health(rows)
    assert [w.code for w in warnings] == ["no_signal"] and hint in warnings[0].advice


def test_kl_blowup():
    assert codes(healthy_rows(**{"actor/kl": lambda s: 0.001 * 1.2 ** s})) == ["kl_blowup"]
    assert codes(healthy_rows(**{"actor/kl": lambda s: 0.02})) == []


def test_grader_errors_above_5_percent():
    assert codes(healthy_rows(**{"grader/error_rate": lambda s: 0.1})) == ["grader_errors"]
    assert codes(healthy_rows(**{"grader/error_rate": lambda s: 0.03})) == []


def test_monitor_reports_each_kind_once():
    monitor = HealthMonitor()
    seen = []
    for row in healthy_rows(**{"grader/error_rate": lambda s: 0.2}):
        seen += monitor.update(row)
    assert [w.code for w in seen] == ["grader_errors"] and seen[0].step == 1


def test_every_check_has_a_test():
    tested = {"reward_hacking", "length_change", "entropy_collapse", "no_signal", "kl_blowup", "grader_errors"}
    assert {c.__name__ for c in CHECKS} == tested

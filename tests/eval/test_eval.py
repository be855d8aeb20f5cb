"""Readiness verdicts and the base-vs-tuned comparison, by hand and on real models."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tests.conftest import BUNDLED, EXAMPLES, run_cli

from rftkit.eval.baseline import outcome_shares, verdict
from rftkit.eval.compare import compare_groups, paired_bootstrap_ci, to_markdown
from rftkit.types import Completion, Group, Item, Score


def groups_from(reward_lists):
    return [Group(Item(id=f"i{i}", messages=[{"role": "user", "content": f"q{i}"}], reference_answer="1"), [1],
                  [Completion(f"a{r}", [1], [], "stop", score=Score(r)) for r in rewards])
            for i, rewards in enumerate(reward_lists)]


def test_outcome_shares_and_verdicts_by_hand():
    groups = groups_from([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]])
    shares = outcome_shares(groups)
    assert shares == {"share_all_fail": 0.25, "share_all_pass": 0.25, "share_mixed": 0.5}
    assert verdict(shares, 4)[0] == "ready"
    assert verdict({"share_all_fail": 0.9, "share_all_pass": 0.0, "share_mixed": 0.1}, 8)[0] == "sft_first"
    name, reason = verdict({"share_all_fail": 0.0, "share_all_pass": 0.85, "share_mixed": 0.15}, 8)
    assert name == "too_easy" and "85%" in reason


def test_paired_bootstrap_by_hand():
    assert paired_bootstrap_ci(np.full(50, 0.2)) == pytest.approx((0.2, 0.2))  # no spread, no uncertainty
    lo, hi = paired_bootstrap_ci(np.array([1.0, -1.0] * 100))  # mean 0, sd 1, n 200: se 0.0707, 95% +-0.139
    assert -0.17 < lo < -0.11 and 0.11 < hi < 0.17


def test_compare_groups_counts_wins_and_finds_flips():
    base = groups_from([[0, 0], [1, 1], [1, 0], [0, 0]])
    tuned = groups_from([[1, 1], [1, 1], [0, 0], [1, 0]])
    result = compare_groups(base, tuned, k=2)
    assert result["items"] == {"wins": 2, "losses": 1, "ties": 1}
    assert result["metrics"]["pass@1"]["delta"] == pytest.approx((1 + 0 - 0.5 + 0.5) / 4)
    assert [e["id"] for e in result["flipped"]["improved"]] == ["i0", "i3"]
    assert result["flipped"]["regressed"][0]["id"] == "i2"
    assert result["flipped"]["improved"][0]["tuned_answer"] == "a1"  # a passing tuned answer illustrates the win
    assert "| pass@1 |" in to_markdown(result)


@pytest.mark.slow
def test_baseline_says_ready_for_the_bundled_model(tmp_path):
    out = tmp_path / "baseline.json"
    proc = run_cli("eval", "baseline", "--data", str(EXAMPLES / "test.jsonl"), "-n", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["verdict"] == "ready" and "verdict: ready" in proc.stdout
    assert {"reason", "pass@1", "pass@k", "share_all_fail", "share_all_pass", "share_mixed"} <= result.keys()
    assert result["share_all_fail"] + result["share_all_pass"] + result["share_mixed"] == pytest.approx(1.0)


@pytest.mark.slow
def test_baseline_says_sft_first_for_a_randomly_initialised_copy(tmp_path):
    torch.manual_seed(0)
    random_copy = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(BUNDLED))
    random_copy.save_pretrained(tmp_path / "random")
    AutoTokenizer.from_pretrained(BUNDLED).save_pretrained(tmp_path / "random")
    out = tmp_path / "baseline.json"
    proc = run_cli("eval", "baseline", "--model", str(tmp_path / "random"), "--data", str(EXAMPLES / "val.jsonl"),
                   "-n", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["verdict"] == "sft_first" and result["pass@k"] == 0.0


@pytest.mark.slow
def test_compare_base_and_tuned_shows_a_significant_gain(grpo_run, tmp_path):
    out, md = tmp_path / "compare.json", tmp_path / "compare.md"
    proc = run_cli("eval", "compare", "--base", "bundled:tiny-arith", "--tuned", str(grpo_run / "final"),
                   "--data", str(EXAMPLES / "test.jsonl"), "-n", "8", "--out", str(out), "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    p1 = result["metrics"]["pass@1"]
    assert p1["delta"] > 0 and p1["ci95"][0] > 0, p1
    assert result["items"]["wins"] > result["items"]["losses"]
    assert result["flipped"]["improved"] and "95% CI" in md.read_text()


def test_eval_and_compare_agree_on_failed_gradings():
    """A failed grading (None) is a miss for pass@k and left out of the mean reward, in both; an item whose
    every grading failed is left out of reward_mean (it used to count as 0 in compare and be skipped in eval)."""
    from rftkit.metrics.passk import evaluate_groups
    from rftkit.types import Completion, Group, Item, Score

    def group(item_id, rewards):
        item = Item(id=item_id, messages=[{"role": "user", "content": "q"}])
        return Group(item=item, prompt_ids=[1], completions=[Completion("x", [1], [], "stop", score=Score(r) if r is not None else
                                                        Score.failed("boom")) for r in rewards])

    base = [group("a", [1.0, None, 0.0, 1.0]), group("b", [None, None, None, None]), group("c", [0.5, 0.5, 0.5, 0.5])]
    tuned = [group("a", [1.0, 1.0, 1.0, 1.0]), group("b", [1.0, 0.0, 1.0, 0.0]), group("c", [0.5, None, 0.5, 0.5])]
    result = compare_groups(base, tuned, k=2, n_boot=200)
    for side, groups in (("base", base), ("tuned", tuned)):
        alone = evaluate_groups(groups, k=2)
        for metric in ("pass@1", "pass@2", "reward_mean"):
            assert result["metrics"][metric][side] == pytest.approx(alone[metric]), (side, metric)
    assert evaluate_groups(base, k=2)["reward_mean"] == pytest.approx((2 / 3 + 0.5) / 2)  # b left out
    assert evaluate_groups(base, k=2)["grader_errors"] == 5

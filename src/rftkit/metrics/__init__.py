"""What a step, an evaluation and a report measure, in the metric names RFT users read (DESIGN.md).

- `rollout_metrics`: one step's rewards, lengths and grading counts (`critic/...`, `grader/...`);
- `reasoning_metrics`: thinking and answer lengths and tokens per correct answer (`response/...`);
- `passk`: pass@k and mean reward over graded groups (validation, `rft eval`);
- `health`: warnings read off the metric history (reward hacking, collapse, no signal, ...);
- `sample_records`: the rows of samples.jsonl.
Pure functions over Groups and metric rows: train/, eval/ and report/ all read them from here.
"""

from __future__ import annotations

import math
import statistics

from rftkit.metrics.passk import evaluate_groups, pass_at_k, passed
from rftkit.types import Group

__all__ = ["breakdown_means", "env_metrics", "evaluate_groups", "pass_at_k", "percentile", "reasoning_metrics",
           "rollout_metrics", "sample_records"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]


def rollout_metrics(groups: list[Group], grading) -> dict[str, float]:
    """Rewards, lengths, entropy and grading counts of every group a step generated.

    `grading` is the executor's GradingStats (errors, timeouts, latencies, injected faults).
    `actor/entropy` is the sampling distribution's mean per-token entropy over all these tokens.
    """
    rewards = [r for g in groups for r in g.rewards if r is not None]
    completions = [c for g in groups for c in g.completions]
    lengths = [c.model_tokens for c in completions]  # observations an environment inserted are not the model's
    zero_std = sum(len({r for r in g.rewards if r is not None}) <= 1 for g in groups)
    metered = [c for c in completions if not math.isnan(c.entropy)]
    return {
        "critic/rewards/mean": statistics.fmean(rewards) if rewards else float("nan"),
        "critic/rewards/min": min(rewards) if rewards else float("nan"),
        "critic/rewards/max": max(rewards) if rewards else float("nan"),
        "critic/rewards/std": statistics.pstdev(rewards) if len(rewards) > 1 else 0.0,
        "critic/frac_zero_std_groups": zero_std / len(groups),
        "actor/entropy": (sum(c.entropy for c in metered) / max(sum(len(c.token_ids) for c in metered), 1)
                          if metered else float("nan")),
        "response_length/mean": statistics.fmean(lengths),
        "response_length/max": max(lengths),
        "response/clipped_ratio": sum(c.finish_reason == "length" for c in completions) / len(completions),
        "grader/errors": grading.errors,
        "grader/error_rate": grading.errors / len(completions),
        "grader/timeouts": grading.timeouts,
        "grader/latency_p50": percentile(grading.latencies, 0.5),
        "grader/latency_p99": percentile(grading.latencies, 0.99),
        **{f"grader/injected_{kind}": n for kind, n in grading.injected.items()},
        **breakdown_means([c.score for c in completions]),
    }


def reasoning_metrics(groups: list[Group]) -> dict[str, float]:
    """`response/*` of reasoning models (reasoning.enabled): thinking and answer lengths, budget hits, tokens per correct.

    Lengths are in sampled tokens: the split found in the text is located in token space
    (rollout/thinking.py `thinking_tokens`: the tags count as thinking, the end-of-turn token as
    answer), so thinking + answer = `response_length` and nothing is re-tokenised. Completions
    not split (multi-turn episodes) count in `tokens_per_correct` only. `budget_hit_ratio`: the share
    of split completions whose thinking the engine closed at `reasoning.budget_tokens` (rollout/budget.py;
    the close tag it inserted counts as thinking, with loss mask 0).
    `tokens_per_correct`: all completion tokens / correct completions (metrics/passk.py `passed`; NaN when none).
    """
    completions = [c for g in groups for c in g.completions]
    split = [c for c in completions if c.thinking_tokens is not None]
    thinking = [c.thinking_tokens for c in split]
    answers = [max(len(c.token_ids) - c.thinking_tokens, 0) for c in split]
    cut = [c for c in split if c.trajectory is None and c.loss_mask is not None and 0 in c.loss_mask]
    correct = sum(passed(c.score) for c in completions)
    return {
        "response/thinking_length_mean": statistics.fmean(thinking) if thinking else float("nan"),
        "response/thinking_length_max": max(thinking) if thinking else float("nan"),
        "response/answer_length_mean": statistics.fmean(answers) if answers else float("nan"),
        "response/budget_hit_ratio": len(cut) / len(split) if split else float("nan"),
        "response/tokens_per_correct": sum(c.model_tokens for c in completions) / correct if correct else float("nan"),
    }


def env_metrics(groups: list[Group]) -> dict[str, float]:
    """`env/*` of multi-turn episodes (none for single answers): turns and tool calls per episode, and counts
    of failed tool calls, malformed ones and episodes cut by a limit (docs/AGENTS.md)."""
    episodes = [c.trajectory for g in groups for c in g.completions if c.trajectory is not None]
    if not episodes:
        return {}
    total = {key: sum(t.counts.get(key, 0) for t in episodes)
             for key in ("turns", "tool_calls", "tool_errors", "tool_call_errors", "truncated", "user_errors", "env_errors",
                         "agent_errors", "agent_resets")}
    return {"env/turns_mean": total["turns"] / len(episodes), "env/tool_calls_mean": total["tool_calls"] / len(episodes),
            "env/tool_errors": total["tool_errors"], "env/tool_call_errors": total["tool_call_errors"],
            "env/truncated": total["truncated"], "env/user_errors": total["user_errors"],
            "env/env_errors": total["env_errors"], "env/agent_errors": total["agent_errors"],
            "env/agent_resets": total["agent_resets"]}


def breakdown_means(scores, limit: int = 32) -> dict[str, float]:
    """`grader/sub/<name>`: the mean of each sub-reward and logged metric over the scored samples."""
    values: dict[str, list[float]] = {}
    for score in scores:
        if score is not None and score.reward is not None:
            for key, value in score.breakdown.items():
                if isinstance(value, (int, float)):
                    values.setdefault(key, []).append(float(value))
    return {f"grader/sub/{k}": statistics.fmean(v) for k, v in list(values.items())[:limit] if v}


def sample_records(step: int, groups: list[Group], advantages: list[list[float]] | None = None) -> list[dict]:
    """samples.jsonl rows: one per completion of `groups`, with its reward, advantage (0 if not trained on) and error."""
    rows = []
    for i, g in enumerate(groups):
        for j, c in enumerate(g.completions):
            advantage = advantages[i][j] if advantages is not None and i < len(advantages) else 0.0
            rows.append({
                "step": step, "item_id": g.item.id, "prompt": g.item.messages[-1]["content"],
                "reference_answer": g.item.reference_answer, "completion": c.text,
                "reward": c.score.reward if c.score else None, "advantage": round(advantage, 4),
                "error": c.score.error if c.score else None, "finish_reason": c.finish_reason,
            })
            if g.item.source is not None:  # a mixture's source (the report groups rollouts by it)
                rows[-1]["source"] = g.item.source
            if c.reasoning is not None:  # a reasoning model's split (reasoning.enabled): thinking and answer apart
                rows[-1]["reasoning"] = c.reasoning
                rows[-1]["answer"] = c.answer_text if c.answer_text is not None else c.text
            if c.trajectory is not None:  # the report shows it as a conversation
                rows[-1]["messages"] = c.trajectory.messages
                rows[-1]["turn_rewards"] = c.trajectory.turn_rewards
    return rows

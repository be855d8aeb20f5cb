"""`rft eval baseline`: will RFT work on this model and data? (Step 0 of the Nova RFT guide.)

Group-relative RL learns only from prompts whose n attempts disagree: a prompt where all
attempts fail gives no positive example, one where all succeed gives nothing to improve.
So the verdict rests on the shares of prompts that are all-fail, all-pass and mixed:

- `sft_first`: fewer than `min_any_success` of the prompts have any success at all;
- `too_easy`: more than `max_all_pass` of the prompts are already solved every time;
- `ready` otherwise.
"""

from __future__ import annotations

from rftkit.metrics.passk import evaluate_groups
from rftkit.types import Group

MIN_ANY_SUCCESS = 0.2
MAX_ALL_PASS = 0.8


def outcome_shares(groups: list[Group], pass_threshold: float = 1.0) -> dict[str, float]:
    all_fail = all_pass = 0
    for g in groups:
        passed = [r is not None and r >= pass_threshold - 1e-9 for r in g.rewards]
        all_fail += not any(passed)
        all_pass += all(passed)
    n = max(len(groups), 1)
    return {"share_all_fail": all_fail / n, "share_all_pass": all_pass / n, "share_mixed": (n - all_fail - all_pass) / n}


def verdict(shares: dict[str, float], k: int, min_any_success: float = MIN_ANY_SUCCESS,
            max_all_pass: float = MAX_ALL_PASS) -> tuple[str, str]:
    any_success = 1.0 - shares["share_all_fail"]
    mixed = f"{100 * shares['share_mixed']:.0f}% of prompts are mixed (the learning signal)"
    if any_success < min_any_success:
        return "sft_first", (f"only {100 * any_success:.0f}% of prompts have any success in {k} attempts "
                             f"(need {100 * min_any_success:.0f}%): RFT has almost nothing to reinforce; "
                             "teach the task and the answer format with SFT first")
    if shares["share_all_pass"] > max_all_pass:
        return "too_easy", (f"{100 * shares['share_all_pass']:.0f}% of prompts are solved in all {k} attempts "
                            f"(limit {100 * max_all_pass:.0f}%): little left to learn; use harder prompts")
    return "ready", (f"{100 * any_success:.0f}% of prompts have at least one success in {k} attempts and {mixed}: "
                     "ready for RFT")


def baseline_report(groups: list[Group], k: int, min_any_success: float = MIN_ANY_SUCCESS,
                    max_all_pass: float = MAX_ALL_PASS) -> dict:
    shares = outcome_shares(groups)
    name, reason = verdict(shares, k, min_any_success, max_all_pass)
    metrics = evaluate_groups(groups, k=k)
    return {"verdict": name, "reason": reason, "pass@1": metrics["pass@1"], "pass@k": metrics[f"pass@{k}"], "k": k,
            f"pass@{k}": metrics[f"pass@{k}"], "reward_mean": metrics["reward_mean"], "n_items": metrics["n_items"],
            **shares}

"""pass@k with the unbiased estimator of Chen et al. (2021), and mean reward.

For an item with n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance
that k samples drawn without replacement from the n contain a pass. Averaging it over
items is unbiased, unlike 1 - (1 - c/n)^k. pass@1 reduces to c / n.
"""

from __future__ import annotations

from math import comb

import numpy as np

from rftkit.types import Group


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k of the n samples passes, given c passed."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def passed(score, pass_threshold: float = 1.0) -> bool:
    """A pass: the grader's `correct` breakdown when it reports one, else reward >= pass_threshold."""
    if score is None or score.reward is None:
        return False
    if "correct" in score.breakdown:
        return score.breakdown["correct"] >= 1.0
    return score.reward >= pass_threshold - 1e-9


def per_item(groups: list[Group], k: int, pass_threshold: float = 1.0) -> dict[str, np.ndarray]:
    """Per-item pass@1, pass@k and mean reward, arrays of shape [items]: the one definition that both
    `evaluate_groups` and `rft eval compare` use. A failed grading (reward None) is a miss for
    pass@k and is left out of the item's mean reward; an item with no successful grading has a
    mean reward of NaN (left out of averages, not counted as 0). A grader whose breakdown says
    `correct` (answer_match, math, calibration) defines a pass by it, so a reward that also pays for
    something else (a calibration score, a format weight) does not move the pass line."""
    p1, pk, rm = [], [], []
    for g in groups:
        n = len(g.completions)
        c = sum(passed(comp.score, pass_threshold) for comp in g.completions)
        valid = [r for r in g.rewards if r is not None]
        p1.append(pass_at_k(n, c, 1))
        pk.append(pass_at_k(n, c, min(k, n)))
        rm.append(sum(valid) / len(valid) if valid else float("nan"))
    return {"pass@1": np.array(p1), f"pass@{k}": np.array(pk), "reward_mean": np.array(rm)}


def evaluate_groups(groups: list[Group], k: int, pass_threshold: float = 1.0) -> dict[str, float]:
    """pass@1, pass@k and mean reward averaged over items (`per_item`), and the count of failed gradings."""
    items = per_item(groups, k, pass_threshold)
    rewards = items["reward_mean"][~np.isnan(items["reward_mean"])]
    n_items = len(groups)
    return {
        "pass@1": float(items["pass@1"].mean()) if n_items else 0.0,
        f"pass@{k}": float(items[f"pass@{k}"].mean()) if n_items else 0.0,
        "reward_mean": float(rewards.mean()) if len(rewards) else 0.0,
        "n_items": n_items,
        "grader_errors": sum(r is None for g in groups for r in g.rewards),
    }

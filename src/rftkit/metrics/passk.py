"""pass@k with the unbiased estimator of Chen et al. (2021), and mean reward.

For an item with n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance
that k samples drawn without replacement from the n contain a pass. Averaging it over
items is unbiased, unlike 1 - (1 - c/n)^k. pass@1 reduces to c / n.
"""

from __future__ import annotations

from math import comb

from rftkit.types import Group


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k of the n samples passes, given c passed."""
    assert 0 <= c <= n and 1 <= k <= n, f"need 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})"
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def evaluate_groups(groups: list[Group], k: int, pass_threshold: float = 1.0) -> dict[str, float]:
    """pass@1, pass@k, mean reward over graded groups. A failed grading (None) counts as a miss
    for pass@k and is left out of reward_mean (and counted in `grader_errors`)."""
    passes, rewards, errors = [], [], 0
    for g in groups:
        n = len(g.completions)
        c = sum(r is not None and r >= pass_threshold - 1e-9 for r in g.rewards)
        passes.append((pass_at_k(n, c, 1), pass_at_k(n, c, min(k, n))))
        valid = [r for r in g.rewards if r is not None]
        rewards += valid
        errors += n - len(valid)
    n_items = len(groups)
    return {
        "pass@1": sum(p for p, _ in passes) / max(n_items, 1),
        f"pass@{k}": sum(p for _, p in passes) / max(n_items, 1),
        "reward_mean": sum(rewards) / max(len(rewards), 1),
        "n_items": n_items,
        "grader_errors": errors,
    }

"""`rft eval compare`: is the tuned model better than the base, and by how much, with error bars?

Both models answer the same items with the same sampling settings. Each metric's delta is
the mean over items of (tuned - base), with a 95% *paired* bootstrap interval: items are
resampled with replacement and the same items are used for both models, which removes
the between-item variance that an unpaired comparison would carry.
"""

from __future__ import annotations

import numpy as np

from rftkit.eval.run import token_cost
from rftkit.metrics.calibration import calibration_summary
from rftkit.metrics.passk import passed, per_item
from rftkit.types import Group


def paired_bootstrap_ci(deltas: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of `deltas` [items] under resampling of items."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(deltas), size=(n_boot, len(deltas)))  # [n_boot, items]
    means = deltas[idx].mean(axis=1)  # [n_boot]
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _answer(group: Group, want_pass: bool, pass_threshold: float = 1.0) -> str:
    """One completion of the group, preferring a passing (or failing) one to illustrate the flip."""
    for c in group.completions:
        if passed(c.score, pass_threshold) == want_pass:
            return c.text
    return group.completions[0].text


def compare_groups(base: list[Group], tuned: list[Group], k: int, n_boot: int = 2000, seed: int = 0,
                   n_examples: int = 3) -> dict:
    if [g.item.id for g in base] != [g.item.id for g in tuned]:
        raise ValueError("both models must answer the same items in order")
    b, t = per_item(base, k), per_item(tuned, k)
    metrics = {}
    for name in b:
        both = ~(np.isnan(b[name]) | np.isnan(t[name]))  # reward_mean: items graded on both sides
        deltas = t[name][both] - b[name][both]  # [items]
        if not len(deltas):
            continue
        lo, hi = paired_bootstrap_ci(deltas, n_boot, seed)
        metrics[name] = {"base": float(np.nanmean(b[name])), "tuned": float(np.nanmean(t[name])),
                         "delta": float(deltas.mean()), "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0)}
    d1 = t["pass@1"] - b["pass@1"]  # [items]
    order = np.argsort(d1, kind="stable")

    def example(i: int) -> dict:
        improved = d1[i] > 0
        return {"id": base[i].item.id, "prompt": base[i].item.messages[-1]["content"],
                "reference_answer": base[i].item.reference_answer, "base_pass@1": float(b["pass@1"][i]),
                "tuned_pass@1": float(t["pass@1"][i]), "base_answer": _answer(base[i], want_pass=not improved),
                "tuned_answer": _answer(tuned[i], want_pass=improved)}

    return {
        "n_items": len(base), "samples": k, "metrics": metrics, **side_by_side(base, tuned),
        "items": {"wins": int((d1 > 0).sum()), "losses": int((d1 < 0).sum()), "ties": int((d1 == 0).sum())},
        "flipped": {"improved": [example(i) for i in order[::-1][:n_examples] if d1[i] > 0],
                    "regressed": [example(i) for i in order[:n_examples] if d1[i] < 0]},
    }


def side_by_side(base: list[Group], tuned: list[Group]) -> dict:
    """What an answer costs (completion tokens per sample and per correct one) and, with a `calibration` grader,
    ECE, for both models: {"cost": {...}, "calibration": {...}} (the latter only when both stated confidences)."""
    cost = {"base": token_cost(base), "tuned": token_cost(tuned)}
    b, t = cost["base"]["tokens_per_correct"], cost["tuned"]["tokens_per_correct"]
    cost["tokens_per_correct_change"] = t / b - 1 if b == b and t == t and b else float("nan")  # NaN-safe ratio
    out = {"cost": cost}
    cal = [calibration_summary([c.score for g in groups for c in g.completions]) for groups in (base, tuned)]
    if all(cal):
        out["calibration"] = {"base": cal[0], "tuned": cal[1], "ece_ratio": cal[1]["ece"] / cal[0]["ece"]
                              if cal[0]["ece"] else float("nan")}
    return out


def to_markdown(result: dict, base_name: str = "base", tuned_name: str = "tuned") -> str:
    rows = [f"# {tuned_name} vs {base_name}", "",
            f"{result['n_items']} items, {result['samples']} samples each; 95% paired bootstrap intervals.", "",
            "| metric | base | tuned | delta | 95% CI |", "|---|---|---|---|---|"]
    for name, m in result["metrics"].items():
        mark = " *" if m["significant"] else ""
        rows.append(f"| {name} | {m['base']:.3f} | {m['tuned']:.3f} | {m['delta']:+.3f}{mark} | "
                    f"[{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}] |")
    if "cost" in result:
        c = result["cost"]
        rows.append(f"| tokens per correct answer | {c['base']['tokens_per_correct']:.1f} | "
                    f"{c['tuned']['tokens_per_correct']:.1f} | {100 * c['tokens_per_correct_change']:+.1f}% | |")
    if "calibration" in result:
        c = result["calibration"]
        rows.append(f"| ECE | {c['base']['ece']:.3f} | {c['tuned']['ece']:.3f} | x{c['ece_ratio']:.2f} | |")
    it = result["items"]
    rows += ["", f"Per item (pass@1): **{it['wins']} wins, {it['losses']} losses, {it['ties']} ties**.", ""]
    for title, key in (("Improved", "improved"), ("Regressed", "regressed")):
        rows.append(f"## {title}")
        for ex in result["flipped"][key] or []:
            rows += ["", f"- `{ex['id']}` {ex['prompt']} (reference `{ex['reference_answer']}`): pass@1 "
                     f"{ex['base_pass@1']:.2f} → {ex['tuned_pass@1']:.2f}",
                     f"  - base: `{ex['base_answer']}`", f"  - tuned: `{ex['tuned_answer']}`"]
        if not result["flipped"][key]:
            rows.append("\nnone")
        rows.append("")
    return "\n".join(rows)

"""Health warnings: the failure patterns RFT guides tell users to watch for, with what to do.

Each check is a pure function over the run's metric rows (metrics.jsonl) that returns a
warning or None; `CHECKS` is the table of them. They compare a recent window with an
early one rather than thresholding single steps, because per-step RL metrics are noisy.
`HealthMonitor` runs the table during training and reports each kind of warning once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 10  # steps per window: long enough to average out per-step noise


@dataclass(frozen=True)
class HealthWarning:
    code: str  # reward_hacking, length_explosion, length_collapse, entropy_collapse, no_signal, kl_blowup, grader_errors
    step: int  # the step at which it was detected
    message: str  # what was seen, with numbers
    advice: str  # what to do about it


def _series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    out = []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append((r["step"], float(v)))
    return out


def _mean(points: list[tuple[int, float]]) -> float:
    return sum(v for _, v in points) / len(points)


def _early_late(rows: list[dict], key: str, window: int = WINDOW):
    """(early mean, late mean, last step) once there are two disjoint windows, else None."""
    s = _series(rows, key)
    if len(s) < 2 * window:
        return None
    return _mean(s[:window]), _mean(s[-window:]), s[-1][0]


def reward_hacking(rows: list[dict]) -> HealthWarning | None:
    """Train reward still rising after validation reward peaked and fell."""
    val = _series(rows, "val/reward_mean")
    if len(val) < 3:
        return None
    best_step, best = max(val, key=lambda p: p[1])
    last_step, last = val[-1]
    if last_step == best_step or best - last < max(0.05, 0.1 * abs(best)):
        return None
    train = _series(rows, "critic/rewards/mean")
    at_best = [v for s, v in train if best_step - WINDOW < s <= best_step]
    recent = [v for s, v in train if last_step - WINDOW < s <= last_step]
    if not at_best or not recent or sum(recent) / len(recent) <= sum(at_best) / len(at_best):
        return None
    return HealthWarning(
        "reward_hacking", last_step,
        f"validation reward fell from {best:.3f} (step {best_step}) to {last:.3f} while training reward rose "
        f"from {sum(at_best) / len(at_best):.3f} to {sum(recent) / len(recent):.3f}",
        "possible reward hacking: read samples.jsonl for answers that score without being right, tighten the "
        "grader, and use the checkpoint near the validation peak",
    )


def length_change(rows: list[dict]) -> HealthWarning | None:
    found = _early_late(rows, "response_length/mean")
    clipped = _early_late(rows, "response/clipped_ratio")
    if found is None:
        return None
    early, late, step = found
    if late > 2 * early or (clipped and clipped[1] > 0.5 > clipped[0]):
        detail = f"mean response length grew from {early:.1f} to {late:.1f} tokens"
        if clipped:
            detail += f"; {100 * clipped[1]:.0f}% of answers now hit max_new_tokens"
        return HealthWarning("length_explosion", step, detail,
                             "add a length penalty or a format reward, lower the learning rate, or raise "
                             "rollout.max_new_tokens if long answers are legitimate")
    if late < 0.5 * early:
        return HealthWarning("length_collapse", step, f"mean response length fell from {early:.1f} to {late:.1f} tokens",
                             "the model may be answering without working: check samples.jsonl, reward the "
                             "reasoning format, or lower the learning rate")
    return None


def entropy_collapse(rows: list[dict]) -> HealthWarning | None:
    found = _early_late(rows, "actor/entropy")
    if found is None or found[0] <= 0:
        return None
    early, late, step = found
    if late < 0.2 * early:
        return HealthWarning("entropy_collapse", step,
                             f"token entropy fell from {early:.3f} to {late:.3f} ({100 * late / early:.0f}% of its start)",
                             "the policy is nearly deterministic and will stop exploring: lower the learning rate, "
                             "raise rollout.temperature, or add a KL penalty (algorithm.beta)")
    return None


def no_signal(rows: list[dict]) -> HealthWarning | None:
    s = _series(rows, "critic/frac_zero_std_groups")
    if len(s) < WINDOW:
        return None
    late = _mean(s[-WINDOW:])
    if late <= 0.5:
        return None
    rewards = _series(rows, "critic/rewards/mean")
    level = _mean(rewards[-WINDOW:]) if rewards else float("nan")
    hint = ("prompts are too hard: do SFT first or add easier prompts" if level < 0.5
            else "prompts are too easy: use harder prompts")
    return HealthWarning("no_signal", s[-1][0],
                         f"{100 * late:.0f}% of groups had identical rewards over the last {WINDOW} steps (no learning signal)",
                         f"{hint}, or raise rollout.num_generations or rollout.temperature")


def kl_blowup(rows: list[dict]) -> HealthWarning | None:
    s = _series(rows, "actor/kl")
    if len(s) < WINDOW:
        return None
    late = _mean(s[-WINDOW:])
    early = _mean(s[:WINDOW])
    if late > 0.5 or (late > 0.05 and late > 10 * max(early, 1e-6)):
        return HealthWarning("kl_blowup", s[-1][0], f"KL to the reference rose to {late:.3f} per token (from {early:.3f})",
                             "the policy is drifting far from the reference: lower the learning rate or raise algorithm.beta")
    return None


def grader_errors(rows: list[dict]) -> HealthWarning | None:
    s = _series(rows, "grader/error_rate")
    if not s:
        return None
    recent = s[-WINDOW:]
    rate = _mean(recent)
    if rate <= 0.05:
        return None
    return HealthWarning("grader_errors", s[-1][0],
                         f"{100 * rate:.1f}% of gradings failed over the last {len(recent)} steps (masked out of the loss)",
                         "see the `error` field in samples.jsonl; fix the grader, or raise grading.timeout_s if calls time out")


CHECKS: list[Callable[[list[dict]], HealthWarning | None]] = [
    reward_hacking, length_change, entropy_collapse, no_signal, kl_blowup, grader_errors,
]


def check_health(rows: list[dict]) -> list[HealthWarning]:
    """Every warning that holds for the run so far (at most one per check)."""
    return [w for check in CHECKS if (w := check(rows)) is not None]


class HealthMonitor:
    """Feeds rows to the checks during training and returns each kind of warning only once."""

    def __init__(self, rows: list[dict] | None = None):
        self.rows = list(rows or [])
        self.seen: set[str] = {w.code for w in check_health(self.rows)}

    def update(self, row: dict) -> list[HealthWarning]:
        self.rows.append(row)
        new = [w for w in check_health(self.rows) if w.code not in self.seen]
        self.seen.update(w.code for w in new)
        return new

"""GRPO: group-relative advantages and the clipped policy-gradient loss. Pure tensor maths.

How this differs from the GRPO paper (Shao et al., 2024), and why:
- Token-level aggregation: the loss is summed over every completion token of the step and
  divided by the step's total completion-token count (as in DAPO), not averaged per
  sequence first. Long answers are not down-weighted, and the same normaliser is used for
  every micro-batch so gradient accumulation equals one full-batch update exactly.
- KL to the reference is off by default (beta = 0, as in DAPO and Dr. GRPO) and, when on,
  uses the k3 estimator as a loss term, as the paper does.
- Failed gradings (reward None, given here as NaN) take no part: they are left out of their
  group's mean and std and get advantage 0 and loss weight 0.
- `group_mean` (Dr. GRPO) skips the division by the group std, which otherwise favours
  groups whose rewards barely differ; `rloo` uses a leave-one-out baseline;
  `batch_normalized` divides by one std over the whole batch.

DAPO pieces (Yu et al., 2025), each optional and each its own function:
- clip-higher: `clipped_policy_loss(..., epsilon_high=...)` clips the ratio to
  [1 - epsilon, 1 + epsilon_high], leaving room for unlikely tokens to grow.
- `overlong_penalty`: the soft overlong punishment, added to the task reward.
- `keep_informative_groups`: dynamic sampling's filter. DAPO then samples more prompts until
  the batch is full; here only the mask is computed, refilling is the loop's choice.
- mu > 1 updates per batch need nothing new: pass the log-probs stored at sampling time as
  `old_logp` and the ratio departs from 1 on the later passes.

KL to the reference, `KL_ESTIMATORS`: k1 = logp - ref_logp (unbiased, can be negative per
token) and k3 (always >= 0, lower variance). Either can be a loss term (`clipped_policy_loss`,
k3 by default as in the GRPO paper) or a reward penalty applied before advantages
(`kl_reward_penalty`, k1 by default as in PPO-RLHF and RLOO).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def _group_stats(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) std over the valid entries of each group. rewards: [G, N], NaN = failed."""
    valid = ~torch.isnan(rewards)  # [G, N]
    count = valid.sum(-1, keepdim=True).clamp(min=1)  # [G, 1]
    filled = torch.where(valid, rewards, torch.zeros_like(rewards))
    mean = filled.sum(-1, keepdim=True) / count  # [G, 1]
    var = (torch.where(valid, rewards - mean, torch.zeros_like(rewards)) ** 2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)
    return mean, var.sqrt(), valid


def group_mean_std(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantage: (r - mean_group) / (std_group + eps). [G, N] -> [G, N], 0 where failed."""
    mean, std, valid = _group_stats(rewards)
    return torch.where(valid, (rewards - mean) / (std + eps), torch.zeros_like(rewards))


def group_mean(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Dr. GRPO advantage: r - mean_group. [G, N] -> [G, N], 0 where failed."""
    mean, _, valid = _group_stats(rewards)
    return torch.where(valid, rewards - mean, torch.zeros_like(rewards))


def rloo(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """RLOO: r_i minus the mean of the *other* valid rewards of its group = n / (n - 1) * (r_i - mean).

    A group with fewer than two valid rewards has no baseline: advantage 0.
    """
    mean, _, valid = _group_stats(rewards)
    n = valid.sum(-1, keepdim=True).float()  # [G, 1]
    scale = torch.where(n > 1, n / (n - 1).clamp(min=1), torch.zeros_like(n))
    return torch.where(valid, scale * (rewards - mean), torch.zeros_like(rewards))


def batch_normalized(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Centre within each group, then divide by the std of those centred values over the whole batch
    (as in REINFORCE++): one scale for every group, so low-variance groups are not blown up.
    Not TRL's scale_rewards="batch", which divides by the std of the raw rewards instead."""
    centred = group_mean(rewards)
    valid = ~torch.isnan(rewards)
    values = centred[valid]
    std = values.std() if values.numel() > 1 else torch.tensor(0.0)
    return torch.where(valid, centred / (std + eps), torch.zeros_like(rewards))


ADVANTAGES = {"group_mean_std": group_mean_std, "group_mean": group_mean, "rloo": rloo, "batch_normalized": batch_normalized}


def turn_advantages(turn_rewards: list[torch.Tensor], gamma: float = 1.0, eps: float = 1e-4) -> list[torch.Tensor]:
    """Per-turn credit for one group of trajectories (`algorithm.credit: turn`).

    turn_rewards: one [T_i] tensor per trajectory, the reward of each of its assistant turns
    (NaN everywhere = a failed grading). Every turn reward of the group is normalised by the
    mean and std of all of them (as DeepSeekMath's process supervision), then each turn gets
    the discounted sum of the normalised rewards from it to the end:
    A_t = sum_{k >= t} gamma^(k - t) * r~_k. Returns one [T_i] tensor per trajectory; 0 for a
    failed one, and everywhere when the group's turn rewards are all equal.
    """
    valid = [r for r in turn_rewards if r.numel() and not torch.isnan(r).any()]
    values = torch.cat(valid) if valid else torch.zeros(0)
    if values.numel() < 2:
        return [torch.zeros_like(r) for r in turn_rewards]
    mean, std = values.mean(), values.std()
    out = []
    for r in turn_rewards:
        if not r.numel() or torch.isnan(r).any():
            out.append(torch.zeros_like(r))
            continue
        normalised = (r - mean) / (std + eps)
        to_go = torch.zeros_like(normalised)
        running = torch.zeros(())
        for t in range(len(r) - 1, -1, -1):
            running = normalised[t] + gamma * running
            to_go[t] = running
        out.append(to_go)
    return out


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimate of KL(policy || reference): logp - ref_logp. Unbiased on samples
    from the policy, but negative wherever the reference likes a token more."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref - logp. Always >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3}


def kl_reward_penalty(
    rewards: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k1,
) -> torch.Tensor:
    """KL as a reward penalty: rewards - beta * (per-token KL summed over each sequence's completion).

    rewards: [...] one per sequence ([B] or [G, N]); logp, ref_logp, mask: [..., T], the
    log-probs at sampling time. Apply before the advantages; a failed grading (NaN) stays NaN.
    Summed, not averaged: the penalty is the sequence's log-ratio, as in PPO-RLHF.
    """
    return rewards - beta * sequence_kl(logp, ref_logp, mask, kl_estimator)


def sequence_kl(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k1,
) -> torch.Tensor:
    """Per-token KL estimates summed over each sequence's masked tokens: [..., T] -> [...]."""
    return (kl_estimator(logp, ref_logp) * mask).sum(-1)


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache: int) -> torch.Tensor:
    """DAPO's soft overlong punishment, to add to the task reward. lengths: [...] completion tokens.

    0 while length <= max_len - cache, then linear down to -1 at max_len, -1 beyond:
    (max_len - cache - length) / cache clamped to [-1, 0]. cache = 0 is a hard step at max_len.
    """
    lengths = lengths.float()
    if cache <= 0:
        return torch.where(lengths > max_len, -1.0, 0.0)
    return ((max_len - cache - lengths) / cache).clamp(min=-1.0, max=0.0)


def keep_informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Dynamic sampling's filter: True for groups whose valid rewards are not all equal. [G, N] -> [G] bool.

    A group whose rewards are all equal (all right, all wrong) has advantage 0 everywhere and
    only dilutes the batch; fewer than two valid rewards means no spread either. Exact equality,
    as DAPO's 0 < accuracy < 1.
    """
    valid = ~torch.isnan(rewards)  # [G, N]
    high = torch.where(valid, rewards, torch.full_like(rewards, -torch.inf)).amax(-1)  # [G]
    low = torch.where(valid, rewards, torch.full_like(rewards, torch.inf)).amin(-1)  # [G]
    return (valid.sum(-1) >= 2) & (high > low)


@dataclass
class LossParts:
    loss: torch.Tensor  # scalar to backpropagate (already divided by the normaliser)
    pg_loss: torch.Tensor  # scalar, policy-gradient part only, detached
    kl: torch.Tensor  # summed per-token KL, detached (divide by token count for the mean)
    clipped: torch.Tensor  # number of tokens whose ratio was clipped, detached


@dataclass(frozen=True)
class StepCounts:
    """Whole-step sizes: every micro-batch divides by these, so their losses add up to the step's."""

    tokens: float  # completion tokens of the step's graded rows
    rows: float  # graded rows
    max_new_tokens: int


def token_mean(values: torch.Tensor, mask: torch.Tensor, counts: StepCounts) -> torch.Tensor:
    """Every completion token of the step weighs the same (DAPO). values, mask: [B, T]."""
    return (values * mask).sum() / counts.tokens


def sequence_mean(values: torch.Tensor, mask: torch.Tensor, counts: StepCounts) -> torch.Tensor:
    """Mean over each sequence's tokens, then over sequences (the GRPO paper): long answers weigh less."""
    return ((values * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / counts.rows


def constant_normalizer(values: torch.Tensor, mask: torch.Tensor, counts: StepCounts) -> torch.Tensor:
    """Sum over tokens / (rows * max_new_tokens) (Dr. GRPO): no length bias in either direction."""
    return (values * mask).sum() / (counts.rows * counts.max_new_tokens)


def truncated_is_weights(logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Per token min(pi_now / pi_behaviour, cap), no gradient: the off-policy correction of a completion
    sampled by an older policy version (asynchronous training). logp, behaviour_logp: [B, C]."""
    return torch.exp(logp.detach() - behaviour_logp).clamp(max=cap)


def mismatch_kl(logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed k1 estimate of KL(behaviour || now) over the masked tokens (sampled from the behaviour policy)."""
    return ((behaviour_logp - logp.detach()) * mask).sum()


AGGREGATIONS = {"token_mean": token_mean, "sequence_mean": sequence_mean, "constant": constant_normalizer}


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float,
    aggregate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    *,
    epsilon_high: float | None = None,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k3,
) -> LossParts:
    """PPO-style clipped surrogate with an optional KL term, aggregated over tokens.

    logp, old_logp, mask, ref_logp: [B, T]; advantages: [B], or [B, T] per token (per-turn credit). `mask` is 1 on completion
    tokens. `aggregate(values, mask)` is an AGGREGATIONS entry bound to the whole step's
    counts, so the micro-batch losses add up to the step's loss. With one update per batch
    (mu = 1) old_logp is logp detached: the ratio is 1 and the gradient is
    advantage * grad log p; with mu > 1 old_logp is what was stored at sampling time.
    The ratio is clipped to [1 - epsilon, 1 + epsilon_high] (DAPO's clip-higher);
    epsilon_high None means epsilon, the symmetric PPO clip.
    """
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logp - old_logp)  # [B, T]
    adv = advantages[:, None] if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + high) * adv
    per_token = -torch.min(unclipped, clipped)  # [B, T]
    pg = aggregate(per_token, mask)
    loss = pg
    kl_sum = torch.zeros(())
    if ref_logp is not None and beta > 0:
        kl = kl_estimator(logp, ref_logp)  # [B, T]
        loss = loss + beta * aggregate(kl, mask)
        kl_sum = (kl * mask).sum().detach()
    was_clipped = ((clipped < unclipped).float() * mask).sum().detach()
    return LossParts(loss=loss, pg_loss=pg.detach(), kl=kl_sum, clipped=was_clipped)

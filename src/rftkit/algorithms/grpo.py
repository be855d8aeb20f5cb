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
    (as in REINFORCE++): one scale for every group, so low-variance groups are not blown up."""
    centred = group_mean(rewards)
    valid = ~torch.isnan(rewards)
    values = centred[valid]
    std = values.std() if values.numel() > 1 else torch.tensor(0.0)
    return torch.where(valid, centred / (std + eps), torch.zeros_like(rewards))


ADVANTAGES = {"group_mean_std": group_mean_std, "group_mean": group_mean, "rloo": rloo, "batch_normalized": batch_normalized}


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref - logp. Always >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


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
) -> LossParts:
    """PPO-style clipped surrogate with optional k3 KL, aggregated over tokens.

    logp, old_logp, mask, ref_logp: [B, T]; advantages: [B]. `mask` is 1 on completion
    tokens. `aggregate(values, mask)` is an AGGREGATIONS entry bound to the whole step's
    counts, so the micro-batch losses add up to the step's loss. With one update per batch
    (mu = 1) old_logp is logp detached: the ratio is 1 and the gradient is
    advantage * grad log p.
    """
    ratio = torch.exp(logp - old_logp)  # [B, T]
    adv = advantages[:, None]  # [B, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv
    per_token = -torch.min(unclipped, clipped)  # [B, T]
    pg = aggregate(per_token, mask)
    loss = pg
    kl_sum = torch.zeros(())
    if ref_logp is not None and beta > 0:
        kl = kl_k3(logp, ref_logp)  # [B, T]
        loss = loss + beta * aggregate(kl, mask)
        kl_sum = (kl * mask).sum().detach()
    was_clipped = ((clipped < unclipped).float() * mask).sum().detach()
    return LossParts(loss=loss, pg_loss=pg.detach(), kl=kl_sum, clipped=was_clipped)

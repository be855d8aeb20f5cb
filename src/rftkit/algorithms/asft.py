"""A-SFT: advantage-weighted SFT on logged (prompt, response, reward) rows. Pure tensor maths.

Offline: nothing is generated. Each logged response is imitated with a weight that grows
with how much better than its baseline it scored, as in advantage-weighted regression (AWR,
Peng et al., 2019) and Netflix's A-SFT for generative recommenders:

    advantage = (reward - baseline) / (std of those differences over the batch + eps)
    weight    = min(exp(advantage / temperature), max_weight)
    loss      = sum over answer tokens of -weight * log p(token) / answer tokens

Choices, and why:
- Baseline (`BASELINES`): `prompt_mean` compares answers to the same prompt, so a prompt that
  is easy for everyone does not dominate; `global_mean` is the only choice when prompts were
  logged once each. A prompt logged once has advantage 0 under `prompt_mean` (weight 1).
- Dividing by the batch std makes `temperature` mean the same whatever the reward's scale.
- The exponential never gives negative weights (bad answers are imitated less, never pushed
  down, which keeps this stable on noisy rewards); `max_weight` stops one lucky row from
  dominating a batch.
- `WEIGHT_NORMALIZATIONS["mean_one"]` rescales the (clipped) weights to mean 1 over the
  batch, so the loss has plain SFT's scale and its learning rate carries over; the weights
  then only redistribute attention between rows. After it a weight may exceed max_weight.
- Failed gradings (reward None, given here as NaN) are left out of baselines and std and get
  weight 0.
"""

from __future__ import annotations

import torch

from rftkit.algorithms.sft import sft_loss


def prompt_groups(prompts: list) -> torch.Tensor:
    """Index of each row's prompt (equal prompts share an index, first seen = 0). [N] long."""
    index: dict = {}
    return torch.tensor([index.setdefault(p, len(index)) for p in prompts], dtype=torch.long)


def prompt_mean(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean valid reward of each row's prompt. rewards: [N] (NaN = failed), groups: [N] -> [N]."""
    valid = ~torch.isnan(rewards)
    filled = torch.where(valid, rewards, torch.zeros_like(rewards))
    n = int(groups.max()) + 1 if groups.numel() else 0
    sums = torch.zeros(n, dtype=rewards.dtype).index_add_(0, groups, filled)  # [P]
    counts = torch.zeros(n, dtype=rewards.dtype).index_add_(0, groups, valid.to(rewards.dtype))  # [P]
    return (sums / counts.clamp(min=1))[groups]


def global_mean(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean valid reward of the whole batch, for every row. [N] -> [N]."""
    valid = ~torch.isnan(rewards)
    mean = rewards[valid].mean() if valid.any() else torch.zeros((), dtype=rewards.dtype)
    return mean.expand_as(rewards)


BASELINES = {"prompt_mean": prompt_mean, "global_mean": global_mean}


def no_normalization(weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return weights


def mean_one(weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Weights / their mean over the valid rows: mean 1 over the batch, plain SFT's loss scale."""
    return weights / weights[valid].mean() if valid.any() else weights


WEIGHT_NORMALIZATIONS = {"none": no_normalization, "mean_one": mean_one}


def asft_weights(
    rewards: torch.Tensor,
    groups: torch.Tensor,
    baseline: str = "prompt_mean",
    temperature: float = 1.0,
    max_weight: float = 20.0,
    normalization: str = "none",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-row A-SFT weights. rewards: [N] (NaN = failed), groups: [N] prompt index -> [N], 0 where failed.

    The std is the unbiased std of the valid rows' (reward - baseline); with fewer than two
    valid rows it is 0 and the eps alone divides.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown A-SFT baseline {baseline!r}; choose one of {sorted(BASELINES)}")
    if normalization not in WEIGHT_NORMALIZATIONS:
        raise ValueError(
        f"unknown A-SFT weight normalization {normalization!r}; choose one of {sorted(WEIGHT_NORMALIZATIONS)}"
    )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    valid = ~torch.isnan(rewards)  # [N]
    centred = torch.where(valid, rewards - BASELINES[baseline](rewards, groups), torch.zeros_like(rewards))  # [N]
    std = centred[valid].std() if valid.sum() > 1 else torch.zeros((), dtype=rewards.dtype)
    weights = torch.exp(centred / (std + eps) / temperature).clamp(max=max_weight)
    weights = torch.where(valid, weights, torch.zeros_like(weights))
    return WEIGHT_NORMALIZATIONS[normalization](weights, valid)


def asft_loss(logprobs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, num_tokens: float | None = None) -> torch.Tensor:
    """Weighted token-mean NLL: -sum(w_b * logp * mask) / num_tokens. logprobs, mask: [B, T]; weights: [B].

    num_tokens defaults to this batch's answer tokens (then weights of 1 give `sft_loss`);
    pass the whole step's count so that micro-batch losses add up to the step's.
    """
    return sft_loss(logprobs, mask * weights[:, None], mask.sum().clamp(min=1.0) if num_tokens is None else num_tokens)

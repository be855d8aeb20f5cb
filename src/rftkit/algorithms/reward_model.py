"""Reward-model training loss: Bradley-Terry on (chosen, rejected) pairs. Pure tensor maths.

P(chosen preferred) = sigmoid(r_chosen - r_rejected); the loss is its mean negative log.
An optional per-pair margin (as in Llama 2's reward models, and TRL's `margin` column) asks
for a larger gap on pairs whose preference is stronger. Only the score difference is pinned
down by this loss, so the rewards' offset drifts freely; centre them before use if needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected - margin). r_chosen, r_rejected, margin: [B]."""
    diff = r_chosen - r_rejected  # [B]
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def preference_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs the reward model orders correctly; a tie counts as wrong. [B] -> scalar."""
    return (r_chosen > r_rejected).float().mean()

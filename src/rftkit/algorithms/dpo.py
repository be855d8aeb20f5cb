"""DPO: preference optimisation from (prompt, chosen, rejected) pairs against a frozen reference. Pure tensor maths.

The implicit reward of an answer is beta * (log pi(y|x) - log pi_ref(y|x)); every loss in
`LOSSES` is a function of the chosen-minus-rejected difference of those log-ratios,
h = (chosen - ref_chosen) - (rejected - ref_rejected), averaged over the pairs of the batch.

- `sigmoid` (Rafailov et al., 2023): -log sigmoid(beta * h). With label_smoothing = e > 0 it is
  conservative DPO (cDPO, Mitchell 2023): -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h),
  the expected loss when each label is flipped with probability e. (TRL 1.x's "sigmoid"
  ignores label_smoothing; its "aot" loss on a single pair is this cDPO formula.)
- `ipo` (Azar et al., 2023): (h - 1 / (2 beta))^2, beta being the paper's tau. Its log-probs
  are per-token *averages* over the answer, not sums, as TRL does (checked with the IPO
  authors, per TRL's comments): a squared loss on summed log-probs grows with answer length.
  `sequence_logps(..., average=LOSSES[name].average_logps)` gives each loss the log-probs it
  expects. Label smoothing has no meaning for IPO and is refused.

The rewards returned are beta times the log-ratios the loss was given, so for IPO they are
per-token (TRL's logged rewards/chosen for IPO are beta times the *summed* log-ratios).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """log pi(answer | prompt): answer-token log-probs summed (or averaged) over `mask`. [B, T] -> [B]."""
    total = (token_logps * mask).sum(-1)  # [B]
    return total / mask.sum(-1).clamp(min=1) if average else total


def sigmoid_loss(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """-(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h); e = 0 is plain DPO. [B] -> [B]."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """(h - 1 / (2 beta))^2: pushes the log-ratio gap to exactly 1 / (2 beta) rather than to infinity. [B] -> [B]."""
    if label_smoothing != 0.0:
        raise ValueError(f"label_smoothing applies to the sigmoid loss only; set it to 0 for ipo (got {label_smoothing})")
    return (h - 1 / (2 * beta)) ** 2


@dataclass(frozen=True)
class DPOLoss:
    fn: Callable[[torch.Tensor, float, float], torch.Tensor]  # (h [B], beta, label_smoothing) -> per-pair loss [B]
    average_logps: bool  # the loss expects per-token average log-probs (see sequence_logps)


LOSSES = {"sigmoid": DPOLoss(sigmoid_loss, average_logps=False), "ipo": DPOLoss(ipo_loss, average_logps=True)}


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean DPO loss over the pairs, and the detached implicit rewards of chosen and rejected answers.

    All inputs: [B] sequence log-probs from `sequence_logps` (averaged for losses whose
    `average_logps` is set). Returns (loss scalar, chosen_rewards [B], rejected_rewards [B]).
    """
    if loss_type not in LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {sorted(LOSSES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (got {beta})")
    chosen = policy_chosen_logps - ref_chosen_logps  # [B]
    rejected = policy_rejected_logps - ref_rejected_logps  # [B]
    loss = LOSSES[loss_type].fn(chosen - rejected, beta, label_smoothing).mean()
    return loss, beta * chosen.detach(), beta * rejected.detach()

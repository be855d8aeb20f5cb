"""KTO: Kahneman-Tversky optimisation from unpaired desirable / undesirable answers. Pure tensor maths.

Ethayarajh et al. (2024), as TRL 1.16's KTOTrainer (loss_type="kto") computes it. With the
implicit log-ratio r(x, y) = log pi(y|x) - log pi_ref(y|x) of an answer (log-probs summed over
its tokens) and the reference point

    z0 = max(0, mean_j [log pi(y'_j | x_j) - log pi_ref(y'_j | x_j)])      detached

estimated from *mismatched* pairs (x_j, y'_j) (a prompt with another example's answer), each
example's loss is

    desirable   (label true):   lambda_D * (1 - sigmoid(beta * (r - z0)))
    undesirable (label false):  lambda_U * (1 - sigmoid(beta * (z0 - r)))

and the batch loss is their plain mean over all examples (TRL's `nanmean` of the concatenated
weighted losses: the weights scale terms, they do not renormalise the mean). The paper writes
the per-example loss as lambda_y - v(x, y) with v = lambda_D sigmoid(beta (r - z0)) (or
lambda_U sigmoid(beta (z0 - r))), which is exactly the above.

As the paper (section 4) and TRL: z0 is estimated within the batch from mismatched pairs, not
from samples of the policy, clamped at 0, and no gradient flows through it (it only sets where
the sigmoid saturates). Where we differ from the paper:
- the implicit rewards returned are beta * r, not beta * (r - z0) (TRL's logged
  rewards/chosen|rejected);
- the paper's advice lambda_D n_D / (lambda_U n_U) in [1, 4/3] is not enforced (TRL only
  warns about it).

`kl_partners` builds the mismatched pairs TRL builds: completions rotated by one within
consecutive blocks, (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KTOLoss:
    loss: torch.Tensor  # scalar, the mean of the weighted per-example losses
    desirable_losses: torch.Tensor  # [D] weighted, with grad
    undesirable_losses: torch.Tensor  # [U] weighted, with grad
    rewards_desirable: torch.Tensor  # [D] beta * r, detached
    rewards_undesirable: torch.Tensor  # [U] beta * r, detached
    kl: torch.Tensor  # scalar z0, detached


def kl_partners(n: int, block: int) -> list[int]:
    """For each of `n` examples, the index of the example whose completion its KL pair borrows.

    Rotation by one within consecutive blocks of `block` (TRL's batches): e.g. n = 5, block = 3
    gives [2, 0, 1, 4, 3]. A last block of one example would pair it with itself, so it joins
    the block before it. n = 1 has no mismatched pair and is refused.
    """
    if n < 2 or block < 2:
        raise ValueError(f"the KL pairs need at least 2 examples per block (got n={n}, block={block})")
    starts = list(range(0, n, block))
    if n - starts[-1] == 1:
        starts.pop()
    partners = []
    for start, end in zip(starts, [*starts[1:], n]):
        partners += [end - 1, *range(start, end - 1)]
    return partners


def kl_baseline(policy_kl_logps: torch.Tensor, reference_kl_logps: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean(log pi - log pi_ref)) over the mismatched pairs, detached. [K], [K] -> scalar."""
    return (policy_kl_logps - reference_kl_logps).mean().detach().clamp(min=0)


def kto_loss(
    policy_desirable_logps: torch.Tensor,
    policy_undesirable_logps: torch.Tensor,
    reference_desirable_logps: torch.Tensor,
    reference_undesirable_logps: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KTOLoss:
    """The KTO loss of D desirable and U undesirable examples against the reference point `kl` (from kl_baseline).

    Inputs: [D] and [U] summed sequence log-probs (`dpo.sequence_logps`); either side may be
    empty, not both.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (got {beta})")
    if not (desirable_weight > 0 and undesirable_weight > 0):
        raise ValueError(f"desirable_weight and undesirable_weight must be > 0 (got {desirable_weight}, {undesirable_weight})")
    n = policy_desirable_logps.numel() + policy_undesirable_logps.numel()
    if n == 0:
        raise ValueError("kto_loss needs at least one example")
    desirable = policy_desirable_logps - reference_desirable_logps  # [D]
    undesirable = policy_undesirable_logps - reference_undesirable_logps  # [U]
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (desirable - kl)))  # [D]
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - undesirable)))  # [U]
    loss = (desirable_losses.sum() + undesirable_losses.sum()) / n
    return KTOLoss(loss, desirable_losses, undesirable_losses, beta * desirable.detach(), beta * undesirable.detach(), kl)


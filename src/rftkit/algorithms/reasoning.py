"""Token efficiency for reasoning models: among correct answers, shorter thinking earns more (reasoning.efficiency).

Two shapings of a step's rewards [G, N], given each completion's thinking length in tokens:

- `linear`: every reward is scaled by 1 - alpha * min(T / B, 1), T its thinking tokens and B the
  budget (`reasoning.budget_tokens`, else `rollout.max_new_tokens`). A wrong answer (reward 0)
  stays 0, so the model is never paid for thinking less *instead of* being right; a correct one
  that thinks the whole budget keeps 1 - alpha. Simple and absolute, but it also pushes down
  thinking that was needed: with a large alpha the model trades accuracy for brevity on hard
  prompts (the reward for a correct long answer can fall below the spread among correct short
  ones).
- `rank`: within each group, the correct answers (reward >= `correct`) are ranked by thinking
  length; the shortest keeps its reward and the longest loses alpha, linearly in between (ties
  share their mean rank). Wrong answers and groups with fewer than two correct answers are
  unchanged. Relative, so it never asks for less thinking than the prompt's shortest correct
  answer used, and it is scale-free (no budget); but it keeps pressing even when every answer is
  already short.

NaN rewards (failed gradings) stay NaN.
"""

from __future__ import annotations

import torch


def linear_efficiency(rewards: torch.Tensor, thinking: torch.Tensor, budget: int, alpha: float) -> torch.Tensor:
    """rewards, thinking [G, N] -> rewards * (1 - alpha * min(thinking / budget, 1))."""
    return rewards * (1 - alpha * (thinking.float() / budget).clamp(max=1.0))


def rank_efficiency(rewards: torch.Tensor, thinking: torch.Tensor, alpha: float, correct: float = 1.0) -> torch.Tensor:
    """rewards [G, N] minus alpha * (the thinking length's rank among the group's correct answers, in [0, 1])."""
    out = rewards.clone()
    for g in range(rewards.shape[0]):
        right = (rewards[g] >= correct).nonzero().squeeze(1)  # NaN compares False: failed gradings are left alone
        if len(right) < 2:
            continue
        lengths = thinking[g, right].float()
        below = (lengths[None, :] < lengths[:, None]).sum(1).float()  # answers strictly shorter
        ties = (lengths[None, :] == lengths[:, None]).sum(1).float()
        rank = below + (ties - 1) / 2  # 0 for the shortest; ties share their mean rank
        out[g, right] = rewards[g, right] - alpha * rank / (len(right) - 1)
    return out


EFFICIENCY = {"linear": linear_efficiency, "rank": rank_efficiency}

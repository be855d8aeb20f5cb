"""One GRPO policy update from graded, advantage-carrying groups (the plumbing around grpo.py).

With one update per batch (mu = 1) the "old" log-probs are the current ones detached, so
no separate old-policy forward pass is made. Rows whose advantage is exactly 0 (every row
of a group with no reward spread, and failed gradings) contribute exactly zero gradient
when beta = 0, so they are not forwarded at all; their tokens still count in the
normaliser, which keeps the update identical to processing every row. The policy's
entropy is measured while sampling (rollout/hf.py), so no second softmax runs here.

Log-probs are those of the distribution sampled from: logits / temperature, as the
sampler draws them (at temperature 1 the division is exact and changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rftkit.algorithms.common import pack_prompt_completion, token_logprobs
from rftkit.algorithms.grpo import AGGREGATIONS, StepCounts, clipped_policy_loss
from rftkit.types import Group


@dataclass
class Row:
    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float


def rows_for_update(groups: list[Group]) -> tuple[list[Row], int]:
    """Rows that take part in the loss (graded, non-empty) and their completion-token count."""
    rows = [
        Row(g.prompt_ids, c.token_ids, c.advantage)
        for g in groups
        for c in g.completions
        if c.score is not None and c.score.reward is not None and c.token_ids
    ]
    return rows, sum(len(r.completion_ids) for r in rows)


def grpo_update(
    policy,
    groups: list[Group],
    pad_id: int,
    micro_batch_size: int,
    epsilon: float,
    beta: float = 0.0,
    reference_logprobs=None,
    aggregation: str = "token_mean",
    max_new_tokens: int = 0,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Accumulate gradients of the step's GRPO loss into `policy` (no optimizer step).

    `reference_logprobs(input_ids, attention_mask) -> [B, T-1]` is needed when beta > 0.
    Returns sums for the step's metrics.
    """
    rows, n_tokens = rows_for_update(groups)
    counts = StepCounts(tokens=float(max(n_tokens, 1)), rows=float(max(len(rows), 1)), max_new_tokens=max(max_new_tokens, 1))
    aggregate = lambda values, mask: AGGREGATIONS[aggregation](values, mask, counts)  # noqa: E731
    active = [r for r in rows if beta > 0 or r.advantage != 0.0]
    # Similar lengths side by side waste less compute on padding; sorting is stable, so the
    # order (and the floating-point sum) is the same on every run.
    active.sort(key=lambda r: len(r.prompt_ids) + len(r.completion_ids))
    device = next(policy.parameters()).device
    sums = {"pg_loss": 0.0, "kl": 0.0, "clipped": 0.0, "rows": len(active)}
    for start in range(0, len(active), micro_batch_size):
        chunk = active[start : start + micro_batch_size]
        input_ids, attention, mask = pack_prompt_completion([r.prompt_ids for r in chunk], [r.completion_ids for r in chunk], pad_id)
        input_ids, attention, mask = input_ids.to(device), attention.to(device), mask.to(device)  # [B, T], [B, T], [B, T-1]
        logits = policy(input_ids=input_ids, attention_mask=attention).logits  # [B, T, V]
        if temperature != 1.0:
            logits = logits / temperature
        logp = token_logprobs(logits, input_ids)  # [B, T-1]
        ref = None
        if beta > 0:
            with torch.no_grad():
                ref = reference_logprobs(input_ids, attention)
        advantages = torch.tensor([r.advantage for r in chunk], device=device, dtype=logp.dtype)  # [B]
        parts = clipped_policy_loss(logp, logp.detach(), advantages, mask, epsilon, aggregate, ref, beta)
        parts.loss.backward()
        sums["pg_loss"] += parts.pg_loss.item()
        sums["kl"] += parts.kl.item()
        sums["clipped"] += parts.clipped.item()
    sums["tokens"] = float(n_tokens)
    return sums

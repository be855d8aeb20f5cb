"""One GRPO policy update from graded, advantage-carrying groups (the plumbing around grpo.py).

With one update per batch (mu = 1) the "old" log-probs are the current ones detached, so
no separate old-policy forward pass is made. Rows whose advantage is exactly 0 (every row
of a group with no reward spread, and failed gradings) contribute exactly zero gradient
when beta = 0, so they are not forwarded at all; their tokens still count in the
normaliser, which keeps the update identical to processing every row. The policy's
entropy is measured while sampling (rollout/hf.py), so no second softmax runs here.

Log-probs are those of the distribution sampled from: logits / temperature, as the
sampler draws them (at temperature 1 the division is exact and changes nothing). For
Llama-layout models they come from the shared-prefix forward (algorithms/shared_prefix.py):
each distinct prompt forwarded once, no padding in the matmuls, the same values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rftkit.algorithms.common import pack_prompt_completion, token_logprobs
from rftkit.algorithms.grpo import AGGREGATIONS, KL_ESTIMATORS, StepCounts, clipped_policy_loss
from rftkit.algorithms.shared_prefix import completion_logprobs as shared_logprobs
from rftkit.algorithms.shared_prefix import usable
from rftkit.types import Completion, Group


@dataclass
class Row:
    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    old_logp: torch.Tensor | None = None  # [len(completion_ids)], log-probs before this batch's first update (mu > 1)


def rows_for_update(groups: list[Group]) -> tuple[list[Row], int]:
    """Rows that take part in the loss (graded, non-empty) and their completion-token count."""
    rows = [
        Row(g.prompt_ids, c.token_ids, c.advantage, c.old_logp)
        for g in groups
        for c in g.completions
        if graded(c)
    ]
    return rows, sum(len(r.completion_ids) for r in rows)


def graded(c: Completion) -> bool:
    return c.score is not None and c.score.reward is not None and bool(c.token_ids)


@torch.no_grad()
def completion_logprobs(
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pairs: list[tuple[list[int], list[int]]],
    pad_id: int,
    micro_batch_size: int,
    temperature: float = 1.0,
    device: str | torch.device = "cpu",
    model=None,
) -> list[torch.Tensor]:
    """Per-token log-probs of each (prompt, completion) pair's completion: a [len(completion)] tensor each.

    `logits_fn(input_ids, attention_mask) -> logits` is the policy or the reference. Used for
    the old-policy log-probs of mu > 1 and the reference log-probs of a KL reward penalty.
    `model`, when given and the shared-prefix forward handles it, is forwarded that way
    instead (the same values, as grpo_update computes them).
    """
    shared = model is not None and usable(model)
    out: list[torch.Tensor] = []
    for start in range(0, len(pairs), micro_batch_size):
        chunk = pairs[start : start + micro_batch_size]
        prompts, completions = [p for p, _ in chunk], [c for _, c in chunk]
        if shared:
            logp, mask = shared_logprobs(model, prompts, completions, temperature)  # [B, C]
        else:
            input_ids, attention, mask = pack_prompt_completion(prompts, completions, pad_id)
            input_ids, attention = input_ids.to(device), attention.to(device)
            logits = logits_fn(input_ids, attention)
            logp = token_logprobs(logits / temperature if temperature != 1.0 else logits, input_ids)  # [B, T-1]
        out += [row[m.bool()].cpu() for row, m in zip(logp, mask.to(logp.device))]
    return out


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
    epsilon_high: float | None = None,
    kl_estimator: str = "k3",
    shared_prefix: bool = True,
) -> dict[str, float]:
    """Accumulate gradients of the step's GRPO loss into `policy` (no optimizer step).

    `reference_logprobs(input_ids, attention_mask) -> [B, T-1]` is needed when beta > 0
    (beta here is the KL *loss* coefficient; a KL reward penalty is applied before advantages).
    Rows carrying `old_logp` (mu > 1) get importance ratios against it; the others use their
    current log-probs detached (ratio 1). `shared_prefix` uses the shared-prefix forward
    (algorithms/shared_prefix.py) where the model allows it: same loss, about half the matmul
    work on a GRPO batch. Returns sums for the step's metrics.
    """
    rows, n_tokens = rows_for_update(groups)
    counts = StepCounts(tokens=float(max(n_tokens, 1)), rows=float(max(len(rows), 1)), max_new_tokens=max(max_new_tokens, 1))
    aggregate = lambda values, mask: AGGREGATIONS[aggregation](values, mask, counts)  # noqa: E731
    active = [r for r in rows if beta > 0 or r.advantage != 0.0]
    shared = shared_prefix and usable(policy)
    if not shared:
        # Similar lengths side by side waste less compute on padding; sorting is stable, so the
        # order (and the floating-point sum) is the same on every run. The shared-prefix forward
        # pads nothing in its matmuls and wants a group's rows together, so it keeps group order.
        active.sort(key=lambda r: len(r.prompt_ids) + len(r.completion_ids))
    device = next(policy.parameters()).device
    sums = {"pg_loss": 0.0, "kl": 0.0, "clipped": 0.0, "rows": len(active)}
    for start in range(0, len(active), micro_batch_size):
        chunk = active[start : start + micro_batch_size]
        prompts, completions = [r.prompt_ids for r in chunk], [r.completion_ids for r in chunk]
        if shared:
            logp, mask = shared_logprobs(policy, prompts, completions, temperature)  # [B, C], [B, C]
        else:
            input_ids, attention, mask = (t.to(device) for t in pack_prompt_completion(prompts, completions, pad_id))
            logits = policy(input_ids=input_ids, attention_mask=attention, use_cache=False).logits  # [B, T, V]
            logp = token_logprobs(logits / temperature if temperature != 1.0 else logits, input_ids)  # [B, T-1]
        ref = None
        if beta > 0:
            input_ids, attention, full_mask = (t.to(device) for t in pack_prompt_completion(prompts, completions, pad_id))
            with torch.no_grad():
                ref = reference_logprobs(input_ids, attention)  # [B, T-1]
            if shared:  # the same tokens' values, in the shared forward's [B, C] layout
                ref = logp.new_zeros(logp.shape).masked_scatter(mask.bool(), ref[full_mask.bool()])
        advantages = torch.tensor([r.advantage for r in chunk], device=device, dtype=logp.dtype)  # [B]
        old = logp.detach()
        if chunk[0].old_logp is not None:  # completion targets are contiguous per row, so row order = mask order
            old = old.clone()
            old[mask.bool()] = torch.cat([r.old_logp for r in chunk]).to(device, old.dtype)
        parts = clipped_policy_loss(logp, old, advantages, mask, epsilon, aggregate, ref, beta,
                                    epsilon_high=epsilon_high, kl_estimator=KL_ESTIMATORS[kl_estimator])
        parts.loss.backward()
        sums["pg_loss"] += parts.pg_loss.item()
        sums["kl"] += parts.kl.item()
        sums["clipped"] += parts.clipped.item()
    sums["tokens"] = float(n_tokens)
    return sums

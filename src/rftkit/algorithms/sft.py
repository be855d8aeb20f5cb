"""Supervised fine-tuning: next-token cross-entropy on answer tokens only.

Used to build the bundled tiny model and as a stage of its own. Prompt and padding tokens
never contribute; the mean is over answer tokens of the whole batch (token-level), so long
answers weigh in proportion to their length, as in ordinary language-model training.
"""

from __future__ import annotations

import torch

from rftkit.algorithms.common import pack_prompt_completion, token_logprobs


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over masked tokens. logprobs, mask: [B, T]."""
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1.0)


def sft_step_loss(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int) -> torch.Tensor:
    """Forward one batch of (prompt, answer) pairs and return the SFT loss (not yet backpropagated)."""
    device = next(model.parameters()).device
    input_ids, attention, mask = pack_prompt_completion(prompts, answers, pad_id)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits  # [B, T, V]
    return sft_loss(token_logprobs(logits, input_ids.to(device)), mask.to(device))

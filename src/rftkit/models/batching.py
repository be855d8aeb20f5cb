"""Batching token sequences for a causal LM and reading per-token log-probs off its logits.

Used by the padded forward (models/packed.py), the offline stages and the reward model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_right(seqs: list[list[int]], pad: int) -> torch.Tensor:
    """[B, T] tensor of `seqs` right-padded with `pad`."""
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)


def pack_prompt_completion(prompts: list[list[int]], completions: list[list[int]], pad: int):
    """Concatenate prompt and completion ids, right-padded.

    Returns input_ids [B, T], attention_mask [B, T] and completion_mask [B, T-1]: the last
    marks which *next-token targets* (positions 1..T-1) are completion tokens, i.e. the
    tokens whose log-probs enter the loss. Prompt and padding targets are 0.
    """
    seqs = [p + c for p, c in zip(prompts, completions)]
    input_ids = pad_right(seqs, pad)  # [B, T]
    attention = pad_right([[1] * len(s) for s in seqs], 0)  # [B, T]
    target_mask = pad_right([[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions)], 0)  # [B, T]
    return input_ids, attention, target_mask[:, 1:].float()


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | prefix) for every position: [B, T-1] from logits [B, T, V].

    cross_entropy avoids materialising a second [B, T, V] log-softmax tensor.
    """
    logits = logits[:, :-1].float()  # [B, T-1, V]
    targets = input_ids[:, 1:]  # [B, T-1]
    flat = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return -flat.view(targets.shape)  # [B, T-1]


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position: [B, T-1]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [B, T-1, V]
    return -(logp.exp() * logp).sum(-1)

"""Supervised fine-tuning: next-token cross-entropy on answer tokens only.

Used to build the bundled tiny model and as a stage of its own. Prompt and padding tokens
never contribute; the mean is over answer tokens of the whole batch (token-level), so long
answers weigh in proportion to their length, as in ordinary language-model training.
"""

from __future__ import annotations

import torch

from rftkit.models.batching import pack_prompt_completion, token_logprobs


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, num_tokens: float | None = None) -> torch.Tensor:
    """Mean negative log-likelihood over masked tokens: -sum(logp * mask) / num_tokens. logprobs, mask: [B, T].

    `mask` may weigh tokens (A-SFT: each answer's weight on its tokens). num_tokens defaults to
    the mask's sum; pass the whole step's answer-token count so micro-batch losses add up to the step's.
    """
    denom = mask.sum().clamp(min=1.0) if num_tokens is None else num_tokens
    return -(logprobs * mask).sum() / denom


def sft_step_loss(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int) -> torch.Tensor:
    """Forward one batch of (prompt, answer) pairs and return the SFT loss (not yet backpropagated)."""
    device = next(model.parameters()).device
    input_ids, attention, mask = pack_prompt_completion(prompts, answers, pad_id)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits  # [B, T, V]
    return sft_loss(token_logprobs(logits, input_ids.to(device)), mask.to(device))


def conversation_examples(tokenizer, messages: list[dict]) -> list[tuple[list[int], list[int]]]:
    """One (prompt ids, answer ids) pair per assistant turn of a conversation.

    Each turn is trained on exactly as it would be generated: the chat-templated history up
    to that turn (with the assistant header) is the prompt, the turn's text plus end-of-turn
    the answer, so earlier assistant turns are context for later ones and targets of their own.
    """
    from rftkit.models import sft_example

    return [sft_example(tokenizer, messages[:i], m["content"]) for i, m in enumerate(messages) if m["role"] == "assistant" and i]


def pack_examples(lengths: list[int], pack_length: int) -> list[list[int]]:
    """Indices of examples grouped into rows of at most `pack_length` tokens (first-fit decreasing).

    Deterministic; an example longer than `pack_length` gets a row of its own (never cut).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            room.append(pack_length - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return rows


def packed_batch(rows: list[list[tuple[list[int], list[int], float]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of packed (prompt, answer, weight) examples -> input_ids [B, L], position_ids [B, L], target weights [B, L-1].

    Positions restart at 0 with every example; given position_ids and no attention mask,
    transformers' attention masks (sdpa, eager, flash) keep each example to itself
    (block-diagonal causal), so a packed row computes exactly what separate rows would.
    Row padding becomes one more short "example" whose targets are masked. The target
    after an example's last token is the next example's first prompt token: weight 0.
    """
    ids, pos, tgt = [], [], []
    for row in rows:
        ids.append([t for p, a, _ in row for t in p + a])
        pos.append([i for p, a, _ in row for i in range(len(p) + len(a))])
        tgt.append([m for p, a, w in row for m in [0.0] * len(p) + [w] * len(a)])
    width = max(len(r) for r in ids)
    for a, b, c in zip(ids, pos, tgt):
        extra = width - len(a)
        a += [pad] * extra
        b += list(range(extra))
        c += [0.0] * extra
    return torch.tensor(ids), torch.tensor(pos), torch.tensor(tgt)[:, 1:]


def sft_batches(examples: list[tuple[list[int], list[int], float]], micro_batch_size: int, packing: bool, pack_length: int):
    """Micro-batches of (prompt, answer, weight) examples: (input_ids, attention_mask | None, position_ids | None, weights).

    `weights` [B, T-1] is the example's weight on its answer-token targets and 0 elsewhere.
    Packed: examples share rows (see packed_batch). Not packed: one example per row, sorted
    by length (less padding), right-padded.
    """
    if packing:
        groups = pack_examples([len(p) + len(a) for p, a, _ in examples], pack_length)
        for start in range(0, len(groups), micro_batch_size):
            input_ids, positions, weights = packed_batch([[examples[i] for i in g] for g in groups[start : start + micro_batch_size]], pad=0)
            yield input_ids, None, positions, weights
        return
    ordered = sorted(examples, key=lambda e: len(e[0]) + len(e[1]))
    for start in range(0, len(ordered), micro_batch_size):
        chunk = ordered[start : start + micro_batch_size]
        input_ids, attention, mask = pack_prompt_completion([p for p, _, _ in chunk], [a for _, a, _ in chunk], pad=0)
        yield input_ids, attention, None, mask * torch.tensor([w for _, _, w in chunk], dtype=mask.dtype)[:, None]


def sft_pairs_loss(model, pairs, micro_batch_size: int, packing: bool, pack_length: int, weights=None,
                   backward: bool = True) -> tuple[float, float]:
    """Token-mean NLL over the answer tokens of (prompt, answer) `pairs`, micro-batch by micro-batch.

    `weights` (one per pair, A-SFT) scale each pair's tokens; the normaliser is always the
    number of answer tokens, so micro-batch losses add up to the step's. Returns (loss, answer
    tokens); with backward=True the gradients are accumulated into the model.
    """
    device = next(model.parameters()).device
    n_tokens = float(sum(len(a) for _, a in pairs)) or 1.0
    weights = [1.0] * len(pairs) if weights is None else weights
    examples = [(p, a, float(w)) for (p, a), w in zip(pairs, weights)]
    total = 0.0
    for input_ids, attention, positions, target_weights in sft_batches(examples, micro_batch_size, packing, pack_length):
        input_ids, target_weights = input_ids.to(device), target_weights.to(device)
        logits = model(input_ids=input_ids, attention_mask=None if attention is None else attention.to(device),
                       position_ids=None if positions is None else positions.to(device), use_cache=False).logits
        loss = sft_loss(token_logprobs(logits, input_ids), target_weights, n_tokens)
        if backward:
            loss.backward()
        total += float(loss.detach())
    return total, n_tokens

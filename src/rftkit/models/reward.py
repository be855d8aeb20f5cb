"""Reward models: a causal LM body with a one-output `score` head, scored at each sequence's last token.

The `reward_model` stage (train/stages/reward_model.py) trains one and the `reward_model`
grader (graders/reward_model.py) scores with it; both load and score through this module, so
training and grading read the same token of the same ids.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch

from rftkit.models import DTYPES, load_tokenizer, quiet_transformers, resolve_model_path, sft_example


def load_reward_model(path: str, dtype: str | None = None, device: str = "cpu", tokenizer=None):
    """`path` as an AutoModelForSequenceClassification with one label, on `device`.

    A causal LM folder gets a new, randomly initialised `score` head (said in one plain line,
    not transformers' load-report table); body weights missing from the checkpoint warn.
    dtype None keeps transformers' default. The pad id is set from the tokenizer when the
    config has none (HF's own batched forward needs it; `score_pairs` never uses it).
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    quiet_transformers()
    kwargs = {"dtype": DTYPES[dtype]} if dtype else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report flags the head a causal LM lacks; we say it plainly below
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(path), num_labels=1, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = info.get("missing_keys") or []
    body = sorted(k for k in missing if not k.startswith("score."))
    if body:
        warnings.warn(f"{path}: {len(body)} weights not in the checkpoint were initialised randomly: {', '.join(body[:5])}",
                      stacklevel=2)
    elif missing:
        print(f"reward model: {path} has no scalar head yet; a new one is initialised", file=sys.stderr)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = (tokenizer or load_tokenizer(path)).pad_token_id
    return model.to(device)


def conversation_ids(tokenizer, messages: list[dict], answer: str) -> list[int]:
    """Token ids a reward model scores: chat-template prompt, then answer + eos (as `sft_example`)."""
    prompt, answer_ids = sft_example(tokenizer, messages, answer)
    return prompt + answer_ids


def backbone_and_head(model) -> tuple[Any, Any]:
    """(transformer body, `score` head) of a decoder sequence-classification model (peft-wrapped or not).

    ValueError when the model has no such pair (encoder models pool their first token with a
    `classifier` head: a last-token score would be wrong for them).
    """
    if hasattr(model, "get_base_model"):  # a PeftModel: its injected LoRA layers live in the base model
        model = model.get_base_model()
    head = getattr(model, "score", None)
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if head is None or body is None or body is model or not hasattr(head, "weight"):
        prefix = getattr(model, "base_model_prefix", "?")
        raise ValueError(f"{type(model).__name__} has no `score` head over a `{prefix}` body; rftkit reward models "
                         "are decoder models scored at their last token (LlamaForSequenceClassification, "
                         "Qwen2ForSequenceClassification, ...)")
    return body, head


def score_pairs(model, token_id_lists: list[list[int]], pad_id: int, max_length: int | None = None):
    """The scalar score of each sequence: the `score` head at its last real token. -> tensor [B]

    Rows are right-padded with `pad_id` (any valid id: the last real position comes from each
    row's length, never from comparing ids with the pad id) and masked. A row longer than
    `max_length` keeps its last `max_length` tokens. No `no_grad` here: a training stage
    takes gradients through it; the grader wraps it in `inference_mode`.
    """
    rows = [list(ids)[-max_length:] if max_length else list(ids) for ids in token_id_lists]
    if not rows or not all(rows):
        raise ValueError("score_pairs: needs at least one sequence, and no empty sequence (it has no last token)")
    body, head = backbone_and_head(model)
    device = head.weight.device
    lengths = torch.tensor([len(r) for r in rows], device=device)  # [B]
    input_ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long, device=device)  # [B, T]
    attention_mask = torch.zeros_like(input_ids)  # [B, T]
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, :len(row)] = 1
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
    last = hidden[torch.arange(len(rows), device=device), lengths - 1]  # [B, H]
    return head(last).squeeze(-1).float()  # [B]

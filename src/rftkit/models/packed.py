"""Completion log-probs with each distinct prompt forwarded once and no padding tokens in the linear layers.

A GRPO batch holds G completions of every prompt. The plain training forward runs each
(prompt + completion) row right-padded to the batch's longest row, so a prompt's tokens go
through the model G times and every short completion drags padding through every matmul. For a
small model the matmuls are the step, so that waste is the update's cost:

- each distinct prompt is forwarded once ([U, P] right-padded prompts); the rows sharing it
  read its keys and values by index, so its gradient is the sum over the rows, as before;
- completion tokens are one flat [T, H] stream through norms, projections and MLPs: only real
  tokens are computed. Only attention needs rows; there the queries are scattered into
  [R, L] (L = longest completion input) and attend to their prompt's keys plus their own
  earlier completion keys.

The maths is the model's own forward, token by token (same layers, norms, rotary embedding, LoRA
modules and head); only the floating-point summation order differs (tested against the padded
forward: log-probs and gradients). The last completion token is a target only, never an input.
Llama-layout models only (`models.layout.supports`); others use the padded forward.

`policy_logprobs` is the one entry point: it picks this forward or the padded one and returns
both in the same [rows, completion] layout, so callers never know which ran.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from rftkit.models.batching import pack_prompt_completion, pad_right, token_logprobs
from rftkit.models.layout import decoder_parts, packed_forward_usable


class Layout:
    """Where every token of a batch of (prompt, completion) rows lives in the packed forward."""

    def __init__(self, prompts: list[list[int]], completions: list[list[int]], device):
        index: dict[tuple[int, ...], int] = {}
        self.group = torch.tensor([index.setdefault(tuple(p), len(index)) for p in prompts], device=device)  # [R]
        unique = list(index)
        self.prompt_len = torch.tensor([len(p) for p in unique], device=device)  # [U]
        self.prompt_ids = pad_right([list(p) for p in unique], 0).to(device)  # [U, P]
        inputs = [c[:-1] for c in completions]  # the last token is only ever a target
        self.rows, self.width = len(completions), max(len(c) for c in completions)  # R, C
        self.input_width = self.width - 1  # L
        self.flat_ids = torch.tensor([t for c in inputs for t in c], dtype=torch.long, device=device)  # [T]
        self.flat_row = torch.tensor([r for r, c in enumerate(inputs) for _ in c], dtype=torch.long, device=device)  # [T]
        self.flat_col = torch.tensor([j for c in inputs for j in range(len(c))], dtype=torch.long, device=device)  # [T]
        self.flat_pos = self.prompt_len[self.group[self.flat_row]] + self.flat_col  # [T]
        self.first_target = torch.tensor([c[0] for c in completions], device=device)  # [R]
        self.flat_target = torch.tensor([t for c in completions for t in c[1:]], dtype=torch.long, device=device)  # [T]
        lengths = torch.tensor([len(c) for c in completions], device=device)
        self.mask = (torch.arange(self.width, device=device)[None] < lengths[:, None]).float()  # [R, C]
        width = self.prompt_ids.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        self.prompt_attn = causal[None, None]  # [1, 1, P, P]; right padding: real queries never see pads
        keys = torch.arange(width, device=device)[None] < self.prompt_len[self.group][:, None]  # [R, P]
        own = torch.ones(self.input_width, self.input_width, dtype=torch.bool, device=device).tril()  # [L, L]
        self.completion_attn = torch.cat(
            [keys[:, None, :].expand(-1, self.input_width, -1), own[None].expand(self.rows, -1, -1)], dim=-1
        )[:, None]  # [R, 1, L, P + L]; padded queries still see their prompt, so no row is all -inf


def attend(attn, q, k, v, mask):
    """Scaled dot-product attention with grouped kv heads: q [B, Hq, S, D], k/v [B, Hkv, K, D], mask [B|1, 1, S, K]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling, enable_gqa=q.shape[1] != k.shape[1])


def packed_logprobs(model, prompts: list[list[int]], completions: list[list[int]], temperature: float = 1.0):
    """(log-probs [R, C], mask [R, C]) of each row's completion tokens, padded on the right with 0.

    Same values as `token_logprobs` over the padded rows of `pack_prompt_completion`, completion
    part only; differentiable. Every completion must be non-empty.
    """
    inner, head = decoder_parts(model)
    device = head.weight.device
    at = Layout(prompts, completions, device)
    units, width = at.prompt_ids.shape
    tokens, span = at.flat_ids.shape[0], at.input_width

    hp = inner.embed_tokens(at.prompt_ids)  # [U, P, H]
    hc = inner.embed_tokens(at.flat_ids)[None]  # [1, T, H]
    rot_p = inner.rotary_emb(hp, torch.arange(width, device=device)[None].expand(units, -1))
    rot_c = inner.rotary_emb(hc, at.flat_pos[None])
    for layer in inner.layers:
        attn = layer.self_attn
        d = attn.head_dim
        # prompts: a plain causal forward, keeping rotated keys and values for the completions
        x = layer.input_layernorm(hp)
        q = attn.q_proj(x).view(units, width, -1, d).transpose(1, 2)  # [U, Hq, P, D]
        kp = attn.k_proj(x).view(units, width, -1, d).transpose(1, 2)  # [U, Hkv, P, D]
        vp = attn.v_proj(x).view(units, width, -1, d).transpose(1, 2)
        q, kp = apply_rotary_pos_emb(q, kp, *rot_p)
        out = attend(attn, q, kp, vp, at.prompt_attn)  # [U, Hq, P, D]
        hp = hp + attn.o_proj(out.transpose(1, 2).reshape(units, width, -1))
        hp = hp + layer.mlp(layer.post_attention_layernorm(hp))
        if not tokens:
            continue
        # completions: flat through the projections, rows only inside attention
        x = layer.input_layernorm(hc)
        q = attn.q_proj(x).view(1, tokens, -1, d).transpose(1, 2)  # [1, Hq, T, D]
        k = attn.k_proj(x).view(1, tokens, -1, d).transpose(1, 2)  # [1, Hkv, T, D]
        v = attn.v_proj(x).view(1, tokens, -1, d)  # [1, T, Hkv, D]
        q, k = apply_rotary_pos_emb(q, k, *rot_c)
        rows = (at.rows, span)
        qr = q.new_zeros(*rows, q.shape[1], d).index_put((at.flat_row, at.flat_col), q[0].transpose(0, 1))  # [R, L, Hq, D]
        kr = k.new_zeros(*rows, k.shape[1], d).index_put((at.flat_row, at.flat_col), k[0].transpose(0, 1))
        vr = v.new_zeros(*rows, v.shape[2], d).index_put((at.flat_row, at.flat_col), v[0])
        keys = torch.cat([kp[at.group], kr.transpose(1, 2)], dim=2)  # [R, Hkv, P + L, D]
        values = torch.cat([vp[at.group], vr.transpose(1, 2)], dim=2)
        out = attend(attn, qr.transpose(1, 2), keys, values, at.completion_attn)  # [R, Hq, L, D]
        out = out.transpose(1, 2)[at.flat_row, at.flat_col]  # [T, Hq, D]
        hc = hc + attn.o_proj(out.reshape(1, tokens, -1))
        hc = hc + layer.mlp(layer.post_attention_layernorm(hc))

    last = hp[torch.arange(units, device=device), at.prompt_len - 1]  # [U, H]
    logits = head(inner.norm(torch.cat([last, hc[0]]))).float()  # [U + T, V]
    if temperature != 1.0:
        logits = logits / temperature
    logp_first = -F.cross_entropy(logits[:units][at.group], at.first_target, reduction="none")  # [R]
    logp_rest = -F.cross_entropy(logits[units:], at.flat_target, reduction="none")  # [T]
    logp = logits.new_zeros(at.rows, at.width)
    logp = logp.index_put((torch.arange(at.rows, device=device), torch.zeros_like(at.group)), logp_first)
    logp = logp.index_put((at.flat_row, at.flat_col + 1), logp_rest)
    return logp, at.mask


def policy_logprobs(model, prompts: list[list[int]], completions: list[list[int]], temperature: float = 1.0,
                    pad_id: int = 0, packed: bool | None = None, logits_fn=None):
    """(log-probs [R, C], mask [R, C]) of each row's completion tokens under logits / temperature.

    `packed` None: the shared-prefix forward where the model allows it (`packed_forward_usable`),
    else the padded forward (prompt + completion rows right-padded, `model(...)` or
    `logits_fn(input_ids, attention_mask)`, e.g. a reference with its adapter off). Both give
    the same values in the same layout; differentiable unless called under no_grad.
    """
    if packed is None:
        packed = logits_fn is None and packed_forward_usable(model)
    if packed:
        return packed_logprobs(model, prompts, completions, temperature)
    device = next(model.parameters()).device
    input_ids, attention, full_mask = (t.to(device) for t in pack_prompt_completion(prompts, completions, pad_id))
    if logits_fn is None:
        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits  # [R, T, V]
    else:
        logits = logits_fn(input_ids, attention)
    logp = token_logprobs(logits / temperature if temperature != 1.0 else logits, input_ids)  # [R, T-1]
    mask = pad_right([[1] * len(c) for c in completions], 0).to(device).float()  # [R, C]
    return logp.new_zeros(mask.shape).masked_scatter(mask.bool(), logp[full_mask.bool()]), mask

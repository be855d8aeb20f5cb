"""A lean sampling loop for decoder models whose layers follow the Llama layout (Llama, Qwen2, Mistral, ...).

`transformers`' generate() spends most of a small model's decode step outside the model:
it grows the KV cache by concatenation (a copy of the whole cache per layer per token),
rebuilds the attention mask, re-runs input preparation, logits processors and stopping
criteria. Here the cache is allocated once for prompt + max_new_tokens and each token's
keys and values are written into their slot; the mask is a view of one preallocated row
mask; the model's own decoder layers, norms, rotary embedding and head do the maths, so
LoRA adapters and architecture details (biases, GQA) are whatever the model says.

One piece of each layer is done here rather than by the model: attention for the single
new query. PyTorch's fused CPU attention costs ~1.4 ms per call at this shape (a kernel
built for long queries), 31% of a tiny model's generation; two small matmuls and a softmax
over the grouped heads do the same maths without repeating keys and values for GQA.

Sampling draws as generate() does (softmax, then one `torch.multinomial` per step over the
batch), so the same seed gives the same tokens up to float rounding (tested against
generate()). Models this loop does not recognise go through generate() (`supports`).
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

_LAYOUT = ("embed_tokens", "layers", "norm", "rotary_emb")


def decoder_parts(model):
    """(inner model with embed_tokens/layers/norm/rotary_emb, lm_head), or None when the layout differs."""
    if hasattr(model, "get_base_model"):  # peft: the LoRA layers live inside the base model's modules
        model = model.get_base_model()
    inner, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if inner is None or head is None or not all(hasattr(inner, name) for name in _LAYOUT):
        return None
    return inner, head


def supports(model) -> bool:
    """True for full-attention decoders with the Llama layout (no sliding window, no hybrid layers, no q/k norms)."""
    cfg = model.config
    if decoder_parts(model) is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or []):
        return False
    return cfg.model_type in ("llama", "qwen2", "mistral")


class SlotCache:
    """Preallocated keys and values, [B, H_kv, S, D] per layer; `update` writes the current slot.

    Quacks like the part of transformers' Cache that attention layers call.
    """

    def __init__(self, prefix, batch: int, total: int):
        self.keys, self.values = [], []
        for layer in prefix.layers:
            k, v = layer.keys, layer.values  # [B, H_kv, P, D]
            kb = k.new_empty(batch, k.shape[1], total, k.shape[3])
            vb = v.new_empty(batch, v.shape[1], total, v.shape[3])
            kb[:, :, : k.shape[2]] = k
            vb[:, :, : v.shape[2]] = v
            self.keys.append(kb)
            self.values.append(vb)
        self.length = prefix.get_seq_length()

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        end = self.length + key_states.shape[2]
        self.keys[layer_idx][:, :, self.length : end] = key_states
        self.values[layer_idx][:, :, self.length : end] = value_states
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]


def decode_layer(layer, hidden: torch.Tensor, rotary, cache: SlotCache, index: int, mask: torch.Tensor) -> torch.Tensor:
    """One decoder layer for one new token per row: hidden [B, 1, H] -> [B, 1, H]; mask [B, 1, 1, K] bool."""
    attn = layer.self_attn
    batch, d = hidden.shape[0], attn.head_dim
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x).view(batch, 1, -1, d).transpose(1, 2)  # [B, Hq, 1, D]
    k = attn.k_proj(x).view(batch, 1, -1, d).transpose(1, 2)  # [B, Hkv, 1, D]
    v = attn.v_proj(x).view(batch, 1, -1, d).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *rotary)
    keys, values = cache.update(k, v, index)  # [B, Hkv, K, D]
    heads, kv_heads = q.shape[1], k.shape[1]
    q = q.reshape(batch, kv_heads, heads // kv_heads, d)  # query heads grouped by the kv head they read
    scores = (q @ keys.transpose(-1, -2)) * attn.scaling  # [B, Hkv, G, K]
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ values  # [B, Hkv, G, D]
    hidden = hidden + attn.o_proj(out.reshape(batch, 1, heads * d))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


@torch.no_grad()
def sample_tokens(model, input_ids, attention, prefix_cache, max_new_tokens: int, warp, stop_ids: list[int],
                  pad_id: int, do_sample: bool = True) -> torch.Tensor:
    """Generated ids [B, <= max_new_tokens] after the prompts, pad after a row's stop token.

    input_ids, attention: [B, P] left-padded prompts. `prefix_cache` holds the keys and
    values of input_ids[:, :-1] (transformers DynamicCache); the last prompt token is the
    first one fed here. `warp(ids_so_far, scores) -> scores` is the sampling warper.
    """
    inner, head = decoder_parts(model)
    batch, width = input_ids.shape
    device = input_ids.device
    cache = SlotCache(prefix_cache, batch, width - 1 + max_new_tokens)
    mask = torch.ones(batch, width + max_new_tokens, dtype=torch.bool, device=device)  # [B, S] keys a row may attend to
    mask[:, :width] = attention.bool()
    positions = attention.sum(-1, keepdim=True) - 1  # [B, 1] position of the last prompt token
    stops = torch.tensor(stop_ids, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    token = input_ids[:, -1:]  # [B, 1]
    generated = torch.full((batch, width + max_new_tokens), pad_id, dtype=input_ids.dtype, device=device)
    generated[:, :width] = input_ids  # processors see the whole sequence so far, as in generate()
    step = 0
    for step in range(max_new_tokens):
        hidden = inner.embed_tokens(token)  # [B, 1, H]
        rotary = inner.rotary_emb(hidden, positions)
        keys = cache.length + 1
        attn_mask = mask[:, None, None, :keys]  # [B, 1, 1, K]
        for index, layer in enumerate(inner.layers):
            hidden = decode_layer(layer, hidden, rotary, cache, index, attn_mask)
        cache.length = keys
        logits = head(inner.norm(hidden[:, -1])).float()  # [B, V]
        scores = warp(generated[:, : width + step], logits)
        if do_sample:
            nxt = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)  # [B]
        else:
            nxt = scores.argmax(-1)
        nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad_id))
        generated[:, width + step] = nxt
        unfinished &= ~torch.isin(nxt, stops)
        if not unfinished.any():
            break
        token, positions = nxt[:, None], positions + 1
    return generated[:, width : width + step + 1]

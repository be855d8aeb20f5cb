"""A lean sampling loop for decoder models whose layers follow the Llama layout (Llama, Qwen2, Mistral, ...).

`transformers`' generate() spends most of a small model's decode step outside the model:
it grows the KV cache by concatenation (a copy of the whole cache per layer per token),
rebuilds the attention mask, re-runs input preparation, logits processors and stopping
criteria. Here the prompts' keys and values stay as the prefill left them, one copy per
distinct prompt, and each row's own tokens go into slots allocated once for max_new_tokens
(`SplitCache`); the model's own projections, norms, rotary embedding, MLPs and head do the
maths, so LoRA adapters and architecture details (biases, GQA) are whatever the model says.

One piece of each layer is done here rather than by the model: the rotary embedding and
attention for the single new query. PyTorch's fused CPU attention costs ~1.4 ms per call at
this shape (a kernel built for long queries). On the CPU in float32 a small C kernel
(rftkit/native) does the rotation, the cache write and the attention in one call per layer,
on PyTorch's threads: ~4x faster than the ~20 small PyTorch operators it replaces, and it
reads a finished row's cache nowhere, so rows leave the batch without any copying. Elsewhere
(GPU, half precision, no C compiler) small matmuls and a softmax over the grouped heads do
the same maths without repeating keys and values for GQA, and the rows of one prompt read
its keys together, once.

Sampling draws as generate() does (softmax, then torch.multinomial's Exp(1) noise over the
whole batch), so the same seed gives the same tokens up to float rounding (tested against
generate()). Models this loop does not recognise go through generate() (`supports`).
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from rftkit import native
from rftkit.models.layout import decoder_parts
from rftkit.rollout.turncache import KeptRow

COMPACT_FRACTION = 8  # finished rows leave the batch once they are at least 1/8 of it


class SplitCache:
    """Keys and values in two parts, so a prompt's are read once per step, not once per row.

    - the prompts': one copy per distinct prompt, the prefill's tensors as they are
      ([U, H_kv, P, D] per layer, left-padded, `prefix_mask` [U, P]; made contiguous once
      for the C kernel);
    - each row's own tokens (the last prompt token, then the generated ones): [b, H_kv, N, D]
      per layer, allocated once; `length` slots are filled.

    `group[r]` is row r's prompt and `slot[r]` its place among that prompt's rows, so the
    queries of a prompt's rows can be stacked against its keys in one matmul. With the C
    kernel, `cache_row[r]` is where row r's own keys are: rows that leave are just dropped
    from it, while the PyTorch path copies the kept rows' keys into a smaller cache.
    """

    def __init__(self, prefix, prefix_mask: torch.Tensor, group: torch.Tensor, max_new_tokens: int, use_native: bool = True):
        self.prefix_keys = [layer.keys for layer in prefix.layers]
        self.prefix_values = [layer.values for layer in prefix.layers]
        first = self.prefix_keys[0]
        # the C kernel (rftkit/native) does a layer's rotary, cache write and attention in one call
        self.native = use_native and first.device.type == "cpu" and first.dtype == torch.float32 and native.available()
        if self.native:  # it reads plain [U, Hkv, P, D] arrays; the prefill's may be transposed views
            self.prefix_keys = [k.contiguous() for k in self.prefix_keys]
            self.prefix_values = [v.contiguous() for v in self.prefix_values]
            self.prompt_mask = prefix_mask.to(torch.uint8).contiguous()  # [U, P]
            self.cache_row = torch.arange(len(group), device=group.device)  # [b] each row's place in keys/values
            self.threads = native.threads()
        batch = len(group)
        self.keys = [k.new_empty(batch, k.shape[1], max_new_tokens, k.shape[3]) for k in self.prefix_keys]
        self.values = [v.new_empty(batch, v.shape[1], max_new_tokens, v.shape[3]) for v in self.prefix_values]
        self.length = 0
        self.prompts = prefix_mask.shape[0]
        self.group = group
        counts = torch.bincount(group, minlength=self.prompts)
        self.width = int(counts.max())  # rows per prompt, at most
        order = torch.argsort(group, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        self.slot = torch.empty_like(group)
        self.slot[order] = torch.arange(batch, device=group.device) - starts[group[order]]
        self.row_mask = prefix_mask.bool()[group][:, None, None, :]  # [b, 1, 1, P] prompt keys each row may see

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (their filled slots are copied; the prompts' part is shared and stays).

        The C kernel reads each row's keys and values where they are (`cache_row`), so nothing is copied for it."""
        self.group, self.slot, self.row_mask = self.group[rows], self.slot[rows], self.row_mask[rows]
        if self.native:
            self.cache_row = self.cache_row[rows]
            return
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                kept = t.new_empty(len(rows), *t.shape[1:])
                kept[:, :, : self.length] = t[rows, :, : self.length]
                store[i] = kept

    def by_prompt(self, x: torch.Tensor) -> torch.Tensor:
        """[b, Hkv, R, *] per row -> [U, Hkv, W * R, *]: each prompt's rows stacked (empty places are 0)."""
        stacked = x.new_zeros(self.prompts, self.width, *x.shape[1:])
        stacked[self.group, self.slot] = x
        u, w, h, r = stacked.shape[:4]
        return stacked.transpose(1, 2).reshape(u, h, w * r, *x.shape[3:])

    def by_row(self, x: torch.Tensor, heads_per_kv: int) -> torch.Tensor:
        """The inverse of by_prompt: [U, Hkv, W * R, *] -> [b, Hkv, R, *]."""
        u, h = x.shape[:2]
        return x.view(u, h, self.width, heads_per_kv, *x.shape[3:]).transpose(1, 2)[self.group, self.slot]


def decode_layer(layer, hidden: torch.Tensor, rotary, cache: SplitCache, index: int) -> torch.Tensor:
    """One decoder layer for one new token per row: hidden [b, 1, H] -> [b, 1, H]."""
    attn = layer.self_attn
    batch = hidden.shape[0]
    x = layer.input_layernorm(hidden)
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)  # [b, 1, H * D]
    if cache.native:
        cos, sin = (t.reshape(batch, -1).contiguous() for t in rotary)
        out = native.decode_attention(
            q.reshape(batch, -1).contiguous(), k.reshape(batch, -1).contiguous(), v.reshape(batch, -1).contiguous(),
            cos, sin, cache.prefix_keys[index], cache.prefix_values[index], cache.prompt_mask, cache.group,
            cache.cache_row, cache.keys[index], cache.values[index], cache.length, attn.scaling, cache.threads)
    else:
        out = attention(attn, q, k, v, rotary, cache, index)
    hidden = hidden + attn.o_proj(out.reshape(batch, 1, -1))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def attention(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotary, cache: SplitCache, index: int) -> torch.Tensor:
    """PyTorch's version of native.decode_attention: q [b, 1, Hq * D], k/v [b, 1, Hkv * D] -> [b, Hq * D]."""
    batch, d = q.shape[0], attn.head_dim
    q = q.view(batch, 1, -1, d).transpose(1, 2)  # [b, Hq, 1, D]
    k = k.view(batch, 1, -1, d).transpose(1, 2)  # [b, Hkv, 1, D]
    v = v.view(batch, 1, -1, d).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *rotary)
    end = cache.length + 1
    cache.keys[index][:, :, cache.length : end] = k
    cache.values[index][:, :, cache.length : end] = v
    own_keys, own_values = cache.keys[index][:, :, :end], cache.values[index][:, :, :end]  # [b, Hkv, n, D]
    heads, kv_heads = q.shape[1], k.shape[1]
    per_kv = heads // kv_heads
    q = q.reshape(batch, kv_heads, per_kv, d)  # query heads grouped by the kv head they read
    prompt_keys, prompt_values = cache.prefix_keys[index], cache.prefix_values[index]  # [U, Hkv, P, D]
    prompt_scores = cache.by_row(cache.by_prompt(q) @ prompt_keys.transpose(-1, -2), per_kv)  # [b, Hkv, R, P]
    prompt_scores = prompt_scores.masked_fill(~cache.row_mask, float("-inf"))
    scores = torch.cat([prompt_scores, q @ own_keys.transpose(-1, -2)], dim=-1) * attn.scaling  # [b, Hkv, R, P + n]
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    width = prompt_keys.shape[2]
    out = cache.by_row(cache.by_prompt(probs[..., :width]) @ prompt_values, per_kv) + probs[..., width:] @ own_values
    return out.reshape(batch, heads * d)


@torch.no_grad()
def sample_tokens(model, input_ids, attention, prefix_cache, group, max_new_tokens: int, warper, stop_ids: list[int],
                  pad_id: int, do_sample: bool = True, keep: list | None = None, on_token=None,
                  budget=None) -> torch.Tensor:
    """Generated ids [B, <= max_new_tokens] after the prompts, pad after a row's stop token.

    input_ids, attention: [B, P] left-padded prompts. `prefix_cache` (transformers
    DynamicCache) holds the keys and values of the distinct prompts' ids[:, :-1], and `group`
    [B] says which of them each row is; the last prompt token is the first one fed here.
    `warper` is rollout.hf.SamplingWarper: `warp(scores)` shapes the distribution,
    `observe(scores, alive, rows)` meters its entropy per row and returns its probabilities.

    Finished rows leave the batch once they are 1/COMPACT_FRACTION of it: their compute and
    their share of the KV cache reads stop. The random numbers stay those of the full batch,
    drawn as torch.multinomial draws them (one Exp(1) per row and vocabulary entry, argmax of
    p / q), so the tokens are still those of generate() with the same seed.

    `keep` (a list, C kernel only): filled with each row's keys and values after the loop,
    `[(K, V) per layer]` of its prompt and every token it fed ([Hkv, n, D] each), so the next
    turn of a multi-turn episode need not prefill them again (rollout/turncache.py).

    `on_token(rows, tokens)`, when given, is called after every step with the batch rows that had
    not stopped and the token each drew (its stop token included): a server streams replies from it.

    `budget` (rollout/budget.py ThinkingBudget): rows at their thinking budget feed the close tag's
    ids instead of what they drew, and the budget marks those tokens as inserted.
    """
    inner, head = decoder_parts(model)
    batch, width = input_ids.shape
    device = input_ids.device
    prefix_mask = attention.new_zeros(prefix_cache.layers[0].keys.shape[0], width - 1)
    prefix_mask[group] = attention[:, :-1]  # [U, P-1]
    cache = SplitCache(prefix_cache, prefix_mask, group, max_new_tokens)
    positions = attention.sum(-1, keepdim=True) - 1  # [B, 1] position of the last prompt token
    stops = torch.tensor(stop_ids, device=device)
    rows = torch.arange(batch, device=device)  # the batch rows still in the loop
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # [b] rows in the loop that have stopped
    token = input_ids[:, -1:]  # [b, 1]
    generated = torch.full((batch, max_new_tokens), pad_id, dtype=input_ids.dtype, device=device)
    step = 0
    for step in range(max_new_tokens):
        hidden = inner.embed_tokens(token)  # [b, 1, H]
        rotary = inner.rotary_emb(hidden, positions)
        for index, layer in enumerate(inner.layers):
            hidden = decode_layer(layer, hidden, rotary, cache, index)
        cache.length += 1
        logits = head(inner.norm(hidden[:, -1])).float()  # [b, V]
        scores = warper.warp(logits)
        probs = warper.observe(scores, ~done, rows)  # [b, V], softmax(scores)
        if do_sample:
            noise = torch.empty(batch, probs.shape[-1], dtype=probs.dtype, device=device).exponential_(1)  # [B, V]
            nxt = (probs / (noise if len(rows) == batch else noise[rows])).argmax(-1)  # [b]
        else:
            nxt = scores.argmax(-1)
        if budget is not None:  # the close tag, inserted at the thinking budget (not sampled: loss mask 0)
            nxt = budget.apply(rows, ~done, nxt, step)
        if on_token is not None:
            on_token(rows[~done].tolist(), nxt[~done].tolist())
        nxt = nxt.masked_fill(done, pad_id)
        generated[rows, step] = nxt
        if budget is not None:
            budget.observe(rows, generated, step)
        done |= torch.isin(nxt, stops)
        stopped = int(done.sum())
        if stopped == len(rows):
            break
        token, positions = nxt[:, None], positions + 1
        if stopped >= (1 if cache.native else max(len(rows) // COMPACT_FRACTION, 1)):  # copying the cache once beats carrying them
            alive = (~done).nonzero().squeeze(1)
            rows, done, positions, token = rows[alive], done[alive], positions[alive], token[alive]
            cache.select(alive)
    if keep is not None and cache.native:
        keep.extend(row_kv(cache, group, prefix_mask, generated[:, : step + 1], stops))
    return generated[:, : step + 1]


def row_kv(cache: SplitCache, group: torch.Tensor, prefix_mask: torch.Tensor, generated: torch.Tensor,
           stops: torch.Tensor) -> list:
    """Per batch row, a `turncache.KeptRow`: where its prompt's keys and the keys of the tokens it fed are (C kernel
    layout: row r's own keys stay at index r). A row fed the last prompt token, then each generated token until
    its stop token, which is never fed: the keys cover the prompt and the generated ids before the stop.
    Nothing is copied here; the next turn copies the rows it continues."""
    hit = torch.isin(generated, stops)  # [B, N]
    fed = torch.where(hit.any(-1), hit.int().argmax(-1) + 1, torch.full_like(hit[:, 0], generated.shape[1], dtype=torch.long))
    real = [m.bool().nonzero().squeeze(1) for m in prefix_mask]  # [U] positions of each prompt's real keys
    return [KeptRow(cache, int(u), r, real[int(u)], int(n)) for r, (u, n) in enumerate(zip(group.tolist(), fed.tolist()))]

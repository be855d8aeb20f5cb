"""Keys and values kept from one turn of an episode to the next, so a turn prefills only what is new.

A multi-turn rollout (agents/rollout.py) asks for the next turn of every live episode with
contexts that extend the previous turn's context by the turn itself and the environment's
observation. `TurnCache.store` keeps, per row, the keys and values the decode loop computed
(rollout/decode.py `row_kv`: the prompt and every fed token), keyed by the ids they cover.
They stay where the decode loop wrote them (`KeptRow`, a view) and are copied out only for a
row whose episode goes on; `keep_only` drops those of episodes that ended.
`prefix` builds the next batch's prefill from them: rows are put in buckets by how many new
ids they have (an error message from a tool can be a hundred ids, a number four), and each
bucket runs one forward over its rows' last `N` ids with their stored keys as the past (`N`
the bucket's most; rows with fewer recompute a few old ones, so the block is aligned). The
rows' keys are then laid out as the left-padded prompt cache `sample_tokens` takes.

Positions are those of the real tokens, so the stored (rotated) keys stay valid. Weights
change after every update: the cache is cleared by the engine's `update_weights`. C kernel only (CPU, float32): elsewhere nothing is stored and every turn prefills.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


BUCKET = 16  # rows whose new ids round up to the same multiple of this run through the model together


class KeptRow:
    """One batch row's keys and values, left in the decode loop's cache: its prompt's (`prefix` at
    positions `real`) then its own first `fed`, per layer."""

    __slots__ = ("cache", "u", "r", "real", "fed")

    def __init__(self, cache, u: int, r: int, real: torch.Tensor, fed: int) -> None:
        self.cache, self.u, self.r, self.real, self.fed = cache, u, r, real, fed

    @property
    def length(self) -> int:
        return int(self.real.numel()) + self.fed

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(K, V) per layer], [Hkv, length, D] each (copies)."""
        c, u, r, n = self.cache, self.u, self.r, self.fed
        return [(torch.cat([pk[u][:, self.real], k[r, :, :n]], dim=1), torch.cat([pv[u][:, self.real], v[r, :, :n]], dim=1))
                for pk, pv, k, v in zip(c.prefix_keys, c.prefix_values, c.keys, c.values)]


class TurnCache:
    def __init__(self) -> None:
        self.entries: dict[tuple[int, ...], KeptRow] = {}
        self.lengths: set[int] = set()

    def clear(self) -> None:
        self.entries.clear()
        self.lengths.clear()

    def store(self, prompts: list[list[int]], generated: list[list[int]], kept: list[KeptRow]) -> None:
        for prompt, ids, row in zip(prompts, generated, kept):
            n = row.length  # tokens covered: the prompt and the fed generated ids
            covered = tuple((prompt + ids)[:n])
            if len(covered) == n:
                self.entries[covered] = row
                self.lengths.add(n)

    def keep_only(self, prompts: list[list[int]]) -> None:
        """Forget what none of `prompts` extends (episodes that ended): their rows hold a whole batch's cache."""
        wanted = set()
        for p in prompts:
            if n := self.find(p):
                wanted.add(tuple(p[:n]))
        for key in [k for k in self.entries if k not in wanted]:
            del self.entries[key]
        self.lengths = {len(k) for k in self.entries}

    def find(self, context: list[int]) -> int:
        """How many leading ids of `context` (all but its last) have stored keys; 0 if none."""
        for n in sorted(self.lengths, reverse=True):
            if n < len(context) and tuple(context[:n]) in self.entries:
                return n
        return 0

    def prefix(self, model, prompts: list[list[int]], hits: list[int], cache_kw: str, pad_id: int):
        """(input_ids [B, W+1], attention [B, W+1], DynamicCache of every row's ids[:-1] left-padded to W,
        group = arange(B)) for sample_tokens; W the longest context."""
        device = next(model.parameters()).device
        contexts = [p[:-1] for p in prompts]  # the last id is fed by the decode loop
        keys = {r: tuple(prompts[r][:hit]) for r, hit in enumerate(hits) if hit}
        copies = {key: self.entries[key].layers() for key in set(keys.values())}  # two episodes may share one
        need = [len(c) - h for c, h in zip(contexts, hits)]  # ids each row has to run through the model
        buckets: dict[int, list[int]] = {}
        for r, n in enumerate(need):  # a long observation in one row must not make every row run as many
            buckets.setdefault(-(-n // BUCKET), []).append(r)
        rows: list = [None] * len(prompts)  # per row, [(K, V) per layer] over its whole context
        for members in buckets.values():
            past = [copies[keys[r]] if r in keys else None for r in members]
            for r, kv in zip(members, _extend(model, [contexts[r] for r in members], past, max(need[r] for r in members),
                                                cache_kw, pad_id, device)):
                rows[r] = kv
        width = max(len(c) for c in contexts)
        mask = torch.zeros(len(prompts), width + 1, dtype=torch.long, device=device)  # context | last id
        mask[:, -1] = 1
        cache = DynamicCache(config=model.config)
        for layer in range(len(rows[0])):
            k0 = rows[0][layer][0]
            ks = k0.new_zeros(len(prompts), k0.shape[0], width, k0.shape[2])
            vs = torch.zeros_like(ks)
            for r, kv in enumerate(rows):
                n = kv[layer][0].shape[1]
                ks[r, :, width - n :], vs[r, :, width - n :] = kv[layer]
                mask[r, width - n : width] = 1
            cache.update(ks, vs, layer)
        input_ids = torch.full((len(prompts), width + 1), pad_id, dtype=torch.long, device=device)
        input_ids[:, -1] = torch.tensor([p[-1] for p in prompts], dtype=torch.long)
        return input_ids, mask, cache, torch.arange(len(prompts), device=device)


def _extend(model, contexts: list[list[int]], past: list, block: int, cache_kw: str, pad_id: int, device) -> list:
    """Per row, [(K, V) per layer] over its whole context: its stored keys (`past`, or None) as the past and one
    forward over its last `block` ids (a row with fewer new ids recomputes a few old ones, so the block is aligned)."""
    if block == 0:  # everything is stored
        return past
    past_len = [max(len(c) - block, 0) for c in contexts]
    width = max(past_len)
    some = next((p for p in past if p is not None), None)
    mask = torch.zeros(len(contexts), width + block, dtype=torch.long, device=device)  # past | block
    ids = torch.full((len(contexts), block), pad_id, dtype=torch.long, device=device)
    positions = torch.zeros(len(contexts), block, dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    if width:
        (heads, _, dim), layers = some[0][0].shape, len(some)
        past_k = [some[0][0].new_zeros(len(contexts), heads, width, dim) for _ in range(layers)]
        past_v = [torch.zeros_like(k) for k in past_k]
        for r, n in enumerate(past_len):
            if n:
                for layer, (k, v) in enumerate(past[r]):
                    past_k[layer][r, :, width - n :] = k[:, :n]
                    past_v[layer][r, :, width - n :] = v[:, :n]
                mask[r, width - n : width] = 1
        for layer in range(layers):
            cache.update(past_k[layer], past_v[layer], layer)
    for r, (context, n) in enumerate(zip(contexts, past_len)):
        own = context[n:]
        ids[r, block - len(own) :] = torch.tensor(own, dtype=torch.long)
        positions[r, block - len(own) :] = torch.arange(n, n + len(own))
        mask[r, width + block - len(own) :] = 1
    model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kw: cache})
    real = mask.bool()
    return [[(layer.keys[r][:, real[r]], layer.values[r][:, real[r]]) for layer in cache.layers] for r in range(len(contexts))]

"""Keys and values kept from one turn of an episode to the next, so a turn prefills only what is new.

A multi-turn rollout (agents/rollout.py) asks for the next turn of every live episode with
contexts that extend the previous turn's context by the turn itself and the environment's
observation. `TurnCache.store` keeps, per row, the keys and values the decode loop computed
(rollout/decode.py `row_kv`: the prompt and every fed token), keyed by the ids they cover.
They stay where the decode loop wrote them (`KeptRow`, a view) and are copied out only for a
row whose episode goes on; `keep_only` drops those of episodes that ended.
`prefix` builds the next batch's prefill from them: each row's stored keys (right-aligned,
left-padded) as the past, and one forward over the last `N` ids of every row, `N` the most
new ids any row has (rows with fewer recompute a few old ones, so the block is aligned).
The result is the prompt cache `sample_tokens` takes, laid out as a left-padded batch.

Positions are those of the real tokens, so the stored (rotated) keys stay valid. Weights
change after every update: the cache is cleared by the engine's `update_weights` and by each
rollout. C kernel only (CPU, float32): elsewhere nothing is stored and every turn prefills.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


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
        """(input_ids [B, W], attention [B, W], DynamicCache of ids[:, :-1], group = arange(B)) for sample_tokens."""
        device = next(model.parameters()).device
        contexts = [p[:-1] for p in prompts]  # the last id is fed by the decode loop
        block = max(len(c) - h for c, h in zip(contexts, hits))  # ids every row runs through the model
        past_len = [max(len(c) - block, 0) for c in contexts]
        width = max(past_len)
        keys = {r: tuple(prompts[r][:hit]) for r, hit in enumerate(hits) if hit}
        copies = {key: self.entries[key].layers() for key in set(keys.values())}  # two episodes may share one
        stored = {r: copies[key] for r, key in keys.items()}
        for key in copies:  # each is used once: the next turn keeps its own
            del self.entries[key]
        some = next(iter(stored.values()))
        layers, (heads, _, dim) = len(some), some[0][0].shape
        past_k = [some[0][0].new_zeros(len(prompts), heads, width, dim) for _ in range(layers)]
        past_v = [some[0][0].new_zeros(len(prompts), heads, width, dim) for _ in range(layers)]
        mask = torch.zeros(len(prompts), width + block + 1, dtype=torch.long, device=device)  # past | block | last id
        ids = torch.full((len(prompts), block), pad_id, dtype=torch.long, device=device)
        positions = torch.zeros(len(prompts), block, dtype=torch.long, device=device)
        for r, (context, n) in enumerate(zip(contexts, past_len)):
            if n:
                for layer, (k, v) in enumerate(stored[r]):
                    past_k[layer][r, :, width - n :] = k[:, :n]
                    past_v[layer][r, :, width - n :] = v[:, :n]
                mask[r, width - n : width] = 1
            own = context[n:]
            ids[r, block - len(own) :] = torch.tensor(own, dtype=torch.long)
            positions[r, block - len(own) :] = torch.arange(n, n + len(own))
            mask[r, width + block - len(own) : width + block] = 1
        mask[:, -1] = 1
        cache = DynamicCache(config=model.config)
        if width:
            for layer in range(layers):
                cache.update(past_k[layer], past_v[layer], layer)
        model(input_ids=ids, attention_mask=mask[:, :-1], position_ids=positions, use_cache=True, **{cache_kw: cache})
        input_ids = torch.full((len(prompts), width + block + 1), pad_id, dtype=torch.long, device=device)
        input_ids[:, -1] = torch.tensor([p[-1] for p in prompts], dtype=torch.long)
        return input_ids, mask, cache, torch.arange(len(prompts), device=device)

"""Mixtures (data.train as a list of sources): prompts drawn by weight, resumably, from sources laid end to end."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import replace

from rftkit.data.sampler import PromptSampler
from rftkit.types import Item


class MixtureSampler:
    """Draws from several sources by weight: source j of draw k is chosen by a generator seeded with (seed, k),
    and each source's rows come from its own PromptSampler, so the state is a counter plus two ints per source.

    Indices are global: source s's row i is `offsets[s] + i` (the sources' rows laid end to end), so the
    stage's `items[index]` and a checkpoint's in-flight indices work as they do for one file.
    """

    def __init__(self, sizes: list[int], weights: list[float], seed: int, shuffle: bool):
        if len(sizes) != len(weights) or not sizes or min(weights) <= 0:
            raise ValueError("a mixture needs one positive weight per source")
        total = float(sum(weights))
        self.cumulative = [sum(weights[: i + 1]) / total for i in range(len(weights))]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.seed, self.draws = seed, 0
        self.sources = [PromptSampler(n, seed + 7919 * (i + 1), shuffle) for i, n in enumerate(sizes)]

    def source_of(self, draw: int) -> int:
        """The source of the draw-th prompt: a pure function of (seed, draw), whatever came before."""
        u = random.Random(self.seed * 1_000_003 + draw).random()
        return next((i for i, c in enumerate(self.cumulative) if u < c), len(self.cumulative) - 1)

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            s = self.source_of(self.draws)
            self.draws += 1
            out.append(self.offsets[s] + self.sources[s].take(1)[0])
        return out

    def state(self) -> dict:
        return {"draws": self.draws, "sources": [s.state() for s in self.sources]}

    def restore(self, state: dict) -> None:
        if "sources" not in state or len(state["sources"]) != len(self.sources):
            raise ValueError(f"the checkpoint's sampler has {len(state.get('sources', [0]))} sources, the config "
                             f"{len(self.sources)}: resume with the data.train it was started with")
        self.draws = state["draws"]
        for sampler, s in zip(self.sources, state["sources"]):
            sampler.restore(s)


class SourceItems(Sequence):
    """The sources' Items laid end to end, each tagged with its source's name (Item.source): a view, not a copy."""

    def __init__(self, names: list[str], sources: list[Sequence[Item]]):
        self.names, self.sources = names, sources
        self.offsets = [sum(len(s) for s in sources[:i]) for i in range(len(sources))]
        self.total = sum(len(s) for s in sources)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.total))]
        if index < 0:
            index += self.total
        if not 0 <= index < self.total:
            raise IndexError(index)
        s = bisect.bisect_right(self.offsets, index) - 1
        item = self.sources[s][index - self.offsets[s]]
        return item if item.source == self.names[s] else tagged(item, self.names[s])

    def source_index(self, index: int) -> int:
        return bisect.bisect_right(self.offsets, index) - 1


def tagged(item: Item, name: str) -> Item:
    """A copy of `item` marked as drawn from source `name`."""
    return replace(item, source=name)

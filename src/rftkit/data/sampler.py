"""The order in which a run draws its training rows: epochs, reshuffled each epoch from (seed, epoch)."""

from __future__ import annotations

import random


class PromptSampler:
    """Epochs over the items, reshuffled each epoch from (seed, epoch): its state is two ints."""

    def __init__(self, n_items: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle = n_items, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._make_order()


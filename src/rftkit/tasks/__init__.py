"""Task generators: the bundled arithmetic and tool tasks write the demos' and the examples' data."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

SPLITS = ("test", "val", "train")  # hash bucket 0 -> test, 1 -> val, 2..9 -> train (and build corpus)


def distinct_problems(n: int, split: str, seed: int, draw: Callable[[random.Random], Any],
                      exclude: set[str] | None = None) -> list:
    """`n` distinct problems (by question) of one split drawn with `draw(rng)`, reproducible from `seed`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} (got {split!r})")
    rng, seen, out = random.Random(seed), set(exclude or ()), []
    while len(out) < n:
        p = draw(rng)
        if p.split == split and p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out

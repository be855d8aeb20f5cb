"""The Engine protocol: the boundary a local and a Ray-backed generator both implement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rftkit.types import Group, Item


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 64


class Engine(Protocol):
    def generate(self, items: list[Item], n: int, sampling: SamplingParams) -> list[Group]:
        """n completions for each item, in item order."""
        ...

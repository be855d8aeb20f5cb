"""The Engine protocol: the boundary a local and a Ray-backed generator both implement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rftkit.types import Completion, Group, Item


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 64
    think_budget: int | None = None  # reasoning.budget_tokens: at this many tokens the engine closes the thinking
    close_ids: tuple[int, ...] = ()  # the close tag's token ids it then feeds (rollout/budget.py)


class Engine(Protocol):
    """Produces Completions. The loop calls `update_weights` after every policy update, even when
    the engine shares the policy's module (the local engine), so an engine in another process
    or on another device (Ray, vLLM) drops in without the loop changing."""

    def generate(self, items: list[Item], n: int, sampling: SamplingParams) -> list[Group]:
        """n completions for each item, in item order; each carries its tokens' summed sampling
        entropy and the `version` of the weights that sampled it."""
        ...

    def generate_from_ids(self, prompts: list[list[int]], sampling: SamplingParams, reuse: bool = False) -> list[Completion]:
        """One completion per prompt of token ids, in order: multi-turn rollouts feed each episode's
        context exactly as sampled so far (agents/rollout.py), so nothing is re-tokenised. `reuse`:
        a prompt extending an earlier call's prompt + completion may start from that call's keys and
        values (an engine may ignore it)."""
        ...

    def update_weights(self, state_or_policy, version: int) -> None:
        """Sample with these weights from now on: a state dict, or a policy whose weights to read."""
        ...

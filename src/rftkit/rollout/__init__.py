"""Engines produce Completions. `Engine.generate(items, n, sampling) -> list[Group]`."""

from rftkit.rollout.base import Engine, SamplingParams

__all__ = ["Engine", "SamplingParams"]

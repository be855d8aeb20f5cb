"""The prompts a generating stage draws from: one file, or a weighted mixture of sources (docs/DATA.md).

A mixture (`data.train` as a list of {path, weight, name, grader, val}) is read source by source
with each source's own loader, format and columns; the sources' Items are laid end to end
(data/mixture.py `SourceItems`, each tagged with its source's name) and drawn by weight
(`MixtureSampler`). Sources that name a grader get it through one `by_source` grader
(graders/route.py), so every executor — threads or Ray — grades a mixture like any run.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from rftkit.data.loaders import load_source
from rftkit.data.mixture import MixtureSampler, SourceItems, tagged
from rftkit.data.sampler import PromptSampler
from rftkit.graders import check_grader_items
from rftkit.types import Group, Item


@dataclass
class Prompts:
    items: Sequence[Item]  # what the sampler's indices point into
    val_items: list[Item]  # data.val, graded by the run's grader
    source_val: dict[str, list[Item]] = field(default_factory=dict)  # per-source held-out Items (mixtures)
    names: list[str] = field(default_factory=list)  # the mixture's sources; empty for one file
    weights: list[float] = field(default_factory=list)

    def sampler(self, seed: int, shuffle: bool):
        if not self.names:
            return PromptSampler(len(self.items), seed, shuffle)
        return MixtureSampler([len(s) for s in self.items.sources], self.weights, seed, shuffle)


def grader_spec(cfg):
    """The run's grader spec: `grader`, or for a mixture whose sources name graders, a `by_source` router."""
    sources = cfg.data.train if isinstance(cfg.data.train, list) else []
    if not any(s.grader is not None for s in sources):
        return cfg.grader
    named = {s.name: s for s in cfg.data.sources}
    return {"type": "by_source", "default": cfg.grader,
            "graders": {name: s.grader if s.grader is not None else cfg.grader for name, s in named.items()}}


def load_prompts(cfg, grader) -> Prompts:
    """Every source's Items, checked against the grader that will score them (exit 2 on a bad row, before any model)."""
    data = cfg.data

    def load(path, fmt, columns, grader, where):
        items = load_source(path, fmt=fmt, columns=columns if columns is not None else data.columns,
                            require_reference=grader.needs_reference, skip_bad=data.skip_bad_lines)
        check_grader_items(grader, items, where, path)
        return items

    val = list(load(data.val, data.format, None, grader, "grader")) if data.val else []
    if not isinstance(data.train, list):
        return Prompts(load(data.train, data.format, None, grader, "grader"), val)
    sources = data.sources
    graders = getattr(grader, "graders", {})
    per_source, source_val = [], {}
    for s in sources:
        g, where = (graders[s.name], f"data.train[{s.name}].grader") if s.name in graders else (grader, "grader")
        per_source.append(load(s.path, s.format, s.columns, g, where))
        if s.val:
            source_val[s.name] = [tagged(item, s.name) for item in load(s.val, s.format, s.columns, g, where)]
    names = [s.name for s in sources]
    return Prompts(SourceItems(names, per_source), val, source_val, names, [s.weight for s in sources])


def source_metrics(groups: list[Group], names: list[str]) -> dict[str, float]:
    """Per source of a mixture: its mean reward and its share of the step's prompts (none for one file)."""
    if not names:
        return {}
    out = {}
    for name in names:
        mine = [g for g in groups if g.item.source == name]
        rewards = [r for g in mine for r in g.rewards if r is not None]
        out[f"critic/rewards/{name}/mean"] = statistics.fmean(rewards) if rewards else float("nan")
        out[f"data/{name}/prompt_share"] = len(mine) / max(len(groups), 1)
    return out

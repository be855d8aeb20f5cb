"""`by_source`: each sample graded by its mixture source's grader (parallel reward tracks in one run).

    grader: {type: by_source, graders: {arith: {type: answer_match}, code: {type: code}}, default: answer_match}

The training stage builds it from `data.train` sources that name their own `grader:` (docs/DATA.md);
an Item's `source` picks the grader, and an Item with no source (data.val) or an unlisted one gets
`default`. A sample with no grader to go to fails (masked), naming its source.
"""

from __future__ import annotations

from typing import Any

from rftkit.graders.base import Grader, build_grader
from rftkit.types import Item, Score


class SourceRouter:
    def __init__(self, graders: dict[str, Any], default: Any = None, name: str = "by_source", where: str = "grader"):
        if not isinstance(graders, dict) or not graders:
            raise ValueError("graders: must be a non-empty mapping of source name -> grader object")
        self.name = name
        self.graders: dict[str, Grader] = {key: build_grader(spec, where=f"{where}.graders.{key}")
                                           for key, spec in graders.items()}
        self.default = build_grader(default, where=f"{where}.default") if default is not None else None

    def grader_for(self, item: Item) -> Grader | None:
        return self.graders.get(item.source or "", self.default)

    @property
    def needs_reference(self) -> bool:
        return any(getattr(g, "needs_reference", False) for g in self._all())

    def grade(self, item: Item, text: str) -> Score:
        grader = self.grader_for(item)
        if grader is None:
            return Score.failed(f"other_error: no grader for source {item.source!r} (graders: {sorted(self.graders)})")
        return grader.grade(item, text)

    def check_item(self, item: Item) -> list[str]:
        grader = self.grader_for(item)
        return grader.check_item(item) if grader is not None and hasattr(grader, "check_item") else []

    def close(self) -> None:
        for grader in self._all():
            if hasattr(grader, "close"):
                grader.close()

    def _all(self) -> list[Grader]:
        return [*self.graders.values(), *([self.default] if self.default is not None else [])]

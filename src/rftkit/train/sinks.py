"""Metric sinks. `Sink.log(step, metrics)`; metrics.jsonl is always written."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol


class Sink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class JsonlSink:
    """One JSON object per line: {"step": s, "<metric>": value, ...}, flushed every write."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "a")

    def log(self, step: int, metrics: dict) -> None:
        self._f.write(json.dumps({"step": step, **{k: _clean(v) for k, v in metrics.items()}}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def truncate_after(path: Path, step: int) -> None:
    """Drop rows logged after `step`: a resumed run rewrites them, so no step appears twice."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
    path.write_text("".join(row + "\n" for row in kept))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

"""Every data format behind one Item stream (docs/DATA.md): JSONL, parquet in verl's layout, Hugging Face datasets.

`load_source(path, fmt=..., columns=...)` is what the training stages call; `rft data validate`
reads the same loaders. (Parquet and Hugging Face loaders: being written.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rftkit.data.items import load_items
from rftkit.types import Item


def load_source(path: str | Path, *, fmt: str = "auto", columns: dict[str, str] | None = None,
                require_reference: bool = False, skip_bad: bool = False) -> Sequence[Item]:
    """The Items of one source, indexable by position; a UserError naming every bad row."""
    return load_items(path, require_reference=require_reference, skip_bad=skip_bad)

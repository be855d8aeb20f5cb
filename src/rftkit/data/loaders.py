"""Every data format behind one Item stream (docs/DATA.md): JSONL, parquet in verl's layout, Hugging Face datasets.

`load_source(path, fmt=..., columns=...)` is what the training stages call; `rft data validate`
calls `validate_source`, which reads the same rows through the same checks but keeps only counts
and problems, so any size of file validates in bounded memory. Both read a source in one pass:
the sequence `load_source` returns holds where the good rows are (data/lazy.py), not the Items.

    format   path                         module
    jsonl    anything else                data/items.py + data/lazy.py
    parquet  FILE.parquet                 data/parquet.py (pyarrow)
    hf       a folder, or FOLDER:SPLIT    data/hf.py (datasets)

`columns` (data.columns) maps rftkit fields to a table's columns (data/columns.py); JSONL lines
are Items already and ignore it. pyarrow and datasets are the `data` extra, imported on first use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rftkit.data.items import ValidationReport, checked, validate_file
from rftkit.data.lazy import JSONLItems
from rftkit.errors import UserError
from rftkit.types import Item

FORMATS = ("auto", "jsonl", "parquet", "hf")


class JSONLSource:
    def __init__(self, path: Path):
        self.path = path

    def scan(self, require_reference: bool, keep: str) -> ValidationReport:
        return validate_file(self.path, require_reference=require_reference, keep=keep)

    def items(self, report: ValidationReport, require_reference: bool) -> JSONLItems:
        return JSONLItems(self.path, report.offsets, report.numbers, require_reference)


def resolve(path: str | Path, fmt: str = "auto", split: str | None = None) -> tuple[Path, str, str | None]:
    """(path, format, split): `auto` is parquet for a .parquet file, hf for a folder, else jsonl.

    `FOLDER:SPLIT` names a split of a Hugging Face DatasetDict when FOLDER exists and FOLDER:SPLIT does not.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown data format {fmt!r}; valid: {', '.join(FORMATS)}")
    text = str(path)
    p = Path(text)
    head, colon, tail = text.rpartition(":")
    if colon and tail and "/" not in tail and not p.exists() and Path(head).is_dir():
        if split is not None and split != tail:
            raise UserError(f"{text}: two splits asked for ({tail!r} in the path, {split!r} given)")
        p, split = Path(head), tail
    if fmt == "auto":
        fmt = "parquet" if p.suffix == ".parquet" else "hf" if p.is_dir() else "jsonl"
    if split is not None and fmt != "hf":
        raise UserError(f"{text}: a split names part of a Hugging Face dataset folder, not of a {fmt} file")
    return p, fmt, split


def open_source(path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None, split: str | None = None):
    """The source behind `path`: `.scan(require_reference, keep)` -> report, `.items(report, ...)` -> Sequence."""
    p, fmt, split = resolve(path, fmt, split)
    if fmt == "parquet":
        from rftkit.data.parquet import ParquetSource

        return ParquetSource(p, columns)
    if fmt == "hf":
        from rftkit.data.hf import HFSource

        return HFSource(p, split, columns)
    return JSONLSource(p)


def load_source(path: str | Path, *, fmt: str = "auto", columns: dict[str, str] | None = None,
                require_reference: bool = False, skip_bad: bool = False, split: str | None = None) -> Sequence[Item]:
    """The Items of one source, indexable by position; a UserError naming every bad row (as load_items does).

    The sequence holds the good rows' positions and reads an Item when asked (data/lazy.py)."""
    source = open_source(path, fmt, columns, split)
    report = checked(lambda: source.scan(require_reference, keep="index"), path, skip_bad)
    return source.items(report, require_reference)


def validate_source(path: str | Path, *, fmt: str = "auto", columns: dict[str, str] | None = None,
                    split: str | None = None, require_reference: bool = False) -> ValidationReport:
    """Every fault of every row, keeping no Item (report.items stays empty; report.n_good counts the good rows)."""
    return open_source(path, fmt, columns, split).scan(require_reference, keep="count")


def parse_columns(values: list[str] | None) -> dict[str, str]:
    """`--columns` values: `key=column` each, or one JSON object (`{"prompt": "question"}`)."""
    columns: dict[str, str] = {}
    for value in values or []:
        if value.lstrip().startswith("{"):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise UserError(f"--columns {value!r}: invalid JSON: {exc.msg}") from None
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
                raise UserError(f"--columns {value!r}: give an object of field -> column name strings")
            columns.update(parsed)
        else:
            key, eq, column = value.partition("=")
            if not eq or not key.strip() or not column.strip():
                raise UserError(f"--columns {value!r}: give key=column (e.g. prompt=question) or a JSON object")
            columns[key.strip()] = column.strip()
    return columns

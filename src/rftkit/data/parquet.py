"""Parquet files in verl's layout (data/columns.py), read with pyarrow one record batch at a time.

Validation iterates record batches, never the whole file. The sequence training draws from keeps the
good rows' numbers and reads a row from its row group, keeping the last few row groups read: Parquet
cannot seek inside a row group, so one row costs decoding its group once, and a sampler's draws that
land in the same group cost nothing more. Memory is bounded by a few row groups, not the file
(a file written as one huge row group is read whole once; write smaller ones, e.g. 10k rows).
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections import OrderedDict
from pathlib import Path

from rftkit.data.columns import ColumnMap, arrow_rows, require, schema_tree
from rftkit.data.items import ValidationReport, scan_rows
from rftkit.data.lazy import LazyItems
from rftkit.errors import UserError
from rftkit.types import Item

BATCH_ROWS = 1024  # rows per record batch while validating: a few MB of Python objects at a time
CACHED_GROUPS = 2


def _open(path: Path):
    pq = require("pyarrow.parquet")
    pa = require("pyarrow")
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file: {exc}") from None


class ParquetSource:
    def __init__(self, path: Path, columns: dict[str, str] | None):
        self.path = path
        self.file = _open(path)
        self.columns = ColumnMap.of(columns, schema_tree(self.file.schema_arrow), str(path))

    def scan(self, require_reference: bool, keep: str) -> ValidationReport:
        report = ValidationReport(path=self.path, n_lines=0, items=[], problems=[], unit="row")
        check = self.columns.check
        rows = arrow_rows(self.file.iter_batches(batch_size=BATCH_ROWS))
        return scan_rows(report, rows, lambda raw, n, seen: check(raw, n, seen, require_reference), keep)

    def items(self, report: ValidationReport, require_reference: bool) -> ParquetItems:
        return ParquetItems(self.path, report.numbers, self.columns, require_reference)


class ParquetItems(LazyItems):
    unit = "row"

    def __init__(self, path: Path, numbers: array, columns: ColumnMap, require_reference: bool):
        super().__init__(str(path), numbers, require_reference)
        self.path, self.columns = path, columns
        meta = _open(path).metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self.starts = [sum(sizes[:g]) for g in range(len(sizes))]  # first row (0-based) of each row group
        self._file, self._groups, self._lock = None, OrderedDict(), threading.Lock()

    def __getstate__(self):  # an open file and cached tables stay in the process that read them
        return {**self.__dict__, "_file": None, "_groups": OrderedDict(), "_lock": None}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def _group(self, g: int):
        with self._lock:
            if g in self._groups:
                self._groups.move_to_end(g)
                return self._groups[g]
            self._file = self._file or _open(self.path)
            table = self._file.read_row_group(g)
            self._groups[g] = table
            if len(self._groups) > CACHED_GROUPS:
                self._groups.popitem(last=False)
            return table

    def _read(self, index: int, number: int) -> tuple[Item | None, list[str]]:
        row = number - 1
        g = bisect.bisect_right(self.starts, row) - 1
        raw = self._group(g).slice(row - self.starts[g], 1).to_pylist()[0]
        return self.columns.check(raw, number, {}, self.require_reference)

"""Items read when they are asked for: a checked source's sequence holds where its good rows are, not the rows.

A 2 GB JSONL file of 2M Items is ~6 GB of Python objects; its index here is two int64 arrays
(32 MB). Each `items[i]` reads and checks one row again with the check that passed it, so the
Item is the one `load_items` gives (same id, `line-N` defaults included); a row that no longer
passes means the file changed under the run, which is an error, not a silent skip.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from pathlib import Path

from rftkit.data.items import _check_row, _parse_line
from rftkit.errors import UserError
from rftkit.types import Item


class LazyItems(Sequence):
    """len and items[i] over the good rows' numbers (1-based lines or rows); subclasses read one row."""

    unit = "line"

    def __init__(self, where: str, numbers: array, require_reference: bool):
        self.where, self.numbers, self.require_reference = where, numbers, require_reference

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        number = self.numbers[index]
        item, faults = self._read(index, number)
        if item is None:
            raise UserError(f"{self.where}:{'' if self.unit == 'line' else 'row '}{number} no longer passes the check "
                            f"it passed when the run started ({'; '.join(faults)}): was the data changed under the run?")
        return item

    def _read(self, index: int, number: int) -> tuple[Item | None, list[str]]:
        raise NotImplementedError


class JSONLItems(LazyItems):
    """A JSONL file's good lines: their byte offsets and line numbers (report.offsets, report.numbers)."""

    def __init__(self, path: Path, offsets: array, numbers: array, require_reference: bool):
        super().__init__(str(path), numbers, require_reference)
        self.path, self.offsets = path, offsets

    def _read(self, index: int, number: int) -> tuple[Item | None, list[str]]:
        with self.path.open("rb") as f:  # opened per read: a sequence that pickles and forks as plain data
            f.seek(self.offsets[index])
            raw = f.readline()
        value, error = _parse_line(raw.rstrip(b"\r\n"), number)
        if error or value is None:
            return None, [error or "blank line"]
        return _check_row(value, number, {}, self.require_reference)

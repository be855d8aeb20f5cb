"""Reading and checking JSONL item files (DESIGN.md, "Data format").

Every line is checked and every fault reported with its line number, so a user fixes a
file in one pass instead of one traceback at a time. Nothing is trained on a file with
bad lines unless the caller asks to skip them (`skip_bad=True`, config `data.skip_bad_lines=true`).

Reading a file keeps one of three things (`keep`): the Items (`load_items`), the byte offset of each
good line (`load_source`'s JSONL sequence reads a line when it is asked for it), or nothing but
counts and problems (`rft data validate`, so a 2 GB file validates in ~100 MB: docs/DATA.md).
The checks of a row (`_check_row`) serve the parquet and Hugging Face loaders too (data/columns.py),
which number rows instead of lines (`unit="row"`).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rftkit.data.tools import conversation_faults, tools_faults
from rftkit.errors import UserError
from rftkit.types import Item

VALID_ROLES = ("system", "user", "assistant", "tool", "developer")
_OWN_FIELDS = ("id", "messages", "reference_answer", "metadata")
KEEPS = ("items", "index", "count")
NO_MESSAGES = "no `messages` field"
NO_REFERENCE = "no `reference_answer` (at top level or as `metadata.reference_answer`)"


@dataclass
class Problem:
    """One fault of one line; a line with several faults gives several Problems."""

    line: int  # 1-based
    reason: str


@dataclass
class ValidationReport:
    path: Path
    n_lines: int  # non-blank lines (rows) seen
    items: list[Item]  # the good lines, in file order (keep="items" only)
    problems: list[Problem]
    n_good: int = 0  # good lines, whatever was kept
    unit: str = "line"  # what `Problem.line` numbers: "line" (JSONL) or "row" (parquet, Hugging Face datasets)
    label: str | None = None  # how messages name the source (a dataset's folder and split); default: path
    numbers: array = field(default_factory=lambda: array("q"))  # keep="index": the good lines' numbers
    offsets: array = field(default_factory=lambda: array("q"))  # keep="index": where each good line starts (JSONL)

    @property
    def ok(self) -> bool:
        """True only for a file that can be trained on as is: no bad line and at least one item."""
        return not self.problems and self.n_good > 0

    @property
    def bad_lines(self) -> list[int]:
        return sorted({p.line for p in self.problems})

    @property
    def name(self) -> str:
        return self.label or str(self.path)


class IdTable:
    """The ids seen so far, as `_check_id` uses them (`id in seen`, `seen[id]`, `seen[id] = line`), in 12 bytes a slot.

    A dict of 2.3M string ids holds ~310 MB; this open-addressing table of (64-bit hash, line) pairs holds
    ~50 MB, which is what lets a 2 GB file validate in bounded memory. The trade-off: two distinct ids whose
    64-bit hashes collide read as duplicates (about 1 in 10^7 for a file of 2M ids). The hash is Python's own,
    salted per process: the table lives for one scan.
    """

    def __init__(self, capacity: int = 1 << 10):
        self.mask, self.size = capacity - 1, 0
        self.keys, self.lines = array("q", [0]) * capacity, array("i", [0]) * capacity

    def _slot(self, item_id: str) -> tuple[int, int]:
        key = hash(item_id) or 1  # 0 marks an empty slot
        slot = key & self.mask
        while self.keys[slot] not in (0, key):
            slot = (slot + 1) & self.mask
        return slot, key

    def __contains__(self, item_id: str) -> bool:
        return self.keys[self._slot(item_id)[0]] != 0

    def __getitem__(self, item_id: str) -> int:
        slot, _ = self._slot(item_id)
        if not self.keys[slot]:
            raise KeyError(item_id)
        return self.lines[slot]

    def __setitem__(self, item_id: str, line: int) -> None:
        if 4 * (self.size + 1) > 3 * (self.mask + 1):  # grow past 3/4 full: linear probing slows down beyond
            self._grow()
        slot, key = self._slot(item_id)
        self.size += not self.keys[slot]
        self.keys[slot], self.lines[slot] = key, line

    def _grow(self) -> None:
        old_keys, old_lines = self.keys, self.lines
        capacity = 2 * (self.mask + 1)
        self.mask = capacity - 1
        self.keys, self.lines = array("q", [0]) * capacity, array("i", [0]) * capacity
        for key, line in zip(old_keys, old_lines):
            if not key:
                continue
            slot = key & self.mask
            while self.keys[slot]:
                slot = (slot + 1) & self.mask
            self.keys[slot], self.lines[slot] = key, line


def _reference(row: dict[str, Any]) -> Any:
    """`reference_answer` at top level, else under `metadata`; null counts as missing."""
    value = row.get("reference_answer")
    meta = row.get("metadata")
    if value is None and isinstance(meta, dict):
        value = meta.get("reference_answer")
    return value


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    """The row's other fields, flat, so graders read `item.<field>` wherever the user put it.

    A `metadata` object is merged in (top-level fields win); a `metadata` that is not an
    object is kept as a plain field rather than dropped.
    """
    meta = row.get("metadata")
    merged = {k: v for k, v in meta.items() if k != "reference_answer"} if isinstance(meta, dict) else {}
    merged.update({k: v for k, v in row.items() if k not in _OWN_FIELDS})
    if meta is not None and not isinstance(meta, dict):
        merged["metadata"] = meta
    return merged


def _message_faults(messages: Any, last_role: str = "user") -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["`messages` must be a non-empty list of {role, content} objects"]
    faults = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            faults.append(f"messages[{i}] is not an object")
            continue
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str):
            faults.append(f"messages[{i}]: `role` must be a string")
        elif role not in VALID_ROLES:
            faults.append(f"messages[{i}]: unknown role {role!r} (valid: {', '.join(VALID_ROLES)})")
        calls_only = role == "assistant" and msg.get("tool_calls") and content in (None, "")
        if calls_only:
            pass  # an assistant turn that only calls tools has no text
        elif not isinstance(content, str):
            faults.append(f"messages[{i}]: `content` must be a string")
        elif not content.strip() and role != "tool":
            faults.append(f"messages[{i}]: empty content")
    last = messages[-1]
    if isinstance(last, dict) and isinstance(last.get("role"), str) and last["role"] != last_role:
        what = "the user's turn the model answers" if last_role == "user" else f"the {last_role}'s turn to train on"
        faults.append(f"last message is from {last['role']!r}; it must be {what}")
    return faults


def _parse_line(raw: bytes, line: int) -> tuple[Any, str | None]:
    """The decoded JSON value of one line, or the reason it has none."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
    if line == 1:
        text = text.removeprefix("\ufeff")
    if not text.strip():
        return None, None
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except (ValueError, RecursionError) as exc:
        return None, f"invalid JSON: {exc}"


def _check_id(row: dict[str, Any], line: int, seen: dict[str, int], unit: str = "line") -> tuple[str, list[str]]:
    """The item's id (`line-N`, or `row-N`, when absent) and its faults; duplicates name the first line."""
    raw_id = row.get("id")
    if raw_id is None:
        item_id = f"{unit}-{line}"
    elif isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return f"{unit}-{line}", ["`id` must be a string or an integer"]
    elif not str(raw_id).strip():
        return f"{unit}-{line}", ["`id` is empty"]
    else:
        item_id = str(raw_id)
    if item_id in seen:
        what = "duplicate id" if raw_id is not None else "no `id`, and its default id"
        return item_id, [f"{what} {item_id!r} (first used on {unit} {seen[item_id]})"]
    seen[item_id] = line
    return item_id, []


def _check_row(row: Any, line: int, seen: dict[str, int], require_reference: bool,
               unit: str = "line") -> tuple[Item | None, list[str]]:
    if not isinstance(row, dict):
        return None, [f"not a JSON object (got {type(row).__name__ if row is not None else 'null'})"]
    item_id, faults = _check_id(row, line, seen, unit)
    if "messages" not in row:
        faults.append(NO_MESSAGES)
    else:
        message_faults = _message_faults(row["messages"])
        names = None
        if "tools" in row:  # OpenAI function definitions (data/tools.py)
            tool_faults, names = tools_faults(row["tools"])
            message_faults += tool_faults
        if isinstance(row["messages"], list):
            message_faults += conversation_faults(row["messages"], names)
        faults += message_faults
    reference = _reference(row)
    if require_reference and reference is None:
        faults.append(NO_REFERENCE)
    if faults:
        return None, faults
    return Item(id=item_id, messages=row["messages"], reference_answer=reference, metadata=_metadata(row)), []


def _open_checked(path: Path) -> None:
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the path of a .jsonl file")


def jsonl_rows(f) -> Iterable[tuple[int, int, Any, str | None]]:
    """(line number, byte offset, value, parse error) of every non-blank line of a file opened "rb"."""
    offset = 0
    for line, raw in enumerate(f, start=1):
        start, offset = offset, offset + len(raw)
        value, error = _parse_line(raw.rstrip(b"\r\n"), line)
        if value is not None or error is not None:
            yield line, start, value, error


def scan_rows(report: ValidationReport, rows: Iterable[tuple[int, int, Any, str | None]], check_row,
              keep: str = "items") -> ValidationReport:
    """Check each (number, offset, value, parse error) with `check_row(value, number, seen)`, into `report`.

    keep="items": the good values in report.items; "index": their numbers and offsets; "count": only n_good.
    """
    if keep not in KEEPS:
        raise ValueError(f"keep must be one of {KEEPS} (got {keep!r})")
    seen = IdTable()
    for number, offset, value, error in rows:
        report.n_lines += 1
        item, faults = (None, [error]) if error else check_row(value, number, seen)
        report.problems += [Problem(number, reason) for reason in faults]
        if item is None:
            continue
        report.n_good += 1
        if keep == "items":
            report.items.append(item)
        elif keep == "index":
            report.numbers.append(number)
            report.offsets.append(offset)
    return report


def validate_file(path: str | Path, require_reference: bool = False, check_row=None,
                  keep: str = "items") -> ValidationReport:
    """Check every line of a JSONL file; raises UserError only when the file cannot be read.

    `check_row(row, line, seen) -> (value | None, faults)` reads other row kinds (data/rows.py);
    the default reads Items. `keep`: what of the good lines the report holds (scan_rows).
    """
    check_row = check_row or (lambda row, line, seen: _check_row(row, line, seen, require_reference))
    path = Path(path)
    _open_checked(path)
    report = ValidationReport(path=path, n_lines=0, items=[], problems=[])
    try:
        with path.open("rb") as f:
            scan_rows(report, jsonl_rows(f), check_row, keep)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return report


def _empty(report: ValidationReport) -> str:
    return f"{report.name}: no items (" + ("the file is empty)" if report.unit == "line" else "it has no rows)")


def format_report(report: ValidationReport, max_problems: int | None = None) -> str:
    """`path:LINE: reason` (`path:row N: reason`) rows (at most `max_problems`), then a one-line summary."""
    if not report.n_lines:
        return _empty(report)
    shown = report.problems if max_problems is None else report.problems[:max_problems]
    where = "" if report.unit == "line" else f"{report.unit} "
    rows = [f"{report.name}:{where}{p.line}: {p.reason}" for p in shown]
    if len(shown) < len(report.problems):
        rows.append(f"... and {len(report.problems) - len(shown)} more problems")
    n_bad, unit = len(report.bad_lines), report.unit
    if n_bad:
        rows.append(f"{n_bad} bad {unit}{'s' if n_bad != 1 else ''} out of {report.n_lines} in {report.name}")
    else:
        rows.append(f"ok: {report.n_good} item{'s' if report.n_good != 1 else ''} in {report.name}")
    return "\n".join(rows)


def checked(read: Callable[[], ValidationReport], where: str | Path, skip_bad: bool) -> ValidationReport:
    """`read()`'s report when it can be trained on, else a UserError listing every bad line (good ones kept
    with skip_bad=True). Shared by load_items and load_source (data/loaders.py), so every format fails alike."""
    try:
        report = read()
    except UserError:
        raise
    except Exception as exc:  # a bug here must still reach the user as a message, not a traceback
        raise UserError(f"{where}: could not read items: {type(exc).__name__}: {exc}") from exc
    unit = report.unit
    if not report.n_lines:
        raise UserError(_empty(report))
    if not report.n_good:
        raise UserError(f"{format_report(report, max_problems=20)}\nno {unit} is usable; fix these {unit}s")
    if report.problems and not skip_bad:
        raise UserError(
            f"{format_report(report, max_problems=20)}\n"
            f"fix these {unit}s, or set data.skip_bad_lines=true to train on the {report.n_good} good ones"
        )
    return report


def load_items(path: str | Path, require_reference: bool = False, skip_bad: bool = False, check_row=None) -> list[Item]:
    """The file's items, or a UserError listing every bad line (the good ones with skip_bad=True)."""
    return checked(lambda: validate_file(path, require_reference=require_reference, check_row=check_row),
                   path, skip_bad).items


def item_from_row(row: Any, where: str, require_reference: bool = False, any_object: bool = False) -> Item:
    """One Item from an already-parsed JSON row (e.g. `rft grader run --item ITEM.json`).

    `any_object`: as OpenAI's grader endpoints take it, any JSON object is an item (their own
    examples send `{"reference_answer": "..."}`): without `messages` it is an item with no
    conversation, its fields reaching the grader as `item.<field>`."""
    if any_object and isinstance(row, dict) and "messages" not in row:
        item_id = row.get("id", "item")
        return Item(id=str(item_id), messages=[], reference_answer=_reference(row), metadata=_metadata(row))
    item, faults = _check_row(row, 1, {}, require_reference)
    if item is None:
        raise UserError(f"{where}: not a valid item: " + "; ".join(faults))
    return item

"""Reading and checking JSONL item files (DESIGN.md, "Data format").

Every line is checked and every fault reported with its line number, so a user fixes a
file in one pass instead of one traceback at a time. Nothing is trained on a file with
bad lines unless the caller asks to skip them (`skip_bad=True`, config `data.skip_bad_lines=true`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rftkit.data.tools import conversation_faults, tools_faults
from rftkit.errors import UserError
from rftkit.types import Item

VALID_ROLES = ("system", "user", "assistant", "tool", "developer")
_OWN_FIELDS = ("id", "messages", "reference_answer", "metadata")


@dataclass
class Problem:
    """One fault of one line; a line with several faults gives several Problems."""

    line: int  # 1-based
    reason: str


@dataclass
class ValidationReport:
    path: Path
    n_lines: int  # non-blank lines seen
    items: list[Item]  # the good lines, in file order
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        """True only for a file that can be trained on as is: no bad line and at least one item."""
        return not self.problems and bool(self.items)

    @property
    def bad_lines(self) -> list[int]:
        return sorted({p.line for p in self.problems})


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


def _check_id(row: dict[str, Any], line: int, seen: dict[str, int]) -> tuple[str, list[str]]:
    """The item's id (`line-N` when absent) and its faults; duplicates name the first line."""
    raw_id = row.get("id")
    if raw_id is None:
        item_id = f"line-{line}"
    elif isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return f"line-{line}", ["`id` must be a string or an integer"]
    elif not str(raw_id).strip():
        return f"line-{line}", ["`id` is empty"]
    else:
        item_id = str(raw_id)
    if item_id in seen:
        what = "duplicate id" if raw_id is not None else "no `id`, and its default id"
        return item_id, [f"{what} {item_id!r} (first used on line {seen[item_id]})"]
    seen[item_id] = line
    return item_id, []


def _check_row(row: Any, line: int, seen: dict[str, int], require_reference: bool) -> tuple[Item | None, list[str]]:
    if not isinstance(row, dict):
        return None, [f"not a JSON object (got {type(row).__name__ if row is not None else 'null'})"]
    item_id, faults = _check_id(row, line, seen)
    if "messages" not in row:
        faults.append("no `messages` field")
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
        faults.append("no `reference_answer` (at top level or as `metadata.reference_answer`)")
    if faults:
        return None, faults
    return Item(id=item_id, messages=row["messages"], reference_answer=reference, metadata=_metadata(row)), []


def _open_checked(path: Path) -> None:
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the path of a .jsonl file")


def validate_file(path: str | Path, require_reference: bool = False, check_row=None) -> ValidationReport:
    """Check every line of a JSONL file; raises UserError only when the file cannot be read.

    `check_row(row, line, seen) -> (value | None, faults)` reads other row kinds (data/rows.py);
    the default reads Items.
    """
    check_row = check_row or (lambda row, line, seen: _check_row(row, line, seen, require_reference))
    path = Path(path)
    _open_checked(path)
    report = ValidationReport(path=path, n_lines=0, items=[], problems=[])
    seen: dict[str, int] = {}
    try:
        with path.open("rb") as f:
            for line, raw in enumerate(f, start=1):
                value, error = _parse_line(raw.rstrip(b"\r\n"), line)
                if value is None and error is None:
                    continue
                report.n_lines += 1
                item, faults = (None, [error]) if error else check_row(value, line, seen)
                report.problems += [Problem(line, reason) for reason in faults]
                if item is not None:
                    report.items.append(item)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return report


def format_report(report: ValidationReport, max_problems: int | None = None) -> str:
    """`path:LINE: reason` rows (at most `max_problems`), then a one-line summary."""
    if not report.n_lines:
        return f"{report.path}: no items (the file is empty)"
    shown = report.problems if max_problems is None else report.problems[:max_problems]
    rows = [f"{report.path}:{p.line}: {p.reason}" for p in shown]
    if len(shown) < len(report.problems):
        rows.append(f"... and {len(report.problems) - len(shown)} more problems")
    n_bad = len(report.bad_lines)
    if n_bad:
        rows.append(f"{n_bad} bad line{'s' if n_bad != 1 else ''} out of {report.n_lines} in {report.path}")
    else:
        rows.append(f"ok: {len(report.items)} item{'s' if len(report.items) != 1 else ''} in {report.path}")
    return "\n".join(rows)


def load_items(path: str | Path, require_reference: bool = False, skip_bad: bool = False, check_row=None) -> list[Item]:
    """The file's items, or a UserError listing every bad line (the good ones with skip_bad=True)."""
    try:
        report = validate_file(path, require_reference=require_reference, check_row=check_row)
    except UserError:
        raise
    except Exception as exc:  # a bug here must still reach the user as a message, not a traceback
        raise UserError(f"{path}: could not read items: {type(exc).__name__}: {exc}") from exc
    if not report.n_lines:
        raise UserError(f"{report.path}: no items (the file is empty)")
    if not report.items:
        raise UserError(f"{format_report(report, max_problems=20)}\nno line is usable; fix these lines")
    if report.problems and not skip_bad:
        n_good = len(report.items)
        raise UserError(
            f"{format_report(report, max_problems=20)}\n"
            f"fix these lines, or set data.skip_bad_lines=true to train on the {n_good} good ones"
        )
    return report.items


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

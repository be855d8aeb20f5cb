"""Rows of a table (parquet in verl's layout, a Hugging Face dataset) read as Items, with the JSONL checks.

verl's layout, as its `examples/data_preprocess/gsm8k.py` writes it, is what a table is read as
unless `data.columns` says otherwise:

    prompt        list of {role, content} messages (or a plain string: one user message)
    reward_model  {style, ground_truth}          ground_truth -> reference_answer
    data_source, ability, any other column      -> item.<column> (metadata)
    extra_info    {split, index, ...}            merged into metadata; `index` is the item's id

A row is turned into the JSONL row it stands for (`ColumnMap.to_row`) and checked by the same
`_check_row` as a JSONL line, so the rules cannot drift apart; its faults are `FILE:row N: reason`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rftkit.data.items import NO_MESSAGES, NO_REFERENCE, _check_row
from rftkit.errors import UserError
from rftkit.types import Item

# data.columns keys: rftkit field -> the column that holds it
COLUMN_KEYS = {
    "id": "the item's id (default: `id`, else `extra_info.index`, else row-N)",
    "messages": "a list-of-{role, content} column (default: verl's `prompt`, else `messages`)",
    "prompt": "a string column, read as one user message",
    "system": "with `prompt`: a string column read as the system message",
    "reference_answer": "the reference answer; dotted for a struct's field (default: `reward_model.ground_truth`, "
                        "else `reference_answer`)",
}
_CONSUMED = ("extra_info",)  # merged into metadata rather than kept as one field
INSTALL = 'pip install "rftkit[data]"'


def require(module: str):
    """Import an optional data dependency (pyarrow, datasets), or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"reading parquet and Hugging Face datasets needs {module.split('.')[0]}: {INSTALL}") from None


def schema_tree(schema) -> dict[str, Any]:
    """An Arrow schema as nested dicts: a struct column maps to its fields, any other column to None."""
    pa = require("pyarrow")

    def tree(t):
        if not pa.types.is_struct(t):
            return None
        return {t.field(i).name: tree(t.field(i).type) for i in range(t.num_fields)}

    return {f.name: tree(f.type) for f in schema}


def _has(tree: dict[str, Any] | None, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _paths(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for name, sub in tree.items():
        out.append(prefix + name)
        if isinstance(sub, dict):
            out += _paths(sub, f"{prefix}{name}.")
    return out


def _get(row: dict[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _message(msg: Any) -> Any:
    """A message struct without the fields Arrow filled with nulls (a `tool_calls` column every message has)."""
    if not isinstance(msg, dict):
        return msg
    return {k: v for k, v in msg.items() if v is not None or k in ("role", "content")}


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True)
class ColumnMap:
    """Which columns make an Item's conversation, id and reference answer; every other column is metadata."""

    conversation: str  # the column the messages come from
    kind: str  # "any": verl's prompt, a message list or a string; "messages": a list; "prompt": a string
    system: str | None = None  # with kind "prompt": the system message's column
    id: str | None = None  # dotted path of the id
    reference: str | None = None  # dotted path of the reference answer

    @classmethod
    def of(cls, columns: dict[str, str] | None, tree: dict[str, Any], where: str) -> ColumnMap:
        """The map for a table whose schema is `tree`; a UserError for a key or column that does not exist."""
        columns = dict(columns or {})
        listing = ", ".join(_paths(tree)) or "none"
        for key, path in columns.items():
            if key not in COLUMN_KEYS:
                raise UserError(f"unknown data.columns key {key!r}; valid: {', '.join(COLUMN_KEYS)}")
            if not isinstance(path, str) or not path:
                raise UserError(f"data.columns.{key} must be a column name (got {path!r})")
            if not _has(tree, path):
                raise UserError(f"{where} has no column {path!r} (data.columns.{key}); its columns: {listing}")
        if "messages" in columns and "prompt" in columns:
            raise UserError("data.columns: give `messages` (a message-list column) or `prompt` (a string column), not both")
        if "system" in columns and "prompt" not in columns:
            raise UserError("data.columns.system goes with data.columns.prompt (a string column for the user's turn)")
        if "messages" in columns:
            conversation, kind = columns["messages"], "messages"
        elif "prompt" in columns:
            conversation, kind = columns["prompt"], "prompt"
        elif "prompt" in tree:
            conversation, kind = "prompt", "any"
        elif "messages" in tree:
            conversation, kind = "messages", "messages"
        else:
            raise UserError(f"{where} has no `prompt` column (verl's layout) or `messages` column; name the column "
                            f"with data.columns (e.g. {{prompt: question}}); its columns: {listing}")
        first = next((p for p in ("id", "extra_info.index") if _has(tree, p)), None)
        reference = next((p for p in ("reward_model.ground_truth", "reference_answer") if _has(tree, p)), None)
        return cls(conversation, kind, columns.get("system"), columns.get("id", first),
                   columns.get("reference_answer", reference))

    def to_row(self, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The JSONL row this table row stands for, and the faults of its conversation columns."""
        skip = {self.conversation, self.system, *_CONSUMED}
        row = {k: v for k, v in raw.items() if k not in skip and k != "id"}
        extra, meta = raw.get("extra_info"), raw.get("metadata")
        if isinstance(extra, dict) and (meta is None or isinstance(meta, dict)):
            row["metadata"] = {**extra, **(meta or {})}  # _check_row merges it; the columns win
        elif extra is not None:
            row["extra_info"] = extra  # not a struct (or beside a metadata that is not one): kept as one field
        item_id = _get(raw, self.id) if self.id else None
        if item_id is not None:
            row["id"] = item_id
        if self.reference:
            row["reference_answer"] = _get(raw, self.reference)
        messages, faults = self._messages(raw)
        if messages is not None:
            row["messages"] = messages
        return row, faults

    def _messages(self, raw: dict[str, Any]) -> tuple[list | None, list[str]]:
        col, value = self.conversation, raw.get(self.conversation)
        if isinstance(value, str) and self.kind in ("any", "prompt"):
            messages = [{"role": "user", "content": value}]
        elif isinstance(value, list) and self.kind in ("any", "messages"):
            messages = [_message(m) for m in value]
        else:
            expected = {"any": "a list of {role, content} messages or a string",
                        "messages": "a list of {role, content} messages", "prompt": "a string"}[self.kind]
            return None, [f"`{col}` must be {expected} (got {_type(value)})"]
        system = raw.get(self.system) if self.system else None
        if isinstance(system, str) and system:
            messages.insert(0, {"role": "system", "content": system})
        elif system not in (None, ""):
            return None, [f"`{self.system}` must be a string (got {_type(system)})"]
        return messages, []

    def check(self, raw: Any, number: int, seen, require_reference: bool) -> tuple[Item | None, list[str]]:
        """`_check_row` on the row's JSONL form; the faults it words for JSONL name the columns instead."""
        row, faults = self.to_row(raw)
        item, more = _check_row(row, number, seen, require_reference, unit="row")
        missing = (f"`{self.reference}` is null" if self.reference else
                   "no `reward_model.ground_truth` or `reference_answer` column; name one with data.columns.reference_answer")
        faults += [f"no reference answer ({missing})" if f == NO_REFERENCE else f for f in more if f != NO_MESSAGES]
        return (None if faults else item), faults


def arrow_rows(batches: Iterable) -> Iterable[tuple[int, int, Any, None]]:
    """(row number, -1, row, None) of Arrow record batches, for items.scan_rows; numbers start at 1."""
    number = 0
    for batch in batches:
        for raw in batch.to_pylist():
            number += 1
            yield number, -1, raw, None

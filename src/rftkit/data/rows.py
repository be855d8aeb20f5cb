"""The row kinds of the offline algorithms, read with the same line-by-line checks as Items.

- SFT (`sft`): OpenAI chat fine-tuning rows, `messages` ending with the assistant's turn;
  or `messages` ending with the user's turn plus a `response` string. Every assistant turn
  is trained on (data/rows.py only reads; algorithms/sft.py turns turns into examples).
- Preference (`dpo`, `reward_model`): `messages` (the prompt, ending with the user's turn)
  plus `chosen` and `rejected`, each a string, an assistant message, or a one-message list
  (TRL's conversational form); optional numeric `margin`.
- Logged (`asft`): `messages`, `response` and `reward` (a number, or null for a failed
  grading: the row is kept and gets weight 0).
- Unpaired (`kto`): `messages` (the prompt), `completion` (or its alias `response`; a string,
  an assistant message or a one-message list) and `label`, a JSON boolean: true for a
  desirable answer, false for an undesirable one (TRL's unpaired-preference format, with the
  prompt as `messages`).

Each fault is reported as `FILE:LINE: reason`, like Items, and nothing trains on a file
with bad lines unless data.skip_bad_lines is set.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rftkit.data.items import _check_id, _message_faults, load_items


@dataclass
class Conversation:
    """An SFT row: messages with at least one assistant turn (the turns trained on)."""

    id: str
    messages: list[dict[str, str]]


@dataclass
class PreferencePair:
    id: str
    messages: list[dict[str, str]]  # the prompt, ending with the user's turn
    chosen: str
    rejected: str
    margin: float | None = None


@dataclass
class LoggedResponse:
    id: str
    messages: list[dict[str, str]]
    response: str
    reward: float | None  # None: the grading failed; the row gets weight 0


@dataclass
class UnpairedExample:
    id: str
    messages: list[dict[str, str]]  # the prompt, ending with the user's turn
    completion: str
    label: bool  # True: desirable


def _answer_text(value: Any, name: str) -> tuple[str | None, list[str]]:
    """A response given as a string, {"role": "assistant", "content": ...} or a one-message list of that."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        if value.get("role", "assistant") != "assistant":
            return None, [f"`{name}` is a message from {value.get('role')!r}; it must be the assistant's"]
        value = value.get("content")
    if not isinstance(value, str):
        return None, [f"`{name}` must be a string (or an assistant message)"]
    if not value.strip():
        return None, [f"`{name}` is empty"]
    return value, []


def _number(value: Any, name: str, nullable: bool) -> tuple[float | None, list[str]]:
    if value is None:
        return None, [] if nullable else [f"`{name}` is missing"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, [f"`{name}` must be a finite number (got {value!r})"]
    return float(value), []


def _check_conversation(row: Any, line: int, seen: dict[str, int]):
    if not isinstance(row, dict):
        return None, ["not a JSON object"]
    row_id, faults = _check_id(row, line, seen)
    messages = row.get("messages")
    if "response" in row:
        faults += _message_faults(messages)
        response, more = _answer_text(row["response"], "response")
        faults += more
        if not faults:
            messages = [*messages, {"role": "assistant", "content": response}]
    elif "messages" not in row:
        faults.append("no `messages` field")
    else:
        faults += _message_faults(messages, last_role="assistant")
        if not faults and messages[0]["role"] == "assistant" and len(messages) == 1:
            faults.append("the only message is the assistant's: there is no prompt to answer")
    return (None, faults) if faults else (Conversation(row_id, messages), [])


def _check_preference(row: Any, line: int, seen: dict[str, int]):
    if not isinstance(row, dict):
        return None, ["not a JSON object"]
    row_id, faults = _check_id(row, line, seen)
    faults += _message_faults(row["messages"]) if "messages" in row else ["no `messages` field (the prompt)"]
    answers = {}
    for name in ("chosen", "rejected"):
        if name not in row:
            faults.append(f"no `{name}` field")
            continue
        answers[name], more = _answer_text(row[name], name)
        faults += more
    margin, more = _number(row.get("margin"), "margin", nullable=True)
    faults += more
    if not faults and answers["chosen"] == answers["rejected"]:
        faults.append("`chosen` and `rejected` are the same text: the pair says nothing")
    if faults:
        return None, faults
    return PreferencePair(row_id, row["messages"], answers["chosen"], answers["rejected"], margin), []


def _check_logged(row: Any, line: int, seen: dict[str, int]):
    if not isinstance(row, dict):
        return None, ["not a JSON object"]
    row_id, faults = _check_id(row, line, seen)
    faults += _message_faults(row["messages"]) if "messages" in row else ["no `messages` field (the prompt)"]
    response, more = _answer_text(row.get("response"), "response") if "response" in row else (None, ["no `response` field"])
    faults += more
    if "reward" not in row:
        faults.append("no `reward` field (use null for a failed grading)")
    reward, more = _number(row.get("reward"), "reward", nullable=True)
    faults += more
    return (None, faults) if faults else (LoggedResponse(row_id, row["messages"], response, reward), [])


def _check_unpaired(row: Any, line: int, seen: dict[str, int]):
    if not isinstance(row, dict):
        return None, ["not a JSON object"]
    row_id, faults = _check_id(row, line, seen)
    if "messages" in row:
        faults += _message_faults(row["messages"])
    else:
        trl = "; TRL's `prompt` is spelled `messages` here" if "prompt" in row else ""
        faults.append(f"no `messages` field (the prompt{trl})")
    names = [name for name in ("completion", "response") if name in row]
    completion = None
    if not names:
        faults.append("no `completion` field (the answer; `response` is accepted too)")
    elif len(names) == 2:
        faults.append("both `completion` and `response`: give the answer once")
    else:
        completion, more = _answer_text(row[names[0]], names[0])
        faults += more
    label = row.get("label")
    if "label" not in row:
        faults.append("no `label` field (true for a desirable answer, false for an undesirable one)")
    elif not isinstance(label, bool):
        faults.append(f"`label` must be true or false, a JSON boolean (got {json.dumps(label)})")
    return (None, faults) if faults else (UnpairedExample(row_id, row["messages"], completion, label), [])


ROW_KINDS = {"conversation": _check_conversation, "preference": _check_preference, "logged": _check_logged,
             "unpaired": _check_unpaired}


def load_rows(path: str | Path, kind: str, skip_bad: bool = False) -> list:
    """The rows of a JSONL file of one ROW_KINDS kind, or a UserError naming every bad line."""
    return load_items(path, skip_bad=skip_bad, check_row=ROW_KINDS[kind])

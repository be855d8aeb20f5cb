"""Tool calls in generated text, Hermes/Qwen style: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

`parse_turn(text)` splits an assistant turn into its visible content, the well-formed calls
and one error per malformed call (unclosed tag, JSON that does not parse, no `name`,
`arguments` not an object). A malformed call is something the model did, so it becomes an
observation the model sees ("error: ..."), counted as `env/tool_call_errors`; parsing never
raises.

    >>> turn = parse_turn('Let me add. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', "c0")
    >>> turn.content, [(c.name, c.arguments) for c in turn.calls], turn.errors
    ('Let me add.', [('add', {'a': 1})], [])
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_CALLS = 8  # calls read from one turn; more are errors
_CALL_RE = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.S)


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def message(self) -> dict[str, Any]:
        """The OpenAI `tool_calls` entry."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": json.dumps(self.arguments)}}


@dataclass
class CallError:
    """A call the model wrote that cannot be run; `id` lets its error observation answer it."""

    id: str
    message: str


@dataclass
class Turn:
    content: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[CallError] = field(default_factory=list)

    @property
    def wants_tools(self) -> bool:
        return bool(self.calls or self.errors)

    def message(self) -> dict[str, Any]:
        """The assistant message in OpenAI format."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.calls:
            out["tool_calls"] = [c.message() for c in self.calls]
        return out


def parse_turn(text: str, id_prefix: str) -> Turn:
    """The assistant turn `text` as content, calls and call errors; ids are `{id_prefix}-{k}`."""
    calls, errors = [], []
    for k, match in enumerate(_CALL_RE.finditer(text)):
        call_id = f"{id_prefix}-{k}"
        if k >= MAX_CALLS:
            errors.append(CallError(call_id, f"more than {MAX_CALLS} tool calls in one turn"))
            continue
        if not match.group(0).endswith(CLOSE):
            errors.append(CallError(call_id, f"{OPEN} without {CLOSE}"))
            continue
        call, why = _call(match.group(1).strip(), call_id)
        if call is None:
            errors.append(CallError(call_id, why))
        else:
            calls.append(call)
    return Turn(content=_CALL_RE.sub("", text).strip(), calls=calls, errors=errors)


def _call(body: str, call_id: str) -> tuple[ToolCall | None, str]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return None, f"the tool call is not JSON ({str(exc)[:120]}): {body[:200]!r}"
    if not isinstance(data, dict):
        return None, f"the tool call must be a JSON object with `name` and `arguments`, not {type(data).__name__}"
    name, arguments = data.get("name"), data.get("arguments", {})
    if not isinstance(name, str) or not name:
        return None, "the tool call has no `name` string"
    if isinstance(arguments, str):  # some models write the arguments as JSON text, as the OpenAI API carries them
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return None, f"the arguments of {name!r} are not a JSON object: {arguments[:200]!r}"
    if not isinstance(arguments, dict):
        return None, f"the arguments of {name!r} must be a JSON object, not {type(arguments).__name__}"
    return ToolCall(call_id, name, arguments), ""

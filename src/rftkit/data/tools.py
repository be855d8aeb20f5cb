"""Checks of the tool parts of an item: `tools` (OpenAI function definitions) and a history with tool calls.

    {"messages": [{"role": "user", "content": "What is 4821 * 37?"},
                  {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "calculator", "arguments": "{\\"expression\\": \\"4821 * 37\\"}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "178377"},
                  {"role": "user", "content": "And times 2?"}],
     "tools": [{"type": "function", "function": {"name": "calculator", "parameters": {...}}}]}

Each fault names the message or tool by index, as the rest of data/items.py does.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError


def tools_faults(tools: Any) -> tuple[list[str], set[str]]:
    """(faults of a `tools` list, the function names it defines)."""
    if not isinstance(tools, list):
        return ["`tools` must be a list of function definitions"], set()
    faults, names = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or (tool.get("type", "function") != "function"):
            faults.append(f"{where}: expected {{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": ...}}}}")
            continue
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            faults.append(f"{where}.function: `name` must be a non-empty string")
            continue
        if name in names:
            faults.append(f"{where}.function: duplicate tool name {name!r}")
        names.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            faults.append(f"{where}.function: `description` must be a string")
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, dict) or params.get("type", "object") != "object":
                faults.append(f"{where}.function.parameters: must be a JSON schema of type object")
                continue
            try:
                Draft202012Validator.check_schema(params)
            except SchemaError as exc:
                faults.append(f"{where}.function.parameters: not a valid JSON schema: {exc.message}")
    return faults, names


def conversation_faults(messages: list[Any], names: set[str] | None) -> list[str]:
    """Tool calls and results in a history: call ids unique, every result answering an open call,
    every call answered before the next turn, names among `names` (when the item defines tools)."""
    faults: list[str] = []
    open_calls: dict[str, int] = {}  # call id -> message index
    seen: set[str] = set()
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role in ("user", "assistant") and open_calls:
            first = min(open_calls, key=open_calls.get)
            faults.append(f"messages[{open_calls[first]}]: tool call {first!r} has no `tool` result before messages[{i}]")
            open_calls.clear()
        if role == "assistant" and msg.get("tool_calls") is not None:
            faults += _calls_faults(msg["tool_calls"], i, names, seen, open_calls)
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str):
                faults.append(f"messages[{i}]: a `tool` message needs the `tool_call_id` it answers")
            elif call_id not in open_calls:
                known = "answered already" if call_id in seen else "no earlier assistant message made it"
                faults.append(f"messages[{i}]: `tool_call_id` {call_id!r} answers no open tool call ({known})")
            else:
                del open_calls[call_id]
    return faults


def _calls_faults(calls: Any, i: int, names: set[str] | None, seen: set[str], open_calls: dict[str, int]) -> list[str]:
    if not isinstance(calls, list) or not calls:
        return [f"messages[{i}]: `tool_calls` must be a non-empty list"]
    faults = []
    for k, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{k}]"
        fn = call.get("function") if isinstance(call, dict) else None
        call_id = call.get("id") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            faults.append(f"{where}: expected {{\"id\": ..., \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}")
            continue
        if not isinstance(call_id, str) or not call_id:
            faults.append(f"{where}: `id` must be a non-empty string")
        elif call_id in seen:
            faults.append(f"{where}: duplicate tool call id {call_id!r}")
        else:
            seen.add(call_id)
            open_calls[call_id] = i
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            faults.append(f"{where}.function: `name` must be a non-empty string")
        elif names is not None and name not in names:
            faults.append(f"{where}.function: tool {name!r} is not in the item's `tools` ({', '.join(sorted(names))})")
        arguments = fn.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                faults.append(f"{where}.function: `arguments` is not valid JSON")
                continue
        if not isinstance(arguments, dict):
            faults.append(f"{where}.function: `arguments` must be a JSON object")
    return faults

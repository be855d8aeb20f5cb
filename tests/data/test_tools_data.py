"""Items with `tools` and tool-call histories: `rft data validate` names each fault with its line."""

from __future__ import annotations

import json

from rftkit.data import validate_file

from tests.conftest import run_cli

CALC = {"type": "function", "function": {"name": "calculator", "description": "Evaluate.", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}


def call(call_id, name="calculator", arguments='{"expression": "2 * 3"}'):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def history(*calls, results=(), then="And times 4?"):
    messages = [{"role": "user", "content": "What is 2 * 3?"}]
    if calls:
        messages.append({"role": "assistant", "content": None, "tool_calls": list(calls)})
    messages += [{"role": "tool", "tool_call_id": cid, "content": "6"} for cid in results]
    messages.append({"role": "user", "content": then})
    return messages


GOOD = [
    {"id": "plain-with-tools", "messages": [{"role": "user", "content": "What is 2 * 3?"}], "tools": [CALC]},
    {"id": "answered-call", "messages": history(call("c1"), results=["c1"]), "tools": [CALC]},
    {"id": "two-calls", "messages": history(call("c1"), call("c2"), results=["c1", "c2"])},  # no tools: names not checked
]
BAD = [  # (row, the fault its line must name)
    ({"id": "b1", "messages": [{"role": "user", "content": "x"}], "tools": {"calculator": {}}}, "`tools` must be a list"),
    ({"id": "b2", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools[0]: expected"),
    ({"id": "b3", "messages": [{"role": "user", "content": "x"}], "tools": [CALC, CALC]}, "duplicate tool name 'calculator'"),
    ({"id": "b4", "messages": [{"role": "user", "content": "x"}], "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "strng"}}}}}]},
     "tools[0].function.parameters: not a valid JSON schema"),
    ({"id": "b5", "messages": history(call("c1", name="teleport"), results=["c1"]), "tools": [CALC]},
     "tool 'teleport' is not in the item's `tools`"),
    ({"id": "b6", "messages": history(call("c1", arguments="{oops"), results=["c1"])}, "`arguments` is not valid JSON"),
    ({"id": "b7", "messages": history(call("c1"), results=["c9"])}, "`tool_call_id` 'c9' answers no open tool call"),
    ({"id": "b8", "messages": history(call("c1"))}, "tool call 'c1' has no `tool` result before messages[2]"),
    ({"id": "b9", "messages": history(call("c1"), call("c1"), results=["c1"])}, "duplicate tool call id 'c1'"),
    ({"id": "b10", "messages": history(call("c1"), results=["c1", "c1"])}, "answers no open tool call (answered already)"),
]


def test_tool_items_load_with_their_tools(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    report = validate_file(path)
    assert report.ok, report.problems
    assert report.items[0].metadata["tools"] == [CALC]
    assert report.items[1].messages[1]["tool_calls"][0]["id"] == "c1"


def test_every_tool_fault_named_with_its_line(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [GOOD[0]] + [r for r, _ in BAD]))
    report = validate_file(path)
    by_line = {}
    for problem in report.problems:
        by_line.setdefault(problem.line, []).append(problem.reason)
    assert sorted(by_line) == list(range(2, len(BAD) + 2))
    for line, (_, fault) in enumerate(BAD, start=2):
        assert any(fault in reason for reason in by_line[line]), (line, fault, by_line[line])


def test_cli_reports_them(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [GOOD[1], BAD[4][0]]))
    result = run_cli("data", "validate", str(path))
    assert result.returncode == 1
    assert "items.jsonl:2: messages[1].tool_calls[0].function: tool 'teleport'" in result.stdout + result.stderr

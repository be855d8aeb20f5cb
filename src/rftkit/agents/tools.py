"""Tools from a Python file, described to the model as OpenAI function schemas and run in the sandbox.

The file is read, never imported, on the host: `schemas_from_source` walks its syntax tree
(public top-level functions; type hints become JSON-schema types, the docstring's first
paragraph the description and its `Args:` lines the parameters'), so a tools file cannot run
code in the trainer. Each call runs in the sandboxed worker processes that run python
graders (graders/sandbox.py; `tool_call` harness): the file is executed afresh, the function
called with the model's arguments, and what it returns comes back as text, at most
`max_chars` of it. Whatever goes wrong - unknown tool, arguments that do not match the
schema, an exception, a hang past `timeout_s`, megabytes of output, a network call (the
sandbox has none) - is an `error: ...` observation, never an exception.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rftkit.errors import ConfigError
from rftkit.graders import sandbox

JSON_TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean", "list": "array",
              "dict": "object", "List": "array", "Dict": "object"}
CHECKS = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
          "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict)}
_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


def load_source(path: str | Path) -> str:
    path = Path(path)
    try:
        source = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"environment.tools: cannot read {path}: {exc}") from None
    try:
        ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"environment.tools: {path}, line {exc.lineno}: syntax error: {exc.msg}. "
                          f"Fix the file; `rft env validate` checks it without a model") from None
    return source


def schemas_from_source(source: str, filename: str = "tools.py") -> list[dict[str, Any]]:
    """OpenAI function definitions of the file's public top-level functions."""
    tree = ast.parse(source, filename=filename)
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            out.append(_schema(node))
    if not out:
        raise ConfigError(f"environment.tools: {filename} defines no public function (a `def name(...)` at top level)")
    return out


def _schema(fn: ast.FunctionDef) -> dict[str, Any]:
    doc = ast.get_docstring(fn) or ""
    summary = doc.split("\n\n")[0].strip().replace("\n", " ")
    described = _arg_descriptions(doc)
    args = fn.args.args
    defaults = len(fn.args.defaults)
    properties, required = {}, []
    for i, arg in enumerate(args):
        prop: dict[str, Any] = {}
        kind = _json_type(arg.annotation)
        if kind:
            prop["type"] = kind
        if arg.arg in described:
            prop["description"] = described[arg.arg]
        properties[arg.arg] = prop
        if i < len(args) - defaults:
            required.append(arg.arg)
    return {"type": "function", "function": {"name": fn.name, "description": summary,
                                             "parameters": {"type": "object", "properties": properties,
                                                            "required": required}}}


def _json_type(annotation: ast.expr | None) -> str | None:
    if isinstance(annotation, ast.Name):
        return JSON_TYPES.get(annotation.id)
    if isinstance(annotation, ast.Subscript) and isinstance(annotation.value, ast.Name):
        return JSON_TYPES.get(annotation.value.id)
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return JSON_TYPES.get(annotation.value)
    return None


def _arg_descriptions(doc: str) -> dict[str, str]:
    out, inside = {}, False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            inside = True
            continue
        if inside:
            match = _ARG_LINE.match(line)
            if match:
                out[match.group(1)] = match.group(2).strip()
            elif line.strip() and not line.startswith((" ", "\t")):
                inside = False
    return out


def argument_problem(schema: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """Why `arguments` do not fit the function's `parameters` schema, or None."""
    params = schema["function"].get("parameters") or {}
    properties, required = params.get("properties", {}), params.get("required", [])
    unknown = [k for k in arguments if k not in properties]
    if unknown:
        return f"unknown argument {unknown[0]!r} (parameters: {', '.join(properties) or 'none'})"
    missing = [k for k in required if k not in arguments]
    if missing:
        return f"missing required argument {missing[0]!r}"
    for key, value in arguments.items():
        kind = properties[key].get("type")
        if kind in CHECKS and not CHECKS[kind](value):
            return f"argument {key!r} must be {kind}, got {type(value).__name__} {json.dumps(value)[:60]}"
    return None


@dataclass
class CallOutcome:
    text: str  # what the model sees as the tool's result
    error: str | None = None  # the reason, when the call failed (the text then starts with "error: ")


class ToolBox:
    """The tools of one file; `call(name, arguments)` runs one in the sandbox."""

    def __init__(self, source: str, filename: str, timeout_s: float = 5.0, memory_mb: int = 256,
                 max_chars: int = 2000, workers: int | None = None):
        self.source, self.filename = source, filename
        self.schemas = schemas_from_source(source, filename)
        self.by_name = {s["function"]["name"]: s for s in self.schemas}
        self.timeout_s, self.memory_mb, self.max_chars, self.workers = timeout_s, memory_mb, max_chars, workers

    def call(self, name: str, arguments: dict[str, Any], schemas: dict[str, dict] | None = None) -> CallOutcome:
        known = schemas or self.by_name
        if name not in known or name not in self.by_name:
            names = ", ".join(sorted(known))
            return _failed(f"unknown tool {name!r} (tools: {names})")
        problem = argument_problem(known[name], arguments)
        if problem:
            return _failed(f"bad arguments for {name}: {problem}")
        payload = {"source": self.source, "filename": self.filename, "name": name, "arguments": arguments,
                   "max_chars": self.max_chars}
        result = sandbox.get_pool(self.workers).run("tool_call", payload, timeout_s=self.timeout_s,
                                                    memory_mb=self.memory_mb, output_mb=1)
        if result.error:
            return _failed(f"{name} could not run: {result.error}")
        run = result.runs[0]
        if run.ok:
            text = run.result["text"]
            if run.result.get("chars", 0) > self.max_chars:
                text += f"... [{run.result['chars'] - self.max_chars} more characters cut]"
            return CallOutcome(text)
        if run.timed_out:
            return _failed(f"{name} did not return within {self.timeout_s:g}s (stopped)")
        return _failed(f"{name} failed: {run.reason(self.timeout_s, self.memory_mb, 1)}")


def _failed(reason: str) -> CallOutcome:
    return CallOutcome(text=f"error: {reason}", error=reason)

"""Agents fixtures: a tools file with well- and badly-behaved tools, and an engine that plays scripted turns."""

from __future__ import annotations

from pathlib import Path

import pytest

from rftkit.types import Completion

TOOLS = '''
TABLE = {"zorb": 4821, "quix": 37}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: digits, spaces and + - * / ( )
    """
    if set(expression) - set("0123456789+-*/() "):
        raise ValueError("only digits and + - * / ( ) are allowed")
    return str(eval(expression, {"__builtins__": {}}))


def lookup(name: str) -> int:
    """The number filed under a name."""
    return TABLE[name.lower()]


def crash(x: int) -> int:
    """Divides by zero."""
    return x // 0


def hang() -> str:
    """Never returns."""
    while True:
        pass


def spam() -> str:
    """Prints 10 MB."""
    print("x" * 10_000_000)
    return "done"


def network() -> str:
    """Tries to reach the internet."""
    import socket
    socket.create_connection(("1.1.1.1", 80), timeout=2)
    return "connected"


def huge() -> str:
    """Returns 5 MB."""
    return "y" * 5_000_000


def _private():
    return "not a tool"
'''


@pytest.fixture(scope="session")
def tools_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tools") / "tools.py"
    path.write_text(TOOLS)
    return path


def call(tool: str, **arguments) -> str:
    import json

    return f"<tool_call>{json.dumps({'name': tool, 'arguments': arguments})}</tool_call>"


class ScriptedEngine:
    """Answers each context with the next scripted text of its episode, as token ids plus end-of-turn.

    `script(context_ids) -> text` picks the text; calls are recorded (`batches`: rows per call)."""

    def __init__(self, tokenizer, script, version: int = 0):
        self.tokenizer, self.script, self.version = tokenizer, script, version
        self.batches: list[int] = []

    def generate_from_ids(self, prompts, sampling, reuse=False):
        self.batches.append(len(prompts))
        out = []
        for ids in prompts:
            text = self.script(ids)
            tokens = self.tokenizer(text, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
            finish = "stop"
            if len(tokens) > sampling.max_new_tokens:
                tokens, finish = tokens[: sampling.max_new_tokens], "length"
            out.append(Completion(text=self.tokenizer.decode(tokens, skip_special_tokens=True), token_ids=tokens,
                                  logprobs=[], finish_reason=finish, entropy=0.0, version=self.version))
        return out

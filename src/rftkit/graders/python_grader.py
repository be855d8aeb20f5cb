"""`python`: OpenAI's Python grader, accepted verbatim; the user's `grade(sample, item)` runs in the sandbox.

    {"type": "python", "name": "exact", "image_tag": "2025-05-08",
     "source": "def grade(sample, item) -> float:\\n    return float(sample['output_text'] == item['id'])"}

`sample` is `{"output_text": ..., "output_json": ...}` (output_json when the text parses as
JSON), `item` is the data row as JSON. `grade` must return a finite number (a bool counts
as 0/1). `image_tag` is accepted and ignored: the code runs with this machine's Python and
whatever it has installed (read-only). Options beyond OpenAI's: `timeout_s` (per call),
`memory_mb`, `output_mb`, `workers` (the shared sandbox pool grows to at least this).

The source is checked when the grader is built, without running it: it must compile and
define a top-level `grade` taking (sample, item). Every call runs in a fresh sandboxed
process (see sandbox.py); what goes wrong there is a failed Score (reward None, masked):
`python_grader_runtime_error: ValueError: bad (line 3, in grade)`, `... killed by SIGSEGV`,
`... memory limit 512 MB exceeded`, or `unresponsive_reward_error` at the deadline.

    >>> g = PythonGrader(source="def grade(sample, item):\\n    return len(sample['output_text']) / 10")
    >>> g.grade(Item(id="q", messages=[]), "hello").reward
    0.5
"""

from __future__ import annotations

import ast
import json
from typing import Any

from rftkit.graders import sandbox
from rftkit.graders.base import RUNTIME_ERROR, TIMEOUT_ERROR
from rftkit.graders.template import item_dict, sample_of
from rftkit.types import Item, Score



def check_source(source: Any, field: str = "source") -> None:
    """Raise ValueError naming `field` unless `source` compiles and defines `grade(sample, item)` at top level."""
    if not isinstance(source, str):
        raise ValueError(f"{field}: must be a string of Python code (got {type(source).__name__})")
    try:
        tree = ast.parse(source)
        compile(tree, "<grader>", "exec")  # compiling runs nothing; it catches what ast alone lets through
    except SyntaxError as exc:
        raise ValueError(f"{field}: does not compile: {exc.msg} (line {exc.lineno})") from None
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "grade"]
    if not defs:
        raise ValueError(f"{field}: no top-level `def grade(sample, item)`")
    args = defs[-1].args
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    takes_two = required <= 2 and (positional >= 2 or args.vararg is not None)
    if not takes_two or any(default is None for default in args.kw_defaults):
        raise ValueError(f"{field}: `grade` must take two parameters (sample, item); "
                         f"it has {positional} positional ({required} required)")


class PythonGrader(sandbox.SandboxedGrader):
    needs_reference = False

    def __init__(self, source: str, name: str = "python", image_tag: str | None = None,
                 timeout_s: float = 5.0, memory_mb: int = 512, output_mb: int = 16,
                 pass_threshold: float | None = None, workers: int | None = None):
        check_source(source)
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s: must be a positive number of seconds (got {timeout_s!r})")
        for option, value in (("memory_mb", memory_mb), ("output_mb", output_mb)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{option}: must be a positive integer (got {value!r})")
        self.source, self.name, self.image_tag = source, name, image_tag
        self.timeout_s, self.memory_mb, self.output_mb = float(timeout_s), memory_mb, output_mb
        self.pass_threshold = pass_threshold  # OpenAI's evals read it; grading does not
        self._workers = workers


    def grade(self, item: Item, text: str) -> Score:
        payload = {"source": self.source, "sample": sample_of(text), "item": _jsonable(item_dict(item))}
        call = sandbox.get_pool(self._workers).run("python_grade", payload, timeout_s=self.timeout_s,
                                                   memory_mb=self.memory_mb, output_mb=self.output_mb)
        if call.error:
            return Score.failed(f"{RUNTIME_ERROR}: sandbox failure: {call.error}")
        run = call.runs[0]
        if run.ok:
            return Score(reward=run.result["value"])
        if run.timed_out:
            return Score.failed(f"{TIMEOUT_ERROR}: grade did not return within {self.timeout_s:g}s (killed)")
        return Score.failed(f"{RUNTIME_ERROR}: {run.reason(self.timeout_s, self.memory_mb, self.output_mb)}")


def _jsonable(value: Any) -> Any:
    """The row as plain JSON (a parquet row may hold dates or numpy values; they arrive as strings)."""
    return json.loads(json.dumps(value, default=str))

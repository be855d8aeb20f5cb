"""`code`: runs the code of a completion against the item's test cases, in the sandbox.

Two kinds of test, picked by `mode` (default `auto`: `io` when the row has `tests`, else `check`):

- `check` (HumanEval): the row holds a test program defining `check(candidate)` (field
  `test`) and the function name (field `entry_point`, or the `entry_point` option).
  `check(<entry_point>)` returning is reward 1.0, anything else 0.0. With `harness:
  separate` (the default) the candidate's code runs in one sandboxed process and the test
  program in another: `candidate(...)` in the tests sends the arguments across and gets
  back plain data (builtin types only), so nothing the candidate defines or does can reach
  the comparisons or write the verdict; other names the tests use but do not define (helpers
  of the prompt, such as HumanEval's `poly`) come from the candidate's code the same way.
  `harness: inprocess` runs both in one interpreter, as HumanEval does: about half the cost
  per sample (HumanEval, 2 cores: 2.6 ms against 5.0 ms) and forgeable by the candidate
  (reading the result nonce from a frame, returning an object whose `__eq__` is always
  True), so for trusted code only. In separate mode, a test that passes something other
  than plain data to the candidate (a function, an instance of its own class) cannot be
  graded: `None`.
- `io` (stdin -> stdout): the row holds `tests: [{"input": "...", "output": "..."}]`; each
  test is a fresh run of the program with that stdin; output matches when equal after
  stripping trailing whitespace of every line and trailing blank lines. Reward = fraction
  passed (breakdown `passed`, `total`).

The code is the last ```python fenced block of the completion (else the last bare ```
block, else the whole text). `timeout_s` is the budget of one sample, all its tests
together (each io test also stops when the budget is spent).

Whose fault is it? Code the model wrote that fails, crashes, hangs, exhausts memory, prints
gigabytes or tries to escape the sandbox earns **0.0** - a real reward, so the policy
learns not to - with the reason in `Score.error` ("tests failed: AssertionError (line 4,
in check)", "timeout: did not finish within 5s (killed)", "killed by SIGSEGV"). Only a
failure of the machinery (a sandbox worker died, a row without tests, a test program that
does not compile) is `reward=None`, masked out of the loss.

    >>> g = CodeGrader()
    >>> item = Item(id="h0", messages=[], metadata={"entry_point": "add",
    ...             "test": "def check(f):\\n    assert f(2, 3) == 5"})
    >>> g.grade(item, "```python\\ndef add(a, b):\\n    return a + b\\n```").reward
    1.0
"""

from __future__ import annotations

import re
from typing import Any

from rftkit.graders import sandbox
from rftkit.graders.base import RUNTIME_ERROR
from rftkit.types import Item, Score

MODES = ("auto", "check", "io")
EXTRACTORS = ("last_code_block", "whole_text")
HARNESSES = {"separate": "check", "inprocess": "check_inprocess"}
INVALID_ITEM = "invalid_variable_error"
FENCE_RE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
PYTHON_TAGS = ("python", "py", "python3")


def extract_code(text: str, how: str = "last_code_block") -> str:
    """The program in a completion: the last ```python block, else the last bare ``` block, else all of it."""
    if how == "whole_text":
        return text
    blocks = FENCE_RE.findall(text)
    for wanted in (PYTHON_TAGS, ("",)):
        chosen = [body for tag, body in blocks if tag.lower() in wanted]
        if chosen:
            return chosen[-1]
    return text


def normalise_output(text: str) -> str:
    """Output as compared: trailing whitespace of each line and trailing blank lines removed."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


class CodeGrader(sandbox.SandboxedGrader):
    needs_reference = False

    def __init__(self, name: str = "code", language: str = "python", mode: str = "auto",
                 entry_point: str | None = None, test_field: str = "test", entry_point_field: str = "entry_point",
                 tests_field: str = "tests", extract: str = "last_code_block", timeout_s: float = 5.0,
                 memory_mb: int = 512, output_mb: int = 16, max_procs: int = 32, workers: int | None = None,
                 harness: str = "separate"):
        if language != "python":
            raise ValueError(f"language: only 'python' is supported (got {language!r})")
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {list(MODES)} (got {mode!r})")
        if harness not in HARNESSES:
            raise ValueError(f"harness: must be one of {list(HARNESSES)} (got {harness!r}); "
                             f"'inprocess' lets the candidate forge its verdict: trusted code only")
        if extract not in EXTRACTORS:
            raise ValueError(f"extract: must be one of {list(EXTRACTORS)} (got {extract!r})")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s: must be a positive number of seconds (got {timeout_s!r})")
        for option, value in (("memory_mb", memory_mb), ("output_mb", output_mb), ("max_procs", max_procs)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{option}: must be a positive integer (got {value!r})")
        self.name, self.mode, self.entry_point, self.extract = name, mode, entry_point, extract
        self.harness = harness
        self.test_field, self.entry_point_field, self.tests_field = test_field, entry_point_field, tests_field
        self.timeout_s, self.memory_mb = float(timeout_s), memory_mb
        self.output_mb, self.max_procs = output_mb, max_procs
        self._workers = workers

    def _mode(self, item: Item) -> str:
        if self.mode != "auto":
            return self.mode
        return "io" if item.field(self.tests_field) is not None else "check"

    def _entry_point(self, item: Item) -> Any:
        return self.entry_point or item.field(self.entry_point_field)

    def check_item(self, item: Item) -> list[str]:
        """What this row lacks for grading (shown by `rft grader validate --item`)."""
        if self._mode(item) == "io":
            tests = item.field(self.tests_field)
            if not isinstance(tests, list) or not tests or not all(
                    isinstance(t, dict) and isinstance(t.get("input", ""), str) and isinstance(t.get("output"), str)
                    for t in tests):
                return [f"{self.tests_field}: row {item.id!r} needs a non-empty list of "
                        f"{{\"input\": str, \"output\": str}}"]
            return []
        problems = []
        test = item.field(self.test_field)
        if not isinstance(test, str) or not test.strip():
            problems.append(f"{self.test_field}: row {item.id!r} has no test program (a string defining check)")
        else:
            try:
                compile(test, "<test>", "exec")  # compiles only; nothing runs
            except SyntaxError as exc:
                problems.append(f"{self.test_field}: the test program of row {item.id!r} does not compile: "
                                f"{exc.msg} (line {exc.lineno})")
        if not isinstance(self._entry_point(item), str) or not self._entry_point(item):
            problems.append(f"{self.entry_point_field}: row {item.id!r} names no entry point "
                            f"(or set the grader's `entry_point` option)")
        return problems

    def grade(self, item: Item, text: str) -> Score:
        problems = self.check_item(item)
        if problems:
            return Score.failed(f"{INVALID_ITEM}: {problems[0]}")
        code = extract_code(text, self.extract)
        limits = {"timeout_s": self.timeout_s, "memory_mb": self.memory_mb, "output_mb": self.output_mb,
                  "max_procs": self.max_procs}
        pool = sandbox.get_pool(self._workers)
        if self._mode(item) == "check":
            payload = {"code": code, "test": item.field(self.test_field), "entry_point": self._entry_point(item)}
            call = pool.run(HARNESSES[self.harness], payload, **limits)
            return self._check_score(call)
        tests = item.field(self.tests_field)
        longest = max(len(t["output"].encode()) for t in tests)
        call = pool.run("script", {"code": code}, [{"stdin": t.get("input", "")} for t in tests],
                        max_stdout=2 * longest + 4096, **limits)
        return self._io_score(call, tests)

    def _reason(self, run: sandbox.RunResult) -> str:
        reason = run.reason(self.timeout_s, self.memory_mb, self.output_mb)
        if run.timed_out or run.skipped:
            return f"timeout: {reason}"
        phase = (run.result or {}).get("phase")
        if phase == "check":
            return f"tests failed: {reason}"
        if phase in ("candidate", "script", "candidate_gone"):
            return f"code failed: {reason}"
        return reason

    def _check_score(self, call: sandbox.CallResult) -> Score:
        if call.error:
            return Score.failed(f"{RUNTIME_ERROR}: sandbox failure: {call.error}")
        run = call.runs[0]
        if run.ok:
            return Score(reward=1.0, breakdown={"passed": 1.0})
        if (run.result or {}).get("phase") in ("sandbox", "harness"):  # the machinery's or the test's fault
            return Score.failed(f"{RUNTIME_ERROR}: {run.reason(self.timeout_s, self.memory_mb, self.output_mb)}")
        return Score(reward=0.0, breakdown={"passed": 0.0}, error=self._reason(run))

    def _io_score(self, call: sandbox.CallResult, tests: list[dict[str, str]]) -> Score:
        if call.error:
            return Score.failed(f"{RUNTIME_ERROR}: sandbox failure: {call.error}")
        passed, first_failure = 0, None
        for index, (run, test) in enumerate(zip(call.runs, tests), start=1):
            if (run.result or {}).get("phase") == "sandbox":
                return Score.failed(f"{RUNTIME_ERROR}: {run.reason(self.timeout_s, self.memory_mb, self.output_mb)}")
            if run.ok and normalise_output(run.stdout) == normalise_output(test["output"]):
                passed += 1
                continue
            if first_failure is None:
                why = (self._reason(run) if not run.ok else
                       f"wrong output {_preview(run.stdout)}, expected {_preview(test['output'])}")
                first_failure = f"test {index}: {why}"
        total = len(tests)
        breakdown = {"passed": float(passed), "total": float(total)}
        error = None if passed == total else f"{total - passed} of {total} tests failed; {first_failure}"
        return Score(reward=passed / total, breakdown=breakdown, error=error)


def _preview(text: str, limit: int = 60) -> str:
    text = text if len(text) <= limit else text[:limit] + "..."
    return repr(text)

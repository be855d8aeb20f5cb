"""`reward_function`: a TRL-style reward function from a Python file, called in batches.

The contract is TRL's GRPOTrainer's, so a reward function written for TRL runs unchanged:

    def reward(completions, reference_answer, **kwargs) -> list[float | None]:
        return [1.0 if c.strip().endswith(f"ANSWER: {r}") else 0.0 for c, r in zip(completions, reference_answer)]

It is called with keyword lists, one entry per sample of the batch:
- `completions`: the completion texts (TRL's "standard" format); with
  `completion_format: messages`, each is `[{"role": "assistant", "content": text}]`
  instead (TRL's conversational format: functions doing `c[0]["content"]`).
- `prompts`: each item's `messages` (TRL's conversational prompt).
- every column of the data row: `id`, `reference_answer` and each other field (a row
  without a field some other row has gets None, where TRL would raise).
- `completion_ids=None` and `trainer_state=None`: rftkit graders see text, not token ids,
  and there is no TRL TrainerState.
A function without `**kwargs` is passed only the arguments it names.

Results: one number per completion. `None` means "does not apply to this sample" in TRL;
here it masks the sample (reward None, flag `reward_not_applicable`). A non-number or
non-finite entry fails that sample; a list of the wrong length, or an exception, fails
every sample of the batch with `python_grader_runtime_error` and the exception's last
line (and where in the user's file it was raised).

Trust: like TRL, this imports and runs the user's file in the grading process, with no
sandbox - it is the user's own code, not model output. Use the `python` grader for code
that must be isolated.

How it differs from TRL: TRL calls each reward function once per generation batch on the
trainer's process; here the executor sends up to `batch_size` samples per call from a
worker thread, under its per-call deadline (a batch can mix items of several groups).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import inspect
import math
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from rftkit.graders.base import RUNTIME_ERROR
from rftkit.types import Item, Score

NOT_APPLICABLE = "reward_not_applicable"
RESERVED = ("prompts", "completions", "completion_ids", "trainer_state")


def load_function(path: str, function: str | None) -> tuple[Path, str, Callable]:
    """Import `path`: (its absolute path, the function's name there, the function). ValueError names the field."""
    file = Path(path).expanduser().resolve()
    if not file.is_file() or file.suffix != ".py":
        raise ValueError(f"path: no Python file at {str(file)!r} (relative paths start from {Path.cwd()})")
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:8]
    module_name = f"rftkit_reward_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    sys.path.insert(0, str(file.parent))  # so the file can import its neighbours at load time
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - sys.exit() in a script is a bad file too
        sys.modules.pop(module_name, None)
        raise ValueError(f"path: importing {file.name} failed: {_last_line(exc, file)}") from None
    finally:
        sys.path.remove(str(file.parent))
    if function is None:
        own = [n for n, f in vars(module).items()
               if inspect.isfunction(f) and f.__module__ == module_name and not n.startswith("_")]
        if "reward" in own or len(own) == 1:
            function = "reward" if "reward" in own else own[0]
        else:
            raise ValueError(f"function: {file.name} defines {own or 'no public functions'}; "
                             "name the reward function with `function:` (or call it `reward`)")
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"function: {file.name} has no function {function!r}")
    params = inspect.signature(fn).parameters.values()
    if not any(p.name == "completions" or p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"function: {function}() must take a `completions` argument (or **kwargs), "
                         "as TRL reward functions do")
    return file, function, fn


def _last_line(exc: BaseException, file: Path) -> str:
    """`Type: message (file.py:12 in fn)`: the exception and the innermost frame in the user's file."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == file]
    if frames:
        text += f" ({file.name}:{frames[-1].lineno} in {frames[-1].name})"
    return text


class RewardFunctionGrader:
    needs_reference = False  # the function reads `reference_answer` if it wants to

    def __init__(self, path: str, function: str | None = None, batch_size: int = 64,
                 completion_format: str = "text", name: str | None = None):
        """path: the Python file (absolute, or relative to the current directory).
        function: the function's name; default `reward`, or the file's only public function.
        batch_size: at most this many samples per call. completion_format: `text` or `messages`."""
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name: must be a non-empty string (got {name!r})")
        if not isinstance(path, str) or not path:
            raise ValueError(f"path: must be a file path (got {path!r})")
        if function is not None and not isinstance(function, str):
            raise ValueError(f"function: must be a function name (got {function!r})")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be a positive integer (got {batch_size!r})")
        if completion_format not in ("text", "messages"):
            raise ValueError(f"completion_format: must be 'text' or 'messages' (got {completion_format!r})")
        self.file, self.function, self.fn = load_function(path, function)
        self.batch_size, self.completion_format = batch_size, completion_format
        self.name = name or self.function
        params = inspect.signature(self.fn).parameters.values()
        self._names = None if any(p.kind is p.VAR_KEYWORD for p in params) else {p.name for p in params}
        # what pickling (Ray workers) rebuilds the grader from: the function travels as its file
        self._options = {"path": str(self.file), "function": self.function, "batch_size": batch_size,
                         "completion_format": completion_format, "name": self.name}

    def __getstate__(self) -> dict[str, Any]:
        return self._options

    def __setstate__(self, options: dict[str, Any]) -> None:
        self.__init__(**options)

    def call_kwargs(self, calls: list[tuple[Item, str]]) -> dict[str, Any]:
        """The keyword lists one call of the function gets (see the module docstring)."""
        rows = [{**item.metadata, "id": item.id, "reference_answer": item.reference_answer} for item, _ in calls]
        keys = dict.fromkeys(key for row in rows for key in row if key not in RESERVED)  # first-seen order
        columns = {key: [row.get(key) for row in rows] for key in keys}
        completions: list[Any] = [text for _, text in calls]
        if self.completion_format == "messages":
            completions = [[{"role": "assistant", "content": text}] for text in completions]
        kwargs = {**columns, "prompts": [item.messages for item, _ in calls], "completions": completions,
                  "completion_ids": None, "trainer_state": None}
        return kwargs if self._names is None else {k: v for k, v in kwargs.items() if k in self._names}

    def grade_batch(self, calls: list[tuple[Item, str]]) -> list[Score]:
        try:
            result = self.fn(**self.call_kwargs(calls))
            if inspect.isawaitable(result):  # TRL also accepts async reward functions
                result = asyncio.run(result)
            rewards = list(result)
        except Exception as exc:  # noqa: BLE001 - the user's bug fails this batch, not the run
            error = f"{RUNTIME_ERROR}: {_last_line(exc, self.file)}"
            return [Score.failed(error) for _ in calls]
        if len(rewards) != len(calls):
            error = (f"{RUNTIME_ERROR}: {self.function}() returned {len(rewards)} rewards "
                     f"for {len(calls)} completions")
            return [Score.failed(error) for _ in calls]
        return [self._score(r) for r in rewards]

    def _score(self, reward: Any) -> Score:
        if reward is None:
            return Score.failed(f"{NOT_APPLICABLE}: {self.function}() returned None for this sample")
        try:
            if isinstance(reward, (str, bytes)):
                raise TypeError
            value = float(reward)  # int, bool, numpy and 0-d torch numbers all convert
        except (TypeError, ValueError):
            return Score.failed(f"{RUNTIME_ERROR}: {self.function}() returned {reward!r}, not a number")
        if not math.isfinite(value):
            return Score.failed(f"{RUNTIME_ERROR}: {self.function}() returned {value}, not a finite number")
        return Score(reward=value)

    def grade(self, item: Item, text: str) -> Score:
        return self.grade_batch([(item, text)])[0]

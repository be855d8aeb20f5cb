"""The Grader contract and the table of grader types.

A grader is an object with a `name`, a `needs_reference` flag and
`grade(item, text) -> Score`. It may raise: the executor turns any exception into a
failed Score (reward None, masked out of the loss), so grader code stays plain. A
failure the grader detects itself is `Score.failed("<flag>: <detail>")`, the flag named
as in OpenAI's grader API (`model_grader_parse_error`, `sample_parse_error`, ...).

Optional parts, read by the executor with getattr:
- `concurrency: int` - at most this many calls of this grader at once (its own lane, so
  a slow grader cannot starve the others); default: `grading.workers`.
- `deadline_s: float` - the executor abandons a call after this long (retries included);
  default: `grading.timeout_s`.
- `batch_size: int` and `grade_batch(calls: list[tuple[Item, str]]) -> list[Score]` - the
  executor sends up to `batch_size` samples per call (HTTP endpoints, TRL-style functions).
- `children: dict[str, Grader]` and `combine(item, text, scores: dict[str, Score]) -> Score`
  - a composite (`multi`): the executor grades each child in its own lane, then combines.
- `check_item(item) -> list[str]` - problems with this grader's template variables against
  a real data row (`rft grader validate --item`, and the start of `rft train`).
- `close()` - release workers or connections.

A grader spec is a dict with a `type` key plus that type's options, written in YAML/JSON
or given on the command line as a bare type name (`answer_match`). Options are checked
when the grader is built, before any model loads: a bad one is a ConfigError naming the
grader and the field.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Protocol

import yaml

from rftkit.errors import ConfigError, UserError
from rftkit.types import Group, Item, Score


# Error flags of failed Scores the executor makes itself (a grader's own flags are its own)
TIMEOUT_ERROR = "unresponsive_reward_error"  # no answer within the call's deadline or the step's budget
RUNTIME_ERROR = "python_grader_runtime_error"  # the grader raised, or returned something that is not a Score


class Grader(Protocol):
    name: str
    needs_reference: bool

    def grade(self, item: Item, text: str) -> Score: ...


class GraderExecutor(Protocol):
    """Grades a step's rollouts: the thread-pool executor (graders/executor.py) or a Ray-backed one.

    Returns the results (a Score per completion, per group, in order, and the step's counts);
    it writes nothing into the groups."""

    def score(self, groups: list[Group]) -> tuple[list[list[Score]], Any]: ...

    def close(self) -> None: ...


# type -> "module:Class" below rftkit.graders, imported on first use (so a spec that never
# names the judge does not import an HTTP client, and no module loads torch by accident).
GRADER_TYPES: dict[str, str] = {
    "answer_match": "answer:AnswerMatchGrader",
    # OpenAI grader objects, accepted verbatim
    "string_check": "openai:StringCheckGrader",
    "text_similarity": "similarity:TextSimilarityGrader",
    "score_model": "judge:ScoreModelGrader",
    "label_model": "judge:LabelModelGrader",
    "python": "python_grader:PythonGrader",
    "multi": "multi:MultiGrader",
    "by_source": "route:SourceRouter",
    "calibration": "calibration:CalibrationGrader",  # correctness + a proper scoring rule on the stated confidence  # a mixture's per-source graders (data.train sources with `grader:`)
    # rftkit built-ins
    "math": "mathgrader:MathGrader",
    "regex": "format:RegexGrader",
    "json_schema": "format:JsonSchemaGrader",
    "length_penalty": "format:LengthPenaltyGrader",
    "code": "code:CodeGrader",
    "reward_function": "reward_fn:RewardFunctionGrader",
    "reward_model": "reward_model:RewardModelGrader",
    # Amazon Nova reward-Lambda protocol over HTTP
    "http": "http:HttpGrader",
}


def _grader_class(kind: str) -> type | None:
    target = GRADER_TYPES.get(kind)
    if target is None:
        return None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(f"rftkit.graders.{module}"), cls)


def grader_names() -> list[str]:
    return sorted(GRADER_TYPES)


def build_grader(spec: dict[str, Any] | str, where: str = "grader") -> Grader:
    """A grader from its spec; unknown types or options are a ConfigError naming the field."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: a grader needs a `type` (one of {grader_names()})")
    options = dict(spec)
    kind = options.pop("type")
    fault = options.pop("fault", None)
    if not isinstance(options.pop("deferred", False), bool):  # read by the training stage (asynchronous runs)
        raise ConfigError(f"{where}.deferred: must be true or false")
    cls = _grader_class(kind) if isinstance(kind, str) else None  # a list or dict as `type` (fuzzing found it)
    if cls is None:
        raise ConfigError(f"{where}.type: unknown grader type {kind!r}; valid types: {grader_names()}")
    if "name" in options and not isinstance(options["name"], str):
        raise ConfigError(f"{where}.name: must be a string")
    try:
        grader = cls(**options, where=where) if _takes_where(cls) else cls(**options)
    except TypeError as exc:  # unknown or missing option
        raise ConfigError(f"{where}: bad options for grader {kind!r}: {exc}") from None
    except ValueError as exc:  # a grader's own check of an option's value
        raise ConfigError(f"{where}: {exc}") from None
    if fault is not None:
        from rftkit.graders.fault import FaultInjector

        try:
            grader = FaultInjector.from_spec(grader, fault, f"{where}.fault")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return grader


def _takes_where(cls: type) -> bool:
    """Graders that build sub-graders (multi) take `where` to name nested fields in errors."""
    return "where" in inspect.signature(cls.__init__).parameters


FILE_OPTIONS = ("path", "schema_file")  # grader options naming a file


def resolve_grader_paths(spec: Any, root: Path) -> Any:
    """File options of a grader (and its sub-graders) written in a YAML/JSON file are relative to that file."""
    if not isinstance(spec, dict):
        return spec
    out = dict(spec)
    for key in FILE_OPTIONS:
        value = out.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and (root / value).exists():
            out[key] = str(root / value)
    if isinstance(out.get("graders"), dict):
        out["graders"] = {k: _sub_grader(v, root) for k, v in out["graders"].items()}
    if isinstance(out.get("grader"), (dict, str)):  # a wrapper's one inner grader (calibration)
        out["grader"] = _sub_grader(out["grader"], root)
    return out


GRADER_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def _sub_grader(spec: Any, root: Path) -> Any:
    """A `multi` grader's child: an object (its paths made relative to `root`), a type name, or a grader file."""
    if isinstance(spec, str) and spec.lower().endswith(GRADER_FILE_SUFFIXES):
        path = Path(spec) if Path(spec).is_absolute() else root / spec
        if not path.exists():
            raise UserError(f"grader file not found: {path}")
        return load_grader_spec(str(path))
    return resolve_grader_paths(spec, root)


def load_grader_spec(text: str) -> dict[str, Any] | str:
    """A CLI `--grader` value: a grader type name, or a YAML/JSON file holding one grader object."""
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.exists():
            raise UserError(f"grader file not found: {path}")
        try:
            data = json.loads(path.read_text()) if path.suffix.lower() == ".json" else yaml.safe_load(path.read_text())
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
        return resolve_grader_paths(data, path.resolve().parent)
    return text


def grader_problems(grader: Grader, item: Item, where: str = "grader") -> list[str]:
    """What is wrong with `grader` (and its sub-graders) for this data row, each naming its field."""
    problems = [f"{where}.{p}" for p in getattr(grader, "check_item", lambda item: [])(item)]
    for key, child in (getattr(grader, "children", None) or {}).items():
        problems += grader_problems(child, item, f"{where}.graders.{key}")
    return problems


def check_grader_items(grader: Grader, items: list[Item], where: str, source: str, rows: int = 16) -> None:
    """ConfigError if the grader's template variables do not fit the first `rows` rows of `source`."""
    problems = sorted({p for i in range(min(rows, len(items))) for p in grader_problems(grader, items[i], where)})
    if problems:
        shown = "\n  ".join(problems[:10])
        raise ConfigError(f"{where} does not fit the rows of {source}:\n  {shown}")

"""Format graders: `regex`, `json_schema`, `length_penalty`. None needs a reference answer.

They check the shape of a completion, not its correctness, and are meant to sit beside a
correctness grader in a `multi` grader (a format reward alone teaches the format and
nothing else).

    >>> RegexGrader(pattern=r"ANSWER: -?\\d+$", flags=["MULTILINE"]).grade(None, "ANSWER: 7").reward
    1.0
    >>> JsonSchemaGrader(schema={"type": "object", "required": ["a"]}).grade(None, '{"b": 1}').breakdown
    {'parsed': 1.0, 'valid': 0.0}
    >>> LengthPenaltyGrader(max_len=100, buffer=20).grade(None, "x" * 90).reward
    -0.5
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import regex
import yaml

from rftkit.types import Item, Score

REGEX_FLAGS = {
    "IGNORECASE": regex.IGNORECASE, "DOTALL": regex.DOTALL, "MULTILINE": regex.MULTILINE, "VERBOSE": regex.VERBOSE,
    "ASCII": regex.ASCII, "I": regex.IGNORECASE, "S": regex.DOTALL, "M": regex.MULTILINE, "X": regex.VERBOSE,
    "A": regex.ASCII,
}
REGEX_TIMEOUT = "regex_timeout_error"
FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: must be a non-empty string (got {name!r})")
    return name


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field}: must be a finite number (got {value!r})")
    return float(value)


class RegexGrader:
    """`reward_match` when `pattern` matches the completion, else `reward_miss`.

    mode: `search` (anywhere in the text) or `fullmatch` (the whole text, as Python's
    re.fullmatch). flags: names of Python `re` flags, e.g. [IGNORECASE, DOTALL, MULTILINE].
    Breakdown: {match: 1/0}. Patterns use the `regex` package (Python's `re` syntax, its
    version-0 behaviour), which can stop a match: one that has not finished within
    `timeout_s` (a pattern like `^(a+)+$` backtracking over a long run of `a`s followed by
    another character - text a policy can learn to emit) is `reward_miss` with a
    `regex_timeout_error`, never a hang. Python's `re` cannot be stopped: it holds the GIL,
    so not even the executor's deadline thread would run.
    """

    needs_reference = False

    def __init__(self, pattern: str, mode: str = "search", flags: list[str] | None = None,
                 reward_match: float = 1.0, reward_miss: float = 0.0, name: str = "regex", timeout_s: float = 1.0):
        if mode not in ("search", "fullmatch"):
            raise ValueError(f"mode: must be 'search' or 'fullmatch' (got {mode!r})")
        flags = flags or []
        if isinstance(flags, str) or not isinstance(flags, list):
            raise ValueError(f"flags: must be a list of flag names, e.g. [IGNORECASE] (got {flags!r})")
        bits = 0
        for flag in flags:
            if not isinstance(flag, str) or flag.upper() not in REGEX_FLAGS:
                raise ValueError(f"flags: unknown regex flag {flag!r}; "
                                 "valid: IGNORECASE, DOTALL, MULTILINE, VERBOSE, ASCII")
            bits |= REGEX_FLAGS[flag.upper()]
        if not isinstance(pattern, str):
            raise ValueError(f"pattern: must be a string (got {type(pattern).__name__})")
        try:
            self.regex = regex.compile(pattern, bits | regex.VERSION0)
        except (regex.error, ValueError, OverflowError, RecursionError) as exc:
            try:  # Python's own message points at the cause ('a(b': position 1, where regex says 3)
                re.compile(pattern, bits)
            except re.error as own:
                exc = own
            except (ValueError, OverflowError, RecursionError):
                pass
            msg, pos = getattr(exc, "msg", str(exc)), getattr(exc, "pos", None)
            where = f" at position {pos}" if pos is not None else ""
            raise ValueError(f"pattern: invalid regular expression {pattern!r}: {msg}{where}") from None
        self.timeout_s = _number(timeout_s, "timeout_s")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s: must be positive (got {timeout_s!r})")
        self.reward_match = _number(reward_match, "reward_match")
        self.reward_miss = _number(reward_miss, "reward_miss")
        self.mode, self.name = mode, _check_name(name)

    def grade(self, item: Item, text: str) -> Score:
        match = self.regex.search if self.mode == "search" else self.regex.fullmatch
        try:
            found = match(text, timeout=self.timeout_s, concurrent=True) is not None
        except TimeoutError:
            return Score(reward=self.reward_miss, breakdown={"match": 0.0},
                         error=f"{REGEX_TIMEOUT}: the pattern did not finish within {self.timeout_s:g}s on this "
                               f"text ({len(text)} characters; catastrophic backtracking?)")
        return Score(reward=self.reward_match if found else self.reward_miss, breakdown={"match": float(found)})


def extract_json(text: str, extract: str) -> Any:
    """The JSON value of a completion; raises ValueError when there is none.

    extract: `whole` (the whole text), `fenced` (the last ```json fenced block, or a bare
    ``` block), `auto` (the last fenced block if there is one, else the whole text).
    """
    blocks = FENCE_RE.findall(text)
    if extract == "fenced" and not blocks:
        raise ValueError("no ```json fenced block")
    source = blocks[-1] if blocks and extract != "whole" else text
    return json.loads(source.strip())


class JsonSchemaGrader:
    """1.0 when the completion is JSON valid against `schema`, else 0.0.

    Give the schema inline (`schema`, a JSON Schema object; its `$schema` picks the draft,
    default the latest) or as a file (`schema_file`, JSON or YAML; a relative path is
    resolved from the current directory). extract: where the JSON is (`extract_json`).
    Breakdown: {parsed: 1/0, valid: 1/0}. An invalid completion is a valid grading with
    reward 0, not a failure; `explain(text)` says why it scored 0 (for debugging graders).
    `format` keywords are not checked (JSON Schema's default).
    """

    needs_reference = False

    def __init__(self, schema: dict | None = None, schema_file: str | None = None, extract: str = "auto",
                 name: str = "json_schema"):
        if (schema is None) == (schema_file is None):
            raise ValueError("schema: give exactly one of `schema` (inline) or `schema_file`")
        if schema_file is not None:
            schema = self._load(schema_file)
        if not isinstance(schema, (dict, bool)):
            raise ValueError(f"schema: must be a JSON Schema object (got {type(schema).__name__})")
        validator_cls = jsonschema.validators.validator_for(schema)
        try:
            validator_cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise ValueError(f"schema: not a valid JSON Schema at {where}: {exc.message}") from None
        if extract not in ("auto", "whole", "fenced"):
            raise ValueError(f"extract: must be 'auto', 'whole' or 'fenced' (got {extract!r})")
        self.validator = validator_cls(schema)
        self.schema, self.extract, self.name = schema, extract, _check_name(name)

    @staticmethod
    def _load(schema_file: str) -> Any:
        path = Path(schema_file).expanduser()
        if not path.is_file():
            raise ValueError(f"schema_file: no such file {str(path)!r} (relative paths start from {Path.cwd()})")
        try:
            text = path.read_text()
            return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"schema_file: cannot read {str(path)!r}: {exc}") from None

    def explain(self, text: str) -> str | None:
        """Why `text` scores 0 (the first problem), or None when it is valid."""
        try:
            value = extract_json(text, self.extract)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return f"not JSON: {exc}"
        error = jsonschema.exceptions.best_match(self.validator.iter_errors(value))
        if error is None:
            return None
        return f"at {'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"

    def grade(self, item: Item, text: str) -> Score:
        try:
            value = extract_json(text, self.extract)
        except ValueError:
            return Score(reward=0.0, breakdown={"parsed": 0.0, "valid": 0.0})
        valid = self.validator.is_valid(value)
        return Score(reward=float(valid), breakdown={"parsed": 1.0, "valid": float(valid)})


class LengthPenaltyGrader:
    """DAPO's soft overlong penalty: 0 up to `max_len - buffer`, then a straight line down to
    -1 at `max_len`, and -1 beyond.

        reward = 0                               if L <= max_len - buffer
               = (max_len - buffer - L) / buffer  if max_len - buffer < L <= max_len
               = -1                              if L > max_len

    L counts `unit`s of the completion: `chars`, or `words` (whitespace-separated). With
    `buffer: 0` it is a hard cliff at `max_len`. Add it to a correctness grader in a
    `multi` grader; DAPO (Yu et al., 2025) counts tokens and sets max_len 20480, buffer
    4096 - here the grader sees text only, so pick lengths in characters or words.
    Breakdown: {length: L}.
    """

    needs_reference = False

    def __init__(self, max_len: int, buffer: int = 0, unit: str = "chars", name: str = "length_penalty"):
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len: must be a positive integer (got {max_len!r})")
        if isinstance(buffer, bool) or not isinstance(buffer, int) or not 0 <= buffer <= max_len:
            raise ValueError(f"buffer: must be an integer within [0, max_len={max_len}] (got {buffer!r})")
        if unit not in ("chars", "words"):
            raise ValueError(f"unit: must be 'chars' or 'words' (got {unit!r})")
        self.max_len, self.buffer, self.unit, self.name = max_len, buffer, unit, _check_name(name)

    def length(self, text: str) -> int:
        return len(text) if self.unit == "chars" else len(text.split())

    def grade(self, item: Item, text: str) -> Score:
        length = self.length(text)
        start = self.max_len - self.buffer
        if length <= start:
            reward = 0.0
        elif length <= self.max_len:
            reward = (start - length) / self.buffer
        else:
            reward = -1.0
        return Score(reward=reward, breakdown={"length": float(length)})

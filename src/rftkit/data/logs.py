"""`rft data from-logs`: logged model calls -> RFT prompts (docs/DATA.md, "From logs").

Reads Amazon Bedrock model-invocation logs and OpenAI chat-completions logs (request/response
pairs, Batch API input and output lines) line by line, plain or gzipped, and writes Items whose
`messages` end with the user's turn. No line stops the run: every record left out is reported
as `FILE:LINE: reason` and counted by reason. The input is streamed; what is held is one hash per
kept prompt (dedupe), the ids written, and the answers of OpenAI Batch output files (joined to
their input lines by `custom_id`).
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import math
import os
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, time, timezone
from pathlib import Path
from typing import Any

from rftkit.data.items import _parse_line, item_from_row
from rftkit.data.logs_shapes import (Call, Skip, bedrock_conversation, identify, openai_conversation, parse_time)
from rftkit.errors import UserError

LOG_SUFFIXES = (".json", ".jsonl", ".ndjson", ".log", ".txt", ".gz")
FORMATS = ("auto", "bedrock", "openai")
RESPONSES = ("none", "reference", "asft")
FEEDBACK_FIELDS = ("feedback", "rating", "thumbs", "label")
POSITIVE = {"thumbs_up", "thumbsup", "up", "positive", "good", "like", "liked", "true", "yes", "1", "+1", "\U0001f44d"}
NEGATIVE = {"thumbs_down", "thumbsdown", "down", "negative", "bad", "dislike", "disliked", "false", "no", "0", "-1",
            "\U0001f44e"}
SHOWN_DROPS = 20  # dropped lines printed; the report file holds them all


@dataclass
class FromLogsOptions:
    fmt: str = "auto"
    models: list[str] = field(default_factory=list)  # exact ids or fnmatch globs
    since: datetime | str | None = None
    until: datetime | str | None = None
    dedupe: bool = True
    last_user_turn: bool = False
    responses: str = "reference"
    kto_out: Path | None = None
    report: Path | None = None

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)} (got {self.fmt!r})")
        if self.responses not in RESPONSES:
            raise UserError(f"--responses must be one of {', '.join(RESPONSES)} (got {self.responses!r})")
        self.since, self.until = parse_bound(self.since, "--since"), parse_bound(self.until, "--until", end=True)
        if self.since and self.until and self.since > self.until:
            raise UserError(f"--since {self.since.isoformat()} is after --until {self.until.isoformat()}")


@dataclass
class LogsResult:
    out: Path
    files: int = 0
    records: int = 0  # non-blank lines and CloudWatch log events: kept + dropped + joined
    kept: int = 0
    kto_rows: int = 0
    joined: int = 0  # OpenAI Batch output lines whose answer went to their input line's item
    dropped: Counter = field(default_factory=Counter)  # reason -> lines
    shown: list[str] = field(default_factory=list)  # the first SHOWN_DROPS `FILE:LINE: reason` rows

    def summary(self) -> dict[str, Any]:
        return {"files": self.files, "records_read": self.records, "kept": self.kept,
                "dropped": sum(self.dropped.values()), "dropped_by_reason": dict(self.dropped.most_common()),
                "batch_outputs_joined": self.joined, "kto_rows": self.kto_rows, "out": str(self.out)}


def parse_bound(value: datetime | str | None, flag: str, end: bool = False) -> datetime | None:
    """An ISO date or datetime; a bare date as --until means the end of that day (both bounds are inclusive)."""
    if value is None or isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or timezone.utc) if value else None
    parsed = parse_time(value)
    if parsed is None:
        raise UserError(f"{flag} {value!r}: not an ISO 8601 date or datetime (e.g. 2025-03-01 or 2025-03-01T12:00:00Z)")
    if end and len(value.strip()) == 10:  # YYYY-MM-DD
        parsed = datetime.combine(parsed.date(), time.max, tzinfo=parsed.tzinfo)
    return parsed


def log_files(path: Path, exclude: set[Path]) -> list[Path]:
    """PATH itself, or the log files under it, sorted (hidden files and our own outputs left out)."""
    if not path.exists():
        raise UserError(f"log path not found: {path}")
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in LOG_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(path).parts)
                  and p.resolve() not in exclude)


def read_lines(path: Path) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(line number, raw bytes, None) per line, gzip by its magic bytes; a read error ends the file
    with one (line, None, reason) naming the last good line."""
    line, gzipped = 0, False
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as f:
            for line, data in enumerate(f, start=1):
                yield line, data.rstrip(b"\r\n"), None
    except (OSError, EOFError, zlib.error) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        yield line + 1, None, (f"{'corrupt gzip' if gzipped else 'unreadable file'}: {detail}; "
                               f"read up to line {line}, the rest of the file is lost")


def records(value: Any, error: str | None) -> list[tuple[Any, str | None]]:
    """A line's (record, parse error) pairs: one, or the log events of a CloudWatch Logs subscription envelope."""
    if error is None and isinstance(value, dict) and isinstance(value.get("logEvents"), list):
        return [_parse_line(str(e.get("message", "")).encode(), 0) if isinstance(e, dict) else (e, None)
                for e in value["logEvents"]]
    return [(value, error)]


def feedback_of(call: Call) -> bool | None:
    """True (good) / False (bad) from the first feedback field found (FEEDBACK_FIELDS, in the record or its
    metadata; a nested object's `value`/`rating`/... counts too), None when there is none or it is not understood."""
    for place in call.annotations:
        for name in FEEDBACK_FIELDS:
            value = place.get(name)
            if isinstance(value, dict):
                value = next((value[k] for k in ("value", *FEEDBACK_FIELDS) if k in value), None)
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (1, -1, 0):
                return value == 1
            if isinstance(value, str):
                word = value.strip().lower().replace("-", "_").replace(" ", "_")
                if word in POSITIVE or word in NEGATIVE:
                    return word in POSITIVE
    return None


def reward_of(call: Call, feedback: bool | None) -> float | None:
    """A numeric `reward` in the record or its metadata; else 1.0 / 0.0 from feedback; else None."""
    for place in call.annotations:
        value = place.get("reward")
        try:
            number = float(value) if not isinstance(value, bool) and value is not None else math.nan
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            return number
    return None if feedback is None else float(feedback)


def prompt_key(messages: list[dict[str, str]]) -> str:
    """Whitespace collapsed and case folded, so re-sent prompts that differ only in spacing or case match."""
    text = "\x00".join(f"{m['role']}\x01{' '.join(m['content'].split()).casefold()}" for m in messages)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def last_user_turn(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    head = [m for m in messages[:-1] if m["role"] in ("system", "developer")][:1]
    return [*head, messages[-1]]


@contextmanager
def atomic_writer(path: Path):
    """A text file written beside `path` and renamed onto it on success; removed on failure or `.discard`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden: a directory walk passes over it
    f = tmp.open("w", encoding="utf-8")
    f.discard = False
    try:
        yield f
        f.close()
        if f.discard:
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise


class _Converter:
    """One pass over the files: every record kept or dropped with its reason."""

    def __init__(self, options: FromLogsOptions, result: LogsResult, drops_file):
        self.opt, self.result, self.drops_file = options, result, drops_file
        self.seen_prompts: dict[str, str] = {}  # prompt hash -> FILE:LINE of its first occurrence
        self.ids: set[str] = set()
        self.batch_answers: dict[str, tuple[dict, str, int]] = {}  # custom_id -> (ChatCompletion, file, line)
        self.joined_ids: set[str] = set()

    def drop(self, file: str, line: int, event: int, kind: str, detail: str = "") -> None:
        self.result.dropped[kind] += 1
        where = f"{file}:{line}" + (f"[{event}]" if event else "")
        if len(self.result.shown) < SHOWN_DROPS:
            self.result.shown.append(f"{where}: {kind}: {detail}" if detail else f"{where}: {kind}")
        if self.drops_file is not None:
            row = {"file": file, "line": line, **({"event": event} if event else {}), "reason": kind, "detail": detail}
            self.drops_file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def collect_batch_answers(self, files: list[Path]) -> None:
        """The answers of OpenAI Batch output files (their first line has a custom_id and a response), by custom_id."""
        for path in files:
            first = True
            for line, raw, _ in read_lines(path):
                if raw is None or (first and (b'"custom_id"' not in raw or b'"response"' not in raw)):
                    break
                value, _ = _parse_line(raw, line)
                first = False
                if isinstance(value, dict) and "custom_id" in value and isinstance(value.get("response"), dict):
                    body = value["response"].get("body")
                    self.batch_answers.setdefault(str(value["custom_id"]),
                                                  (body if isinstance(body, dict) else {}, str(path), line))

    def run(self, files: list[Path], out, kto) -> None:
        for path in files:
            self.result.files += 1
            for line, raw, error in read_lines(path):
                if raw is None:  # the unreadable rest of the file counts as one record, dropped
                    self.result.records += 1
                    self.drop(str(path), line, 0, *error.split(": ", 1))
                    continue
                value, error = _parse_line(raw, line)
                if value is None and error is None:
                    continue  # a blank line
                for event, (rec, error) in enumerate(records(value, error)):
                    if rec is None and error is None:
                        continue
                    self.result.records += 1
                    try:
                        if error:
                            raise Skip(*error.split(": ", 1))
                        self.convert(rec, path, line, event, out, kto)
                    except Skip as skip:
                        self.drop(str(path), line, event, skip.kind, skip.detail)
        for custom_id, (_, file, line) in self.batch_answers.items():
            if custom_id not in self.joined_ids:
                self.drop(file, line, 0, "batch output without input",
                          f"no Batch input line with custom_id {custom_id!r} was read, so the answer has no prompt")
        self.result.joined = len(self.joined_ids)

    def convert(self, rec: Any, path: Path, line: int, event: int, out, kto) -> None:
        opt, where = self.opt, f"{path}:{line}" + (f"[{event}]" if event else "")
        call = identify(rec, opt.fmt)
        if call.batch_output:
            if self.batch_answers.get(call.request_id, (None, None, None))[1:] == (str(path), line):
                return  # read ahead of time; its answer goes with its input line
            raise Skip("batch output without input", "a Batch output line outside a Batch output file has no prompt")
        if opt.models and not any(fnmatch.fnmatchcase(m, pat) for m in call.models for pat in opt.models):
            raise Skip("filtered by model", f"model {', '.join(call.models) or 'unknown'} is not among --model "
                                            f"{', '.join(opt.models)}")
        answer = self.batch_answers.get(call.request_id, (None,))[0] if "custom_id" in call.record else None
        if answer is not None:
            self.joined_ids.add(call.request_id)
            call.timestamp = call.timestamp or parse_time(answer.get("created"))
        self.check_time(call)
        if call.source == "bedrock":
            messages, response, meta = bedrock_conversation(call)
        else:
            messages, response, meta = openai_conversation(call, answer)
        if opt.last_user_turn:
            messages = last_user_turn(messages)
        key = prompt_key(messages)
        if opt.dedupe and key in self.seen_prompts:
            raise Skip("duplicate prompt", f"the same prompt as {self.seen_prompts[key]}")
        if opt.responses == "asft" and response is None:
            raise Skip("no logged response", "--responses asft needs the logged answer")
        feedback = feedback_of(call)
        item_id = self.unique_id(call.request_id or f"{_stem(path)}:{line}")
        row = self.row(item_id, messages, response, feedback, call, meta, where)
        try:
            item_from_row(row, where)  # every line written must read back as an Item (`rft data validate`)
        except UserError as exc:
            raise Skip("invalid item", str(exc).split("not a valid item: ", 1)[-1]) from None
        if opt.dedupe:
            self.seen_prompts[key] = where
        self.ids.add(item_id)
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.result.kept += 1
        if kto is not None and feedback is not None and response is not None:
            kto.write(json.dumps({"id": item_id, "messages": messages, "completion": response, "label": feedback},
                                 ensure_ascii=False) + "\n")
            self.result.kto_rows += 1

    def check_time(self, call: Call) -> None:
        since, until = self.opt.since, self.opt.until
        if since is None and until is None:
            return
        if call.timestamp is None:
            raise Skip("no timestamp", "the record has no readable timestamp and a --since/--until filter is set")
        if since and call.timestamp < since:
            raise Skip("before --since", f"{call.timestamp.isoformat()} is before {since.isoformat()}")
        if until and call.timestamp > until:
            raise Skip("after --until", f"{call.timestamp.isoformat()} is after {until.isoformat()}")

    def unique_id(self, base: str) -> str:
        item_id, n = str(base), 1
        while item_id in self.ids:
            n += 1
            item_id = f"{base}-{n}"
        return item_id

    def row(self, item_id: str, messages, response, feedback, call: Call, meta: dict, where: str) -> dict[str, Any]:
        metadata = {"source": call.source, "source_line": where,
                    "timestamp": call.timestamp.isoformat() if call.timestamp else None, **meta}
        if feedback is not None:
            metadata["feedback"] = feedback
        metadata = {k: v for k, v in metadata.items() if v is not None}
        if self.opt.responses == "asft":
            return {"id": item_id, "messages": messages, "response": response,
                    "reward": reward_of(call, feedback), "metadata": metadata}
        row: dict[str, Any] = {"id": item_id, "messages": messages}
        if self.opt.responses == "reference" and response is not None:
            row["reference_answer"] = response
            metadata["logged_response"] = response
        row["metadata"] = metadata
        return row


def _stem(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    return name.rsplit(".", 1)[0] if Path(name).suffix.lower() in LOG_SUFFIXES else name


def from_logs(path: str | Path, out: str | Path, options: FromLogsOptions | None = None) -> LogsResult:
    """Convert the logs at PATH (a file or a directory walked recursively) into an Item file at OUT.

    OUT (and the KTO and report files) are written atomically; with no item kept OUT is left as it was."""
    options = options or FromLogsOptions()
    path, out = Path(path), Path(out)
    written = [p for p in (out, options.kto_out, options.report) if p is not None]
    files = log_files(path, {p.resolve() for p in written})
    result = LogsResult(out=out)
    drops = tempfile.TemporaryFile("w+", encoding="utf-8") if options.report else None
    try:
        converter = _Converter(options, result, drops)
        if options.fmt != "bedrock":
            converter.collect_batch_answers(files)
        with atomic_writer(out) as out_f, _maybe(options.kto_out) as kto_f:
            converter.run(files, out_f, kto_f)
            out_f.discard = not result.kept
            if kto_f is not None:
                kto_f.discard = not result.kept
        if options.report:
            _write_report(options.report, result, drops)
    finally:
        if drops is not None:
            drops.close()
    return result


@contextmanager
def _maybe(path: Path | None):
    if path is None:
        yield None
    else:
        with atomic_writer(path) as f:
            yield f


def _write_report(path: Path, result: LogsResult, drops) -> None:
    """{summary fields..., "drops": [{file, line, reason, detail}, ...]}, the drops streamed from their spool."""
    drops.seek(0)
    with atomic_writer(path) as f:
        f.write(json.dumps(result.summary(), indent=2)[:-2] + ',\n  "drops": [')
        for k, line in enumerate(drops):
            f.write(("," if k else "") + "\n    " + line.rstrip("\n"))
        f.write("\n  ]\n}\n")


def format_summary(result: LogsResult, kto_out: Path | None = None) -> str:
    """Records read, kept and dropped per reason, and what was written."""
    n_dropped = sum(result.dropped.values())
    rows = [f"read {result.records} record{'s' if result.records != 1 else ''} from {result.files} "
            f"file{'s' if result.files != 1 else ''}: kept {result.kept}, dropped {n_dropped}"
            + (f", {result.joined} Batch output lines joined to their inputs" if result.joined else "")]
    rows += [f"  {reason}: {count}" for reason, count in result.dropped.most_common()]
    if result.kept:
        rows.append(f"wrote {result.kept} item{'s' if result.kept != 1 else ''} to {result.out}")
        if kto_out is not None:
            rows.append(f"wrote {result.kto_rows} KTO row{'s' if result.kto_rows != 1 else ''} to {kto_out}"
                        + ("" if result.kto_rows else " (no kept record carried feedback and an answer)"))
    else:
        rows.append(f"no item written; {result.out} left as it was")
    return "\n".join(rows)


def format_drops(result: LogsResult, report: Path | None = None) -> str:
    """The first dropped lines, then how many more there are and where they all are."""
    rows = list(result.shown)
    more = sum(result.dropped.values()) - len(rows)
    if more > 0:
        rows.append(f"... and {more} more dropped line{'s' if more != 1 else ''}"
                    + (f" (all in {report})" if report else " (pass --report FILE.json to list them all)"))
    return "\n".join(rows)

"""`http`: a reward server that speaks the Amazon Nova reward-Lambda protocol.

The grader POSTs a JSON array with one object per sample and reads back one result per id,
so a reward Lambda written for Nova RFT (or SageMaker RFT) serves rftkit unchanged behind
any HTTP front (a Lambda Function URL, API Gateway, or `examples/reward_server/server.py`):

    request:  [{"id": "q-17#0",
                "messages": [...item.messages, {"role": "assistant", "content": "<completion>"}],
                "reference_answer": "42",
                "metadata": {"difficulty": "easy", "reference_answer": "42"}}]
    response: [{"id": "q-17#0", "aggregate_reward_score": 1.0,
                "metrics_list": [{"name": "correct", "value": 1.0, "type": "Reward"},
                                 {"name": "response_chars", "value": 31, "type": "Metric"}]}]

    >>> g = HttpGrader(url="http://127.0.0.1:8080/", batch_size=8)      # doctest: +SKIP
    >>> g.grade(Item(id="q", messages=[...], reference_answer="42"), "ANSWER: 42")  # doctest: +SKIP
    Score(reward=1.0, breakdown={'correct': 1.0, 'response_chars': 10.0}, error=None, latency_s=0.0)

How this differs from the Nova service (and why):
- The reward is `aggregate_reward_score` alone. Every `metrics_list` entry, `Reward` or
  `Metric`, lands in `Score.breakdown` for the logs; none is added to the reward.
- AWS documents two places for the reference: top-level `reference_answer` (SageMaker
  guide) and `metadata.reference_answer` (Bedrock guide). We send both so a Lambda written
  against either reads it; `metadata` also carries the row's other fields.
- Sample ids are `<item.id>#<k>` (k = position in the request), unique within a request.
- A Lambda-proxy wrapper `{"statusCode": 200, "body": "<json array>"}` is unwrapped. AWS
  does not show it for reward Lambdas, but it is what an API-Gateway-style handler returns
  when put behind a plain HTTP server; a non-2xx `statusCode` counts as that HTTP status.
- An id missing from the response fails that sample only (AWS does not say what the
  service does then); the ids that came back keep their scores.

Failures are `Score.failed("<flag>: <detail>")` for every sample they touch, never an
exception. The flags follow OpenAI's `<kind>_grader_<server|parse>_error` names:
- `unresponsive_reward_error`: timeout, connection failure, or the circuit breaker is open
  (the detail says which), after the retries.
- `http_grader_server_error`: an HTTP error status - 4xx at once (no retry; 429 excepted),
  5xx/429 after the retries.
- `http_grader_parse_error`: a 2xx answer that is not a JSON array of results, or whose
  entry for a sample lacks a finite numeric `aggregate_reward_score`, has a malformed
  `metrics_list`, or is missing.

Reliability: connection errors, timeouts, 429 and 5xx are retried with exponential backoff
and full jitter (retry.py); every failed attempt counts towards a per-grader circuit breaker,
so a dead endpoint costs one fast error per sample instead of a timeout-and-retry cycle. After
`breaker_reset_s` one trial request goes through (half open): success closes the circuit.
At most `concurrency` requests are in flight at once; connections are kept alive and shared
between threads. All attempts and backoff of one call end within `deadline_s`.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from rftkit.graders.retry import CircuitBreaker, CircuitOpen, Retryable, RetryPolicy, call_with_retries
from rftkit.types import Item, Score

UNRESPONSIVE = "unresponsive_reward_error"
SERVER_ERROR = "http_grader_server_error"
PARSE_ERROR = "http_grader_parse_error"

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAX_RESPONSE_BYTES = 64 << 20  # a runaway server cannot eat the trainer's memory
_BACKOFF_BASE_S, _BACKOFF_MAX_S = 0.2, 5.0


class _AttemptFailed(Retryable):
    """One failed attempt worth retrying (timeout, connection error, 429, 5xx)."""

    def __init__(self, flag: str, detail: str):
        super().__init__(f"{flag}: {detail}")
        self.flag, self.detail = flag, detail


class _Refused(Exception):
    """A failure not worth retrying (4xx; no free connection slot before the deadline)."""

    def __init__(self, flag: str, detail: str):
        super().__init__(f"{flag}: {detail}")
        self.flag, self.detail = flag, detail


class _ConnectionPool:
    """Idle keep-alive connections to one host, shared by all threads (LIFO: warm ones first).

    `http.client` connections are not thread-safe, so each request takes one out and puts it
    back; the grader's semaphore bounds how many exist at once. A shared pool rather than one
    connection per thread because the executor replaces its threads after a timeout, and
    per-thread connections would leak with them.
    """

    def __init__(self, scheme: str, host: str, port: int | None, size: int):
        self.scheme, self.host, self.port, self.size = scheme, host, port, size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def get(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before (and so may have been closed by the server)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self.new(), False

    def new(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port)

    def put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _positive(value: Any, field: str, integer: bool = False, allow_zero: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not (value >= 0 if allow_zero else value > 0):
        what = "an integer" if integer else "a number"
        raise ValueError(f"{field}: must be {what} {'>= 0' if allow_zero else '> 0'} (got {value!r})")


def _expand_headers(headers: Any) -> dict[str, str]:
    """Header values with `${VAR}` replaced from the environment (so tokens stay out of configs)."""
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise ValueError(f"headers: must be a mapping of header name to value (got {type(headers).__name__})")
    out = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"headers.{key}: header names and values must be strings (got {value!r})")
        missing = [name for name in _ENV_RE.findall(value) if name not in os.environ]
        if missing:
            raise ValueError(f"headers.{key}: environment variable {missing[0]} is not set")
        out[key] = _ENV_RE.sub(lambda m: os.environ[m.group(1)], value)
    return out


class HttpGrader:
    def __init__(
        self,
        url: str,
        name: str = "http",
        timeout_s: float = 10.0,
        batch_size: int = 8,
        max_attempts: int = 3,
        concurrency: int = 32,
        headers: dict[str, str] | None = None,
        breaker_failures: int = 5,
        breaker_reset_s: float = 30.0,
        deadline_s: float | None = None,
        needs_reference: bool = True,
    ):
        """
        url: http(s)://host[:port]/path the batches are POSTed to.
        timeout_s: one attempt (connect, send, wait, read), in seconds.
        batch_size: samples per request; the executor calls `grade_batch` with up to this many.
        max_attempts: tries per request (the first included) on timeouts, connection errors, 429, 5xx.
        concurrency: requests in flight at once to this endpoint (the executor's lane width too).
        headers: extra request headers; `${VAR}` in a value is read from the environment now.
        breaker_failures / breaker_reset_s: consecutive failed attempts that open the circuit,
            and how long it stays open before one trial request.
        deadline_s: all attempts plus backoff of one call; default: enough for every attempt.
        needs_reference: rows must carry `reference_answer` (Nova requires it; false to relax).
        """
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s?#]+", url):
            raise ValueError(f"url: must be an http:// or https:// URL with a host (got {url!r})")
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"url: bad port in {url!r}") from None
        if not parts.hostname:
            raise ValueError(f"url: must be an http:// or https:// URL with a host (got {url!r})")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: must be a non-empty string (got {name!r})")
        _positive(timeout_s, "timeout_s")
        _positive(batch_size, "batch_size", integer=True)
        _positive(max_attempts, "max_attempts", integer=True)
        _positive(concurrency, "concurrency", integer=True)
        _positive(breaker_failures, "breaker_failures", integer=True)
        _positive(breaker_reset_s, "breaker_reset_s")
        if deadline_s is not None:
            _positive(deadline_s, "deadline_s")
        if not isinstance(needs_reference, bool):
            raise ValueError(f"needs_reference: must be true or false (got {needs_reference!r})")

        self.url, self.name, self.timeout_s = url, name, float(timeout_s)
        self.batch_size, self.max_attempts, self.concurrency = batch_size, max_attempts, concurrency
        self.needs_reference = needs_reference
        backoff = sum(min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2**k) for k in range(max_attempts - 1))
        # 10% over the worst case so every attempt gets its full timeout_s by default
        self.deadline_s = float(deadline_s) if deadline_s is not None else 1.1 * (max_attempts * self.timeout_s + backoff)
        # Finish a little before the executor's own deadline, so the sample carries our precise
        # reason ("connection refused", "HTTP 503") rather than the executor's generic timeout.
        self._budget_s = self.deadline_s - min(0.5, 0.05 * self.deadline_s)
        self._policy = RetryPolicy(max_attempts=max_attempts, base_delay_s=_BACKOFF_BASE_S,
                                   max_delay_s=_BACKOFF_MAX_S, deadline_s=self._budget_s)
        self.breaker = CircuitBreaker(breaker_failures, float(breaker_reset_s))
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         "Host": parts.netloc, **_expand_headers(headers)}
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._pool = _ConnectionPool(parts.scheme, parts.hostname, port, concurrency)
        self._slots = threading.BoundedSemaphore(concurrency)
        self._trial = threading.Lock()  # one request at a time while the breaker is half open

    def __repr__(self) -> str:  # never shows headers: they may hold a token
        return f"HttpGrader(name={self.name!r}, url={self.url!r}, batch_size={self.batch_size})"

    # --- the Grader contract ---------------------------------------------------------

    def grade(self, item: Item, text: str) -> Score:
        return self.grade_batch([(item, text)])[0]

    def grade_batch(self, calls: list[tuple[Item, str]]) -> list[Score]:
        """One Score per (item, text), in order. Lists longer than batch_size go as several requests."""
        scores: list[Score] = []
        for start in range(0, len(calls), self.batch_size):
            scores += self._grade_request(calls[start:start + self.batch_size])
        return scores

    def close(self) -> None:
        self._pool.close()

    # --- one request ---------------------------------------------------------------------

    def _grade_request(self, calls: list[tuple[Item, str]]) -> list[Score]:
        ids = [f"{item.id}#{k}" for k, (item, _) in enumerate(calls)]
        body = json.dumps([_sample(sid, item, text) for sid, (item, text) in zip(ids, calls)], default=str).encode()
        end = time.monotonic() + self._budget_s
        attempts = 0

        def attempt() -> bytes:
            nonlocal attempts
            attempts += 1
            return self._post(body, end)

        try:
            data = call_with_retries(attempt, self._policy, self.breaker)
        except CircuitOpen as exc:
            return [Score.failed(f"{UNRESPONSIVE}: {exc}") for _ in calls]
        except (_AttemptFailed, _Refused) as exc:
            tries = f" (after {attempts} attempts)" if attempts > 1 else ""
            return [Score.failed(f"{exc.flag}: {exc.detail}{tries}") for _ in calls]
        return _parse_results(data, ids)

    def _post(self, body: bytes, end: float) -> bytes:
        """One attempt: the 2xx response body, or `_AttemptFailed` / `_Refused` / `CircuitOpen`."""
        # waiting for a slot counts against the deadline but not against this attempt's timeout_s
        if not self._slots.acquire(timeout=max(0.0, end - time.monotonic())):
            raise _Refused(UNRESPONSIVE, f"no free connection slot (concurrency {self.concurrency}) before the deadline")
        attempt_end = min(end, time.monotonic() + self.timeout_s)
        trial = self.breaker.state == "half_open"
        try:
            if trial and not self._trial.acquire(blocking=False):
                raise CircuitOpen("circuit half open: a trial request is already in flight")
            try:
                status, reason, data = self._exchange(body, attempt_end)
            finally:
                if trial:
                    self._trial.release()
        finally:
            self._slots.release()
        if 200 <= status < 300:
            return data
        detail = f"HTTP {status} {reason}: {_snippet(data)}"
        if status == 429 or status >= 500:
            raise _AttemptFailed(SERVER_ERROR, detail)
        raise _Refused(SERVER_ERROR, detail)

    def _exchange(self, body: bytes, attempt_end: float) -> tuple[int, str, bytes]:
        """Status, reason and body of one POST; a kept-alive connection the server dropped is redialled once."""
        started = time.monotonic()
        conn, reused = self._pool.get()
        try:
            try:
                return self._roundtrip(conn, body, attempt_end)
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.BadStatusLine):
                if not reused:
                    raise
                conn.close()  # the server closed it while idle: not the endpoint's fault, and POSTing a grade twice is safe
                conn = self._pool.new()
                return self._roundtrip(conn, body, attempt_end)
        except (TimeoutError, socket.timeout):
            conn.close()
            clipped = attempt_end - started < self.timeout_s - 1e-3
            limit = f"before the deadline ({self.deadline_s:g}s, deadline_s)" if clipped else f"within {self.timeout_s:g}s (timeout_s)"
            raise _AttemptFailed(UNRESPONSIVE, f"no answer {limit} from {self.url}") from None
        except ConnectionRefusedError:
            conn.close()
            raise _AttemptFailed(UNRESPONSIVE, f"connection refused by {self.url}") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _AttemptFailed(UNRESPONSIVE, f"connection to {self.url} failed: {type(exc).__name__}: {exc}") from None

    def _roundtrip(self, conn: http.client.HTTPConnection, body: bytes, attempt_end: float) -> tuple[int, str, bytes]:
        def left() -> float:
            remaining = attempt_end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            return remaining

        # socket timeouts bound each blocking operation, so reset them to what is left before
        # each one: the attempt as a whole (connect + send + wait + read) then ends on time
        conn.timeout = left()
        if conn.sock is None:
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = conn.sock  # kept: getresponse() detaches it from `conn` when the server says close
        sock.settimeout(left())
        conn.request("POST", self._path, body=body, headers=self._headers)
        sock.settimeout(left())
        response = conn.getresponse()
        chunks, size = [], 0
        while True:
            sock.settimeout(left())
            chunk = response.read1(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_RESPONSE_BYTES:
                conn.close()
                return 200, "OK", b"<response over 64 MiB>"  # parsed as a (clear) parse error
        response.close()  # marks the exchange done, else the connection refuses the next request
        if response.will_close:
            conn.close()
        else:
            self._pool.put(conn)
        return response.status, response.reason, b"".join(chunks)


def _sample(sample_id: str, item: Item, text: str) -> dict[str, Any]:
    """One element of the request array (see the module docstring)."""
    return {
        "id": sample_id,
        # a trajectory posts its whole conversation (tool calls and results), as the Nova Lambda contract has it
        "messages": [*item.messages, *(getattr(text, "messages", None) or [{"role": "assistant", "content": text}])],
        "reference_answer": item.reference_answer,
        "metadata": {**item.metadata, "reference_answer": item.reference_answer},
    }


def _snippet(data: bytes, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _number(value: Any) -> float | None:
    """A finite float from a JSON number; None for strings, booleans, NaN, infinities."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _parse_results(data: bytes, ids: list[str]) -> list[Score]:
    """Scores for `ids` from a response body; problems fail the samples they touch."""

    def all_failed(flag: str, detail: str) -> list[Score]:
        return [Score.failed(f"{flag}: {detail}") for _ in ids]

    try:
        results = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return all_failed(PARSE_ERROR, f"response is not JSON: {_snippet(data)}")
    if isinstance(results, dict) and "statusCode" in results and "body" in results:  # Lambda-proxy wrapper
        status = results["statusCode"]
        if not isinstance(status, int) or not 200 <= status < 300:
            return all_failed(SERVER_ERROR, f"wrapped statusCode {status!r}: {_snippet(str(results['body']).encode())}")
        results = results["body"]
        if isinstance(results, str):
            try:
                results = json.loads(results)
            except json.JSONDecodeError:
                return all_failed(PARSE_ERROR, f"wrapped body is not JSON: {_snippet(results.encode())}")
    if not isinstance(results, list):
        return all_failed(PARSE_ERROR, f"expected a JSON array of results, got {type(results).__name__}: {_snippet(data)}")

    wanted = set(ids)
    by_id: dict[str, Score] = {}
    for entry in results:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), (str, int)) or isinstance(entry["id"], bool):
            continue  # cannot be matched to a sample; the samples it was meant for fail as missing
        sample_id = str(entry["id"])
        if sample_id not in wanted:
            continue
        if sample_id in by_id:
            by_id[sample_id] = Score.failed(f"{PARSE_ERROR}: id {sample_id!r} returned more than once")
            continue
        by_id[sample_id] = _score(entry)
    return [by_id.get(sid) or Score.failed(f"{PARSE_ERROR}: no result for id {sid!r} in the response") for sid in ids]


def _score(entry: dict[str, Any]) -> Score:
    """One result object as a Score: reward from aggregate_reward_score, breakdown from metrics_list."""
    sample_id = entry["id"]
    reward = _number(entry.get("aggregate_reward_score"))
    if reward is None:
        got = entry.get("aggregate_reward_score", "nothing")
        return Score.failed(f"{PARSE_ERROR}: aggregate_reward_score of {sample_id!r} is not a finite number (got {got!r})")
    metrics = entry.get("metrics_list") or []
    if not isinstance(metrics, list):
        return Score.failed(f"{PARSE_ERROR}: metrics_list of {sample_id!r} is not a list")
    breakdown: dict[str, float] = {}
    for metric in metrics:
        name = metric.get("name") if isinstance(metric, dict) else None
        value = _number(metric.get("value")) if isinstance(metric, dict) else None
        if not isinstance(name, str) or value is None or metric.get("type", "Metric") not in ("Reward", "Metric"):
            return Score.failed(f"{PARSE_ERROR}: bad metrics_list entry of {sample_id!r}: {metric!r} "
                                "(want name, a finite numeric value and type Reward or Metric)")
        breakdown[name] = value
    return Score(reward=reward, breakdown=breakdown)

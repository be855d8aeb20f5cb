"""Retries with exponential backoff and jitter, and a circuit breaker, for graders that call out.

`call_with_retries(fn, policy, breaker)` runs `fn()` until it succeeds, raises a
non-retryable error, runs out of attempts or runs past `policy.deadline_s`. The breaker
opens after `failure_threshold` consecutive failed calls and then refuses calls at once
(`CircuitOpen`) for `reset_after_s`; the next call after that is a trial ("half open"):
success closes it, failure opens it again. A dead endpoint so costs one fast error per
sample instead of a full timeout-and-retry cycle each.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")


class CircuitOpen(Exception):
    """Refused without calling: the endpoint failed too often just now."""


class Retryable(Exception):
    """Raise (or wrap) to ask for another attempt: 5xx, 429, connection errors, timeouts."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_s: float = 0.2  # delay before attempt k+1 is uniform in [0, min(max, base * 2**k)] ("full jitter")
    max_delay_s: float = 5.0
    deadline_s: float = 60.0  # across all attempts; no new attempt starts past it

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2**attempt))


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_after_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold, self.reset_after_s, self.clock = failure_threshold, reset_after_s, clock
        self._failures = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half_open" if self.clock() - self._opened_at >= self.reset_after_s else "open"

    def before_call(self) -> None:
        if self.state == "open":
            raise CircuitOpen(f"circuit open after {self._failures} consecutive failures; retrying in "
                              f"{self.reset_after_s - (self.clock() - (self._opened_at or 0.0)):.1f}s")

    def record(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self._failures, self._opened_at = 0, None
                return
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._opened_at = self.clock()  # (re)open; a failed half-open trial restarts the wait


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, breaker: CircuitBreaker | None = None,
                      rng: random.Random | None = None, sleep: Callable[[float], None] = time.sleep) -> T:
    """`fn()` with retries on `Retryable`; other exceptions propagate at once."""
    rng = rng or random.Random()
    end = time.monotonic() + policy.deadline_s
    for attempt in range(policy.max_attempts):
        if breaker is not None:
            breaker.before_call()
        try:
            result = fn()
        except Retryable:
            if breaker is not None:
                breaker.record(False)
            pause = policy.delay(attempt, rng)
            if attempt + 1 == policy.max_attempts or time.monotonic() + pause >= end:
                raise
            sleep(pause)
            continue
        if breaker is not None:
            breaker.record(True)
        return result
    raise AssertionError("unreachable")  # the loop returns or raises

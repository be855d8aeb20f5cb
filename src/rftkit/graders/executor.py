"""Run a grader over a step's rollouts with deadlines, so a bad grader costs samples, not the run.

Each call has its own deadline (counted from when it starts, not when it was queued) and
the whole step has a budget. A call that raises gets `reward=None` with
`python_grader_runtime_error`; one past a deadline gets `unresponsive_reward_error` and is
abandoned. Threads cannot be killed, so a pool with abandoned calls is replaced for the
next step (its threads are daemons and cannot block exit). Untrusted code needs the
sandboxed process executor instead; this one suits in-process graders such as
`answer_match`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from rftkit.graders.base import Grader
from rftkit.types import Group, Score

TIMEOUT_ERROR = "unresponsive_reward_error"
RUNTIME_ERROR = "python_grader_runtime_error"


@dataclass
class GradingStats:
    errors: int  # failed calls, timeouts included
    timeouts: int
    latencies: list[float]  # seconds, completed calls only


class _DaemonPool:
    """A fixed set of daemon threads pulling (index, fn) jobs; results go to a shared queue."""

    def __init__(self, workers: int):
        self.jobs: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.started: dict[int, float] = {}
        for _ in range(workers):
            threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        while True:
            index, fn = self.jobs.get()
            self.started[index] = time.monotonic()
            try:
                self.results.put((index, fn(), None))
            except Exception as exc:  # noqa: BLE001 - any grader failure becomes a masked sample
                self.results.put((index, None, f"{RUNTIME_ERROR}: {type(exc).__name__}: {exc}"))


class ThreadGraderExecutor:
    def __init__(self, grader: Grader, timeout_s: float = 10.0, step_budget_s: float = 300.0, workers: int = 4):
        self.grader, self.timeout_s, self.step_budget_s, self.workers = grader, timeout_s, step_budget_s, workers
        self._pool = _DaemonPool(workers)

    def score(self, groups: list[Group]) -> GradingStats:
        """Attach a Score to every completion of `groups` (in place) and return the step's counts."""
        calls = [(g.item, c) for g in groups for c in g.completions]
        pool = self._pool
        pool.started.clear()
        for index, (item, completion) in enumerate(calls):
            pool.jobs.put((index, lambda item=item, text=completion.text: self.grader.grade(item, text)))
        budget_end = time.monotonic() + self.step_budget_s
        pending = set(range(len(calls)))
        timeouts = 0
        while pending:
            now = time.monotonic()
            started = [pool.started[i] for i in pending if i in pool.started]
            next_deadline = min([s + self.timeout_s for s in started] + [budget_end])
            try:
                index, score, error = pool.results.get(timeout=max(0.0, next_deadline - now))
            except queue.Empty:
                now = time.monotonic()
                for i in list(pending):
                    start = pool.started.get(i)
                    if now >= budget_end or (start is not None and now - start >= self.timeout_s):
                        reason = "step grading budget exhausted" if now >= budget_end else f"no answer within {self.timeout_s}s"
                        calls[i][1].score = Score.failed(f"{TIMEOUT_ERROR}: {reason}", latency_s=now - (start or now))
                        pending.discard(i)
                        timeouts += 1
                continue
            if index not in pending:
                continue
            pending.discard(index)
            latency = time.monotonic() - pool.started.get(index, time.monotonic())
            if error is None and not isinstance(score, Score):
                error, score = f"{RUNTIME_ERROR}: grader returned {type(score).__name__}, not a Score", None
            if error is None and score.reward is not None and score.reward != score.reward:  # NaN
                error, score = f"{RUNTIME_ERROR}: grader returned NaN", None
            result = Score.failed(error, latency) if error else score
            result.latency_s = latency
            calls[index][1].score = result
        if timeouts:
            self._pool = _DaemonPool(self.workers)  # abandoned calls keep their threads busy
        scores = [c.score for _, c in calls]
        return GradingStats(
            errors=sum(s.reward is None for s in scores),
            timeouts=timeouts,
            latencies=[s.latency_s for s in scores if s.reward is not None],
        )

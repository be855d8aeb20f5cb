"""Run a grader over a step's rollouts with deadlines, so a bad grader costs samples, not the run.

The executor grades the *leaves* of the grader tree (a `multi` grader's children, or the
grader itself) and combines them bottom-up (graders/tree.py). Each leaf has its own lane: a pool of
`leaf.concurrency` threads (default `workers`), so a slow HTTP judge cannot starve a fast
string check. A leaf with `grade_batch` gets up to `leaf.batch_size` samples per call.

Every call has a deadline (`leaf.deadline_s`, default `timeout_s`), counted from when it
starts, not when it was queued, and the whole step has a budget; a deadline fires within
START_POLL_S (plus scheduling) of its time, wherever the call was in the queue. A call that raises gives
`reward=None` with `python_grader_runtime_error`; one past a deadline gives
`unresponsive_reward_error` and is abandoned: its lane starts a fresh thread in its place
(threads cannot be killed; the stuck one is a daemon and exits when its call returns).
Untrusted code never runs in these threads: `python` and `code` graders hand it to
sandboxed worker processes that are killed at the deadline (sandbox.py).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rftkit.graders.base import RUNTIME_ERROR, TIMEOUT_ERROR, Grader
from rftkit.graders.tree import checked, combine, leaves
from rftkit.types import Group, Item, Score


START_POLL_S = 0.02  # how often the executor looks for calls that have started since it last computed deadlines


@dataclass
class GradingStats:
    errors: int  # failed samples, timeouts included
    timeouts: int  # samples failed by a deadline or the step budget
    latencies: list[float]  # seconds per sample (slowest leaf call), completed samples only
    injected: dict[str, int] = field(default_factory=dict)  # faults injected this step (fault.py), by kind

    def merged(self, other: GradingStats) -> GradingStats:
        """The counts of both (two rounds of a step, or two workers' shares)."""
        injected = dict(self.injected)
        for kind, n in other.injected.items():
            injected[kind] = injected.get(kind, 0) + n
        return GradingStats(self.errors + other.errors, self.timeouts + other.timeouts,
                            self.latencies + other.latencies, injected)


class _Lane:
    """`workers` daemon threads running one leaf grader's calls.

    A call abandoned at its deadline keeps its thread (threads cannot be killed), so the
    lane starts a replacement at once and the stuck thread exits when its call returns:
    the lane always has `workers` threads free to work, however many calls hang.
    """

    def __init__(self, workers: int):
        self.jobs: queue.Queue = queue.Queue()
        for _ in range(workers):
            self.spawn()

    def spawn(self) -> None:
        threading.Thread(target=self._work, daemon=True, name="rftkit-grader").start()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            job.started = time.monotonic()
            try:
                answer = (job, job.fn(), None)
            except Exception as exc:  # noqa: BLE001 - any grader failure becomes masked samples
                answer = (job, None, f"{RUNTIME_ERROR}: {type(exc).__name__}: {exc}")
            job.results.put(answer)
            with job.lock:
                job.done = True
                if job.abandoned:  # a replacement thread took this one's place
                    return

    def abandon(self, job: _Job) -> None:
        with job.lock:
            if not job.done:
                job.abandoned = True
                self.spawn()


@dataclass(eq=False)
class _Job:
    leaf: int  # index into the step's leaf list
    indices: list[int]  # samples this call grades
    fn: Callable[[], Any]
    deadline_s: float
    results: queue.Queue
    started: float | None = None
    done: bool = False
    abandoned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _drain(jobs: queue.Queue) -> None:
    while True:
        try:
            jobs.get_nowait()
        except queue.Empty:
            return


class ThreadGraderExecutor:
    """The local GraderExecutor: a lane of threads per leaf grader, deadlines per call, a budget per step."""

    def __init__(self, grader: Grader, timeout_s: float = 10.0, step_budget_s: float = 300.0, workers: int = 4):
        self.grader, self.timeout_s, self.step_budget_s, self.workers = grader, timeout_s, step_budget_s, workers
        self.leaves = leaves(grader)
        self._lanes = [self._new_lane(leaf) for leaf in self.leaves]

    def _new_lane(self, leaf: Grader) -> _Lane:
        return _Lane(int(getattr(leaf, "concurrency", None) or self.workers))

    def _jobs(self, leaf_index: int, calls: list[tuple[Item, str]], results: queue.Queue) -> list[_Job]:
        leaf = self.leaves[leaf_index]
        deadline = float(getattr(leaf, "deadline_s", None) or self.timeout_s)
        batch = int(getattr(leaf, "batch_size", 0) or 0)
        if batch and hasattr(leaf, "grade_batch"):
            chunks = [list(range(i, min(i + batch, len(calls)))) for i in range(0, len(calls), batch)]
            return [_Job(leaf_index, idx, lambda idx=idx: leaf.grade_batch([calls[i] for i in idx]), deadline, results)
                    for idx in chunks]
        return [_Job(leaf_index, [i], lambda i=i: leaf.grade(*calls[i]), deadline, results) for i in range(len(calls))]

    def grade_calls(self, calls: list[tuple[Item, str]]) -> tuple[list[Score], GradingStats]:
        """Scores for (item, text) pairs, in order, and the counts of this batch of calls."""
        injected_before = self._injected()
        results: queue.Queue = queue.Queue()  # per call of this method: stale answers of abandoned jobs go elsewhere
        leaf_scores: list[list[Score | None]] = [[None] * len(calls) for _ in self.leaves]
        pending: set[_Job] = set()
        for leaf_index, lane in enumerate(self._lanes):
            for job in self._jobs(leaf_index, calls, results):
                pending.add(job)
                lane.jobs.put(job)
        budget_end = time.monotonic() + self.step_budget_s
        while pending:
            deadlines = [j.started + j.deadline_s for j in pending if j.started is not None]
            if len(deadlines) < len(pending):  # a call not yet started has no deadline yet: look again soon
                deadlines.append(time.monotonic() + START_POLL_S)
            wait = min(deadlines + [budget_end]) - time.monotonic()
            try:
                job, answer, error = results.get(timeout=max(0.0, wait))
            except queue.Empty:
                now = time.monotonic()
                for job in list(pending):
                    over = job.started is not None and now - job.started >= job.deadline_s
                    if over or now >= budget_end:
                        reason = f"no answer within {job.deadline_s:g}s" if over else "step grading budget exhausted"
                        latency = now - (job.started or now)
                        for i in job.indices:
                            leaf_scores[job.leaf][i] = Score.failed(f"{TIMEOUT_ERROR}: {reason}", latency)
                        pending.discard(job)
                        if job.started is not None:
                            self._lanes[job.leaf].abandon(job)
                continue
            if job not in pending:
                continue
            pending.discard(job)
            latency = time.monotonic() - (job.started or time.monotonic())
            for i, score in zip(job.indices, self._unpack(job, answer, error)):
                score.latency_s = latency
                leaf_scores[job.leaf][i] = score
        for lane in self._lanes:  # jobs the step budget cut off before they started are dropped
            _drain(lane.jobs)
        scores = [combine(self.grader, calls[i], iter([s[i] for s in leaf_scores])) for i in range(len(calls))]
        injected_after = self._injected()
        return scores, GradingStats(
            errors=sum(s.reward is None for s in scores),
            timeouts=sum(bool(s.error) and s.error.startswith(TIMEOUT_ERROR) for s in scores),
            latencies=[s.latency_s for s in scores if s.reward is not None],
            injected={k: injected_after[k] - injected_before.get(k, 0) for k in injected_after},
        )

    @staticmethod
    def _unpack(job: _Job, answer: Any, error: str | None) -> list[Score]:
        if error is not None:
            return [Score.failed(error) for _ in job.indices]
        if len(job.indices) == 1 and not isinstance(answer, list):
            return [checked(answer)]
        if not isinstance(answer, list) or len(answer) != len(job.indices):
            got = f"{len(answer)} scores" if isinstance(answer, list) else type(answer).__name__
            return [Score.failed(f"{RUNTIME_ERROR}: grade_batch returned {got} for {len(job.indices)} samples")
                    for _ in job.indices]
        return [checked(a) for a in answer]

    def score(self, groups: list[Group]) -> tuple[list[list[Score]], GradingStats]:
        """A Score for every completion of `groups` (per group, in order) and the step's counts.

        Nothing is written into the groups: `[g.scored(s) for g, s in zip(groups, scores)]` attaches them."""
        scores, stats = self.grade_calls([(g.item, c.answer) for g in groups for c in g.completions])
        per_group, start = [], 0
        for g in groups:
            per_group.append(scores[start : start + len(g.completions)])
            start += len(g.completions)
        return per_group, stats

    def _injected(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for leaf in self._nodes():
            for kind, n in getattr(leaf, "injected", {}).items():
                counts[kind] = counts.get(kind, 0) + n
        return counts

    def _nodes(self) -> list[Grader]:
        return list({id(g): g for g in [self.grader, *self.leaves]}.values())

    def close(self) -> None:
        for node in self._nodes():
            if hasattr(node, "close"):
                node.close()


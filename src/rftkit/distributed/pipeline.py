"""Asynchronous training's rollouts (`async.max_off_policy_steps: k`): batches generating ahead of the learner.

`AheadPipeline.next` hands the learner the oldest batch in flight, generated and graded, and
keeps `k` more in flight with the weights of the moment: while the learner trains on batch s,
the rollout workers sample batch s+1 and the grader workers grade it as each worker's part
arrives (Ray passes it from one actor to the other; k = 1). A batch submitted at version v is trained by
version v + k: staleness is at most k by construction; the stage still checks each group and
drops (and counts) any older than k. The prompts of batches in flight are part of the stage's
checkpoint and are submitted again first on resume, so a resumed run neither repeats nor skips
a prompt.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from rftkit.types import Item


class AheadPipeline:
    def __init__(self, engine, executor, ahead: int, n: int, sampling) -> None:
        self.engine, self.executor, self.ahead, self.n, self.sampling = engine, executor, ahead, n, sampling
        self.pending: deque[tuple[list[int], object, object]] = deque()
        self.versions: dict[int, int] = {}  # id(generating) -> the weights version it was submitted with

    def submit(self, indices: list[int], items: list[Item]) -> None:
        """Generate, then grade in the grader workers as each rollout worker's part is done (chained in Ray)."""
        generating = self.engine.submit(items, self.n, self.sampling)
        self.versions[id(generating)] = self.engine.version
        self.pending.append((indices, generating, self.executor.submit_generated(generating[1])))

    def arrived(self, make: Callable[[], tuple[list[int], list[Item]]], now: int, timeout_s: float):
        """Deferred rewards: the learner trains on batches as their rewards arrive, in any order.

        Keeps k + 1 batches in flight (at most 2(k + 1) while slow ones wait), drops the batches whose
        rewards can no longer arrive within the bound (sampled more than k versions before `now`), waits
        for the first batch to be graded if none is (never for a particular one) and returns
        (groups, scores, stats, dropped groups, groups still waiting) of every batch whose rewards are in."""
        while len(self.pending) < min(self.ahead + 1 + self._waiting(), 2 * (self.ahead + 1)):
            self.submit(*make())
        dropped = 0
        for entry in list(self.pending):
            if now - self.versions[id(entry[1])] > self.ahead:  # too late for this policy: dropped, counted
                dropped += len(entry[0])
                self._forget(entry)
        if not self.pending:
            self.submit(*make())
        deadline = time.monotonic() + timeout_s
        ready = [e for e in self.pending if self.executor.ready(e[2])]
        while not ready and time.monotonic() < deadline:
            self.executor.wait_any([e[2] for e in self.pending], deadline - time.monotonic())
            ready = [e for e in self.pending if self.executor.ready(e[2])]
        if not ready:
            raise RuntimeError(f"no batch was graded within {timeout_s:g}s (runtime.timeout_s)")
        groups, scores, stats = [], [], None
        for entry in ready:
            groups += self.engine.collect(entry[1])
            part_scores, part_stats = self.executor.collect(entry[2])
            scores += part_scores
            stats = part_stats if stats is None else stats.merged(part_stats)
            self._forget(entry)
        return groups, scores, stats, dropped, sum(len(e[0]) for e in self.pending)

    def _waiting(self) -> int:
        """Batches in flight whose generation is done but whose rewards are not (slow graders)."""
        return sum(1 for e in self.pending if not self.executor.ready(e[2]) and self.engine.done(e[1]))

    def _forget(self, entry) -> None:
        self.pending.remove(entry)
        self.versions.pop(id(entry[1]), None)

    def next(self, make: Callable[[], tuple[list[int], list[Item]]]):
        """(prompt indices, groups, their scores, grading stats, seconds the learner waited); `make()` takes the
        next prompts."""
        if not self.pending:
            self.submit(*make())
        indices, generating, grading = self.pending.popleft()
        while len(self.pending) < self.ahead:  # sampled by the weights of now, trained k versions later
            self.submit(*make())
        t0 = time.perf_counter()
        groups = self.engine.collect(generating)
        scores, stats = self.executor.collect(grading)
        return indices, groups, scores, stats, time.perf_counter() - t0

    def inflight(self) -> list[list[int]]:
        return [indices for indices, _, _ in self.pending]

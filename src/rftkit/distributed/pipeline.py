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

    def submit(self, indices: list[int], items: list[Item]) -> None:
        """Generate, then grade in the grader workers as each rollout worker's part is done (chained in Ray)."""
        generating = self.engine.submit(items, self.n, self.sampling)
        self.pending.append((indices, generating, self.executor.submit_generated(generating[1])))

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

"""Grader workers: Ray actors, each running the local executor (graders/executor.py) over its
share of a step's groups, and `RayGraderExecutor`, the GraderExecutor the stage scores with
when `runtime.backend: ray`.

Each worker builds the grader from its config and keeps its own sandbox pools, lanes and
deadlines, so per-call deadlines, the step budget (every worker grades its share within it,
all at once), retries and error accounting are the local executor's. A worker killed mid-call
is restarted by Ray and its share is graded again (`max_task_retries`); the restart is counted.
"""

from __future__ import annotations

import os

from rftkit.distributed.rollout import split_evenly
from rftkit.distributed.runtime import get, stop
from rftkit.graders.executor import GradingStats
from rftkit.types import Group, Score


class GraderWorker:
    def __init__(self, grader_config, timeout_s: float, step_budget_s: float, workers: int) -> None:
        from rftkit.graders import build_grader
        from rftkit.graders.executor import ThreadGraderExecutor

        self.executor = ThreadGraderExecutor(build_grader(grader_config, "grader"), timeout_s, step_budget_s, workers)

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def score(self, groups: list[Group]):
        scores, stats = self.executor.score(groups)
        return scores, stats, os.getpid()

    def score_generated(self, generated):
        """Grade a rollout worker's answer as it arrives (Ray passes its result here, not via the driver)."""
        return self.score(generated[0])

    def close(self) -> None:
        self.executor.close()


class RayGraderExecutor:
    def __init__(self, ray, grader_config, *, workers: int, timeout_s: float, step_budget_s: float, threads: int,
                 cpus: float, wait_s: float) -> None:
        self.ray, self.wait_s = ray, max(wait_s, step_budget_s + 60.0)  # a worker answers by its step budget
        # max_concurrency: a slow (deferred) batch's grading must not hold up the next batch's in the same worker
        actor = ray.remote(GraderWorker).options(num_cpus=cpus, max_restarts=-1, max_task_retries=-1, max_concurrency=8)
        self.workers = [actor.remote(grader_config, timeout_s, step_budget_s, threads) for _ in range(workers)]
        self.pids = self._get([w.pid.remote() for w in self.workers])
        self.restarts = 0

    def score(self, groups: list[Group]) -> tuple[list[list[Score]], GradingStats]:
        parts = split_evenly(groups, len(self.workers))
        busy = [(i, part) for i, part in enumerate(parts) if part]
        return self.collect((busy, [self.workers[i].score.remote(part) for i, part in busy]))

    def submit_generated(self, generated: list):
        """Grade each rollout worker's result (ObjectRefs of RayEngine.submit) as soon as it exists: asynchronous
        runs grade batch s+1 while the learner trains on batch s. `collect` waits for the scores."""
        busy = [(j % len(self.workers), None) for j in range(len(generated))]
        return busy, [self.workers[i].score_generated.remote(ref) for (i, _), ref in zip(busy, generated)]

    def ready(self, pending) -> bool:
        """Whether every share's scores are in (deferred rewards: the learner never waits for them)."""
        refs = pending[1]
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        return len(done) == len(refs)

    def wait_any(self, pendings: list, timeout_s: float) -> None:
        """Return once any share of any of `pendings` is graded, or after `timeout_s`."""
        refs = [ref for pending in pendings for ref in pending[1]]
        if refs:
            self.ray.wait(refs, num_returns=1, timeout=max(timeout_s, 0.0))

    def collect(self, pending) -> tuple[list[list[Score]], GradingStats]:
        busy, refs = pending
        results = self._get(refs)
        scores: list[list[Score]] = []
        stats = GradingStats(0, 0, [], {})
        for (i, _), (part_scores, part_stats, pid) in zip(busy, results):
            if pid != self.pids[i]:
                self.restarts += 1
                self.pids[i] = pid
            scores += part_scores
            stats = stats.merged(part_stats)
        return scores, stats

    def _get(self, refs: list) -> list:
        return get(self.ray, refs, self.wait_s, "grader workers (grading.step_budget_s + 60)")

    def close(self) -> None:
        stop(self.ray, self.workers)

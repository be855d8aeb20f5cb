"""Rollout workers: Ray actors, each with its own copy of the model behind an HFEngine, and
`RayEngine`, the Engine the stage samples with when `runtime.backend: ray`.

- A worker is made from the policy's module as it is at the start (sent once through Ray's
  object store) and gets new weights through `update_weights`: the driver puts the trainable
  parameters in the object store once per version, and each worker fetches them when its next
  call names a version it does not have. Completions carry the version that sampled them.
- Random numbers: with one worker (synchronous runs) the driver's torch generator state travels
  with each call and comes back advanced, so a run samples exactly what the local backend
  samples. With more workers, or calls in flight together (asynchronous runs), each call seeds
  each worker from (train.seed, weights version, call since that version, worker): reproducible,
  also across `--resume`, but not equal to the local run (a batch split in two draws other numbers).
- A worker whose process dies is restarted by Ray and the call is retried on it
  (`max_task_retries`): it starts from the same weights version and the same random state, so
  the call returns what it would have; the driver counts the restart (the worker's pid changed).
- Every wait has a deadline (`runtime.timeout_s`).
"""

from __future__ import annotations

import os
import time

import torch

from rftkit.distributed.runtime import get, stop
from rftkit.rollout.base import SamplingParams
from rftkit.types import Completion, Group, Item


class RolloutWorker:
    """The actor's class (RayEngine applies ray.remote to it)."""

    def __init__(self, module, tokenizer, batch_size: int, threads: int) -> None:
        from rftkit.rollout.hf import HFEngine

        if threads:
            torch.set_num_threads(threads)
        module.eval()
        self.engine = HFEngine(module, tokenizer, batch_size=batch_size)
        self.version = -1  # no weights pushed yet: the module's own

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def generate(self, weights: list, version: int, rng, items: list[Item], n: int, sampling: SamplingParams,
                 behaviour: bool = False):
        t0 = time.time()
        self._sync(weights, version)
        self._seed(rng)
        groups = self.engine.generate(items, n, sampling)
        if behaviour:  # an asynchronous run trains on them later, against these log-probs
            groups = self._with_logprobs(groups, sampling.temperature)
        return groups, torch.get_rng_state(), os.getpid(), (t0, time.time())

    @torch.no_grad()
    def _with_logprobs(self, groups: list[Group], temperature: float, chunk: int = 64) -> list[Group]:
        """Each completion's log-probs under this worker's weights (the behaviour policy), as the loss computes them."""
        from dataclasses import replace

        from rftkit.models.packed import policy_logprobs

        flat = [(g.prompt_ids, c) for g in groups for c in g.completions]
        values: list[list[float]] = []
        for start in range(0, len(flat), chunk):
            part = flat[start : start + chunk]
            logp, mask = policy_logprobs(self.engine.model, [p for p, _ in part], [c.token_ids for _, c in part],
                                         temperature, self.engine.pad_id)
            values += [row[m.bool()].tolist() for row, m in zip(logp, mask)]
        it = iter(values)
        return [replace(g, completions=[replace(c, logprobs=next(it)) for c in g.completions]) for g in groups]

    def generate_from_ids(self, weights: list, version: int, rng, prompts: list[list[int]], sampling: SamplingParams):
        t0 = time.time()
        self._sync(weights, version)
        self._seed(rng)
        return self.engine.generate_from_ids(prompts, sampling), torch.get_rng_state(), os.getpid(), (t0, time.time())

    def _sync(self, weights: list, version: int) -> None:
        if version != self.version and weights:
            import ray

            self.engine.update_weights(ray.get(weights[0]), version)
            self.version = version

    @staticmethod
    def _seed(rng) -> None:
        if isinstance(rng, int):
            torch.manual_seed(rng)
        else:
            torch.set_rng_state(rng)


class RayEngine:
    """The Engine protocol over `workers` RolloutWorker actors: each call's items split evenly among them."""

    def __init__(self, ray, module, tokenizer, *, workers: int, batch_size: int, cpus: float, gpus: float,
                 seed: int, timeout_s: float, threads: int = 0, follow_driver_rng: bool = True) -> None:
        self.ray, self.timeout_s, self.seed = ray, timeout_s, seed
        # one worker, one call at a time: it continues the driver's random stream (the local backend's samples)
        self.handoff = follow_driver_rng and workers == 1
        actor = ray.remote(RolloutWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=-1)
        self._model = ray.put(module)  # held for the run: a restarted worker is made from it again
        self.workers = [actor.remote(self._model, tokenizer, batch_size, threads or max(1, int(cpus))) for _ in range(workers)]
        self.pids = self._get([w.pid.remote() for w in self.workers], "start")
        self.restarts = 0
        self.idle_s = 0.0  # summed over workers: time between the end of a call and the start of the next
        self.ended: list[float | None] = [None] * workers
        self.version = 0
        self.calls = 0
        self._weights: list = []

    # ---- the Engine protocol --------------------------------------------------------------------
    def generate(self, items: list[Item], n: int, sampling: SamplingParams) -> list[Group]:
        return self.collect(self.submit(items, n, sampling, behaviour=False))

    def submit(self, items: list[Item], n: int, sampling: SamplingParams, behaviour: bool = True):
        """Start generating with the current weights and return at once (asynchronous training); `collect` waits.
        `behaviour`: each completion's `logprobs` are its sampling version's, for the off-policy correction."""
        parts = split_evenly(items, len(self.workers))
        return self._submit("generate", parts, lambda part: (part, n, sampling, behaviour))

    def done(self, pending) -> bool:
        refs = pending[1]
        return len(self.ray.wait(refs, num_returns=len(refs), timeout=0)[0]) == len(refs)

    def collect(self, pending) -> list[Group]:
        return [g for groups in self._collect(pending, "generate") for g in groups]

    def generate_from_ids(self, prompts: list[list[int]], sampling: SamplingParams, reuse: bool = False) -> list[Completion]:
        # the kept keys of a turn live in one worker; the next turn's rows may go to another, so no reuse here
        parts = split_evenly(prompts, len(self.workers))
        out = self._collect(self._submit("generate_from_ids", parts, lambda part: (part, sampling)), "generate_from_ids")
        return [c for completions in out for c in completions]

    def update_weights(self, state_or_policy, version: int) -> None:
        module = getattr(state_or_policy, "module", None)
        if module is not None:
            state = {k: p.detach().cpu() for k, p in module.named_parameters() if p.requires_grad}
        else:
            state = {k: v.detach().cpu() for k, v in state_or_policy.items()}
        self._weights = [self.ray.put(state)]  # in a list: a worker fetches it only when its version is behind
        self.version = version
        self.calls = 0

    # ---- the workers -------------------------------------------------------------------------
    def _submit(self, method: str, parts: list[list], args):
        self.calls += 1
        busy = [(self.workers.index(w), part) for w, part in zip(self.workers, parts) if part]
        if self.handoff:
            rng = [torch.get_rng_state()]  # one worker samples what the local engine would: the driver's stream
        else:
            # (seed, weights version, call since that version, worker): the same after --resume as in one run
            rng = [(self.seed * 1_000_003 + self.version * 10_007 + self.calls * 1_009 + i) % (2**63)
                   for i in range(len(busy))]
        refs = [getattr(self.workers[i], method).remote(self._weights, self.version, r, *args(part))
                for (i, part), r in zip(busy, rng)]
        return busy, refs

    def _collect(self, pending, what: str) -> list:
        busy, refs = pending
        results = self._get(refs, what)
        for (i, _), (_, _, pid, (start, end)) in zip(busy, results):
            if pid != self.pids[i]:
                self.restarts += 1
                self.pids[i] = pid
            if self.ended[i] is not None:  # the worker had nothing to do between its last call and this one
                self.idle_s += max(0.0, start - self.ended[i])
            self.ended[i] = end
        if self.handoff and results:
            torch.set_rng_state(results[0][1])
        return [r[0] for r in results]

    def _get(self, refs: list, what: str) -> list:
        return get(self.ray, refs, self.timeout_s, f"rollout workers (`{what}`, runtime.timeout_s)")

    def close(self) -> None:
        stop(self.ray, self.workers, close=False)


def split_evenly(values: list, parts: int) -> list[list]:
    """`values` in `parts` contiguous runs, as even as can be (the first ones one longer)."""
    size, extra = divmod(len(values), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(values[start:end])
        start = end
    return out

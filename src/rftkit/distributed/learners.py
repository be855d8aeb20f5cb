"""Data-parallel learners (`runtime.learners: N`): N Ray actors, each holding a copy of the
policy, all-reducing their gradients with torch.distributed (gloo on CPU, NCCL on GPU).

`LearnerGroup` is the Policy the GRPO stage trains when N > 1. An update splits the batch's
rows into N contiguous shares (a group's rows stay together); every learner backpropagates
its share with the **whole batch's** normaliser (`step_counts` of all rows), the gradients are
summed across learners before the clip, and each learner takes the same optimizer step, so
the N copies stay equal and the step is the one a single learner takes on the whole batch.
The driver keeps its own copy of the module (for the engine, checkpoints and the final
model) and copies the learners' trainable weights into it after each update.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch

from rftkit.distributed.rollout import split_evenly
from rftkit.errors import UserError
from rftkit.distributed.runtime import get, stop
from rftkit.policy.base import LossSpec, Row
from rftkit.policy.local import step_counts


class LearnerDied(UserError):
    """A learner's process ended mid-run: the learners' copies can no longer agree, so the run stops (exit 1)."""


class LearnerWorker:
    def __init__(self, policy, threads: int) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.policy = policy
        policy.reduce_gradients = self._all_reduce

    # ---- joining the process group ------------------------------------------------------------
    @staticmethod
    def rendezvous() -> str:
        """tcp://IP:PORT on this learner's node, for rank 0 to listen on."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def join(self, address: str, rank: int, world: int, timeout_s: float) -> int:
        backend = "nccl" if torch.cuda.is_available() and self.policy.device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, init_method=address, rank=rank, world_size=world,
                                             timeout=timedelta(seconds=timeout_s))
        return os.getpid()

    def _all_reduce(self, params: list[torch.nn.Parameter]) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)  # sum: every share's loss was divided by the whole batch's sizes
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    # ---- the Policy's work on a share ----------------------------------------------------------
    def update(self, rows: list[Row], spec: LossSpec, counts) -> dict:
        return {**self.policy.update(rows, spec, counts), "lr": self.policy.lr}

    def gradient(self, rows: list[Row], spec: LossSpec, counts) -> torch.Tensor:
        """The summed gradient of the batch (this share's, all-reduced), flattened; gradients cleared after."""
        self.policy.accumulate_grpo(rows, spec, counts)
        params = [p for p in self.policy.module.parameters() if p.requires_grad]
        self._all_reduce(params)
        flat = torch.cat([p.grad.reshape(-1) for p in params]).cpu()
        self.policy.optimizer.zero_grad(set_to_none=True)
        return flat

    def logprobs(self, rows: list[Row], temperature: float, reference: bool) -> list[torch.Tensor]:
        fn = self.policy.reference_logprobs if reference else self.policy.logprobs
        return fn(rows, temperature)

    def weights(self) -> dict:
        return {k: p.detach().cpu() for k, p in self.policy.module.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict:
        return self.policy.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state)

    def close(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class LearnerGroup:
    """The Policy protocol over N LearnerWorker actors; `local` is the driver's policy, kept in step."""

    def __init__(self, ray, local, *, learners: int, cpus: float, gpus: float, timeout_s: float, threads: int = 0) -> None:
        self.ray, self.local, self.timeout_s = ray, local, timeout_s
        actor = ray.remote(LearnerWorker).options(num_cpus=cpus, num_gpus=gpus)  # a dead learner ends the run
        self._start = ray.put(local)
        self.workers = [actor.remote(self._start, threads or max(1, int(cpus))) for _ in range(learners)]
        address = self._get([self.workers[0].rendezvous.remote()])[0]
        self._get([w.join.remote(address, rank, learners, timeout_s) for rank, w in enumerate(self.workers)])
        self._lr = local.lr

    # Policy protocol ------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.local.version

    @property
    def module(self):
        return self.local.module

    @property
    def lr(self) -> float:
        return self._lr

    def logprobs(self, rows: list[Row], temperature: float = 1.0) -> list[torch.Tensor]:
        return self._logprobs(rows, temperature, False)

    def reference_logprobs(self, rows: list[Row], temperature: float = 1.0) -> list[torch.Tensor]:
        return self._logprobs(rows, temperature, True)

    def update(self, rows: list[Row], spec: LossSpec) -> dict[str, float]:
        counts = step_counts(rows, spec)
        parts = split_evenly(rows, len(self.workers))
        results = self._get([w.update.remote(part, spec, counts) for w, part in zip(self.workers, parts)])
        self.local.module.load_state_dict(self._get([self.workers[0].weights.remote()])[0], strict=False)
        self.local.version += 1
        self._lr = results[0]["lr"]
        summed = {k: sum(r[k] for r in results) for k in ("pg_loss", "kl", "clipped", "mismatch_kl", "tokens", "rows")}
        return {**summed, "grad_norm": results[0]["grad_norm"],  # the all-reduced gradient's: the same on every learner
                "time_backward": max(r["time_backward"] for r in results),
                "time_optimizer": max(r["time_optimizer"] for r in results)}

    def gradient(self, rows: list[Row], spec: LossSpec) -> torch.Tensor:
        """The batch's gradient as the learners compute it together (tests compare it with one learner's)."""
        counts = step_counts(rows, spec)
        parts = split_evenly(rows, len(self.workers))
        return self._get([w.gradient.remote(part, spec, counts) for w, part in zip(self.workers, parts)])[0]

    def update_with(self, accumulate):
        raise NotImplementedError("runtime.learners > 1 trains GRPO; the offline stages train in one learner")

    def state_dict(self) -> dict:
        return self._get([self.workers[0].state_dict.remote()])[0]

    def load_state_dict(self, state: dict) -> None:
        self._get([w.load_state_dict.remote(state) for w in self.workers])
        self.local.load_state_dict(state)

    def evaluating(self):
        return self.local.evaluating()

    def save_pretrained(self, folder, merge_lora: bool = False) -> None:
        self.local.save_pretrained(folder, merge_lora)

    def close(self) -> None:
        stop(self.ray, self.workers)

    def _logprobs(self, rows: list[Row], temperature: float, reference: bool) -> list[torch.Tensor]:
        parts = split_evenly(rows, len(self.workers))
        out = self._get([w.logprobs.remote(part, temperature, reference) for w, part in zip(self.workers, parts) if part])
        return [t for part in out for t in part]

    def _get(self, refs: list) -> list:
        try:
            return get(self.ray, refs, self.timeout_s, "learners (runtime.timeout_s)")
        except self.ray.exceptions.RayActorError as exc:
            raise LearnerDied(f"a learner died ({type(exc).__name__}): the run stops here; continue it with "
                              f"`rft train --resume RUN_DIR`, which starts from the last checkpoint") from None

"""Starting or joining Ray for a run, and checking a run's workers fit before any is made.

`connect(spec)` returns once Ray is up, or raises ConfigError (the CLI exits 2) with one line
that names the fix: Ray not installed, an address nothing answers on, a cluster that cannot
place the workers asked for. Every wait has a deadline (`runtime.connect_timeout_s`).

- `address: ""` starts a local Ray instance for this run, with as many logical CPUs as the
  workers ask for (at least the machine's): on a laptop, 2 rollout and 2 grader workers share
  2 cores, as the local backend's threads would.
- `address: auto` joins the cluster `ray start --head` started on this machine;
  `host:port` or `ray://host:port` joins one elsewhere (docs/SCALING.md).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from rftkit.errors import ConfigError


@dataclass(frozen=True)
class WorkerRequest:
    kind: str  # "rollout", "grader", "learner"
    count: int
    cpus: float
    gpus: float


def require_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError('runtime.backend=ray needs Ray: pip install -e ".[ray]" (or runtime.backend=local)') from None
    return ray


def connect(address: str, requests: list[WorkerRequest], timeout_s: float = 30.0):
    """Ray, initialised (or already so in this process) with room for `requests`; ConfigError if not."""
    ray = require_ray()
    if not ray.is_initialized():
        if address:
            _reachable(address, timeout_s)
            try:
                ray.init(address=address, log_to_driver=False, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"runtime.address={address}: could not join the Ray cluster ({first}); "
                                  f"start one with `ray start --head` or leave runtime.address empty") from None
        else:
            cpus = max(os.cpu_count() or 1, int(-(-sum(r.count * r.cpus for r in requests) // 1)))
            gpus = _local_gpus()
            ray.init(num_cpus=cpus, num_gpus=gpus, log_to_driver=False, include_dashboard=False,
                     object_store_memory=_store_bytes())
    check_fits(ray.cluster_resources(), requests)
    return ray


def check_fits(resources: dict, requests: list[WorkerRequest]) -> None:
    """ConfigError naming the first resource the workers need more of than the cluster has."""
    for name, key in (("CPUs", "CPU"), ("GPUs", "GPU")):
        attr = "cpus" if key == "CPU" else "gpus"
        want = sum(r.count * getattr(r, attr) for r in requests)
        have = float(resources.get(key, 0.0))
        if want > have + 1e-9:
            asked = ", ".join(f"{r.count} {r.kind} x {getattr(r, attr):g}" for r in requests if getattr(r, attr))
            raise ConfigError(f"the workers need {want:g} {name} ({asked}) but the Ray cluster has {have:g}: "
                              f"lower runtime.*_workers or runtime.{'cpus' if key == 'CPU' else 'gpus'}_per_*, or add nodes")


def get(ray, refs: list, timeout_s: float, who: str) -> list:
    """ray.get with a deadline: RuntimeError naming who did not answer (every wait on Ray is bounded)."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(f"{who} did not answer within {timeout_s:g}s") from None


def stop(ray, workers: list, close: bool = True) -> None:
    """Let each actor close what it holds (sandbox pools, process groups), at most 10 s each, then kill it."""
    for w in workers:
        if close:
            try:
                ray.get(w.close.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a worker already gone has nothing to close
                pass
        ray.kill(w)
    workers.clear()


def _reachable(address: str, timeout_s: float) -> None:
    """A joined cluster's address must answer within the deadline (ray.init alone may wait far longer)."""
    if address == "auto":
        return  # ray.init finds (or fails to find) the local head itself, at once
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"runtime.address={address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=min(timeout_s, 10.0)):
            pass
    except OSError as exc:
        raise ConfigError(f"runtime.address={address}: nothing answers there ({exc.strerror or exc}); "
                          f"start the head with `ray start --head --port {port}` or fix the address") from None


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no CUDA build: no GPUs
        return 0


def _store_bytes() -> int:
    """Ray's object store for a local run: a quarter of memory, at most 4 GiB (weights and groups pass through it)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return int(min(total // 4, 4 << 30))

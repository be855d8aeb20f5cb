"""Throughput of the sandboxed `python` grader against a process-per-call baseline.

    python bench/grader_sandbox.py [--calls 400] [--workers N]

Both sides grade the same `grade(sample, item)` with the same number of concurrent
calls (threads), on the same machine:

- pool: rftkit's `python` grader, i.e. a fork of a pre-started sandbox worker per call,
  with every protection on (namespaces, Landlock, uid drop, rlimits);
- baseline: a fresh `python -c` process per call (no sandbox at all), which is what a
  grader that shells out per sample costs; also shown with `-I -S` (no site import), the
  cheapest interpreter start.

The pool's start-up (once per run) is reported but not counted. Then, on a one-worker
pool and serial calls, where a call's time goes: the run itself (the zygote's fork of the
run's process, its confinement - cgroup, IPC namespace, Landlock, uid, seccomp - the user
code, its exit and reaping), the clean-up of its temp dir (a per-call tmpfs unmounted), and
the rest (host <-> worker protocol, the run's files, the zygote round trip). The last line
is `speedup: X.XX` (pool calls/s over the `python -c` baseline's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from rftkit.graders import build_grader, sandbox
from rftkit.types import Item

SOURCE = """\
import re

def grade(sample, item) -> float:
    numbers = re.findall(r"-?\\d+", sample["output_text"])
    return float(bool(numbers) and numbers[-1] == str(item["reference_answer"]))
"""

BASELINE = SOURCE + """
import json, sys
request = json.loads(sys.stdin.read())
print(json.dumps(grade(request["sample"], request["item"])))
"""


def _samples(n: int) -> list[tuple[Item, str]]:
    return [(Item(id=f"q{i}", messages=[], reference_answer=str(i % 7)), f"so the answer is {i % 5}") for i in range(n)]


def _expected(item: Item, text: str) -> float:
    return float(text.rsplit(" ", 1)[1] == item.reference_answer)


def _measure(fn, samples, threads: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    def timed(sample):
        start = time.perf_counter()
        reward = fn(*sample)
        latencies.append(time.perf_counter() - start)
        assert reward == _expected(*sample), (sample, reward)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(timed, samples))
    return time.perf_counter() - start, latencies


def _baseline(flags: list[str]):
    def grade(item: Item, text: str) -> float:
        request = json.dumps({"sample": {"output_text": text}, "item": {"reference_answer": item.reference_answer}})
        out = subprocess.run([sys.executable, *flags, "-c", BASELINE], input=request, capture_output=True, text=True,
                             timeout=30, check=True)
        return float(json.loads(out.stdout))
    return grade


def _breakdown(calls: int) -> None:
    """Serial calls on one worker: the median of each part of a call, in ms."""
    parts: dict[str, list[float]] = {"call (host round trip)": [], "run: fork .. reaped": [], "temp dir clean-up": []}
    payload = {"source": SOURCE, "sample": {"output_text": "1"}, "item": {"reference_answer": "1"}}
    with sandbox.SandboxPool(1) as pool:
        pool.capabilities()
        for _ in range(calls):
            start = time.perf_counter()
            run = pool.run("python_grade", payload).runs[0]
            parts["call (host round trip)"].append(time.perf_counter() - start)
            parts["run: fork .. reaped"].append(run.wall_s or 0.0)
            parts["temp dir clean-up"].append(run.cleanup_s)
    med = {name: statistics.median(values) * 1000 for name, values in parts.items()}
    med["rest: protocol, files, zygote round trip"] = (med["call (host round trip)"] - med["run: fork .. reaped"]
                                                       - med["temp dir clean-up"])
    print(f"where a call's time goes (1 worker, {calls} serial calls, medians):")
    for name, ms in med.items():
        print(f"  {name:42s} {ms:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: sandbox.default_workers())")
    args = parser.parse_args()
    workers = args.workers or sandbox.default_workers()
    samples = _samples(args.calls)

    start = time.perf_counter()
    pool = sandbox.get_pool(workers)
    caps = pool.capabilities()
    for _ in range(workers):
        pool.run("python_grade", {"source": SOURCE, "sample": {"output_text": "1"}, "item": {"reference_answer": "1"}})
    startup = time.perf_counter() - start
    grader = build_grader({"type": "python", "source": SOURCE, "workers": workers})

    rows = []
    for label, fn in (("sandboxed pool (rftkit python grader)", lambda item, text: grader.grade(item, text).reward),
                      ("process per call: python -c", _baseline([])),
                      ("process per call: python -I -S -c", _baseline(["-I", "-S"]))):
        elapsed, latencies = _measure(fn, samples, workers)
        rows.append((label, len(samples) / elapsed, statistics.median(latencies) * 1000,
                     sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000))

    active = ", ".join(k if v is True else f"{k} ({v})" for k, v in caps.items()
                       if v and isinstance(v, (bool, str)) and k not in ("root", "memfd"))
    print(f"machine: {platform.node()} | {os.cpu_count()} cores | Python {platform.python_version()} | "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"calls: {len(samples)} | concurrent threads = pool workers: {workers} | pool start-up: {startup:.2f} s")
    print(f"protections on: {active}")
    print()
    print(f"| {'method':40s} | {'calls/s':>8s} | {'p50 ms':>7s} | {'p99 ms':>7s} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 9}|{'-' * 9}|")
    for label, rate, p50, p99 in rows:
        print(f"| {label:40s} | {rate:8.1f} | {p50:7.1f} | {p99:7.1f} |")
    print()
    _breakdown(args.calls)
    print()
    print(f"speedup vs python -I -S -c: {rows[0][1] / rows[2][1]:.2f}")
    print(f"speedup: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()

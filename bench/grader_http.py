"""Throughput of the `http` grader against a reward server that takes 100 ms per request.

    python bench/grader_http.py [--calls 1280] [--latency-ms 100]

The example reward server (examples/reward_server/server.py) runs in its own process, so the
client's GIL does not slow it, with `--latency-ms` of sleep per request. With `concurrency`
requests in flight and `batch_size` samples per request, the ideal is
concurrency * batch_size / latency calls per second (32 * 1 / 0.1 s = 320 calls/s for the
headline row). Rows:

- `threads`: many threads each calling `grade` (batch_size 1) or `grade_batch` (batch_size 8),
  more threads than `concurrency` so the grader's own limit is what bounds the rate;
- `executor`: the grader executor driving it (its lane has `concurrency` threads and sends
  up to `batch_size` samples per call), when the executor in this tree batches.

Connections are opened by a short warm-up before timing. The last line is the headline
row's `efficiency: <calls/s / ideal>`; the target is >= 0.80.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

from rftkit.graders.http import HttpGrader
from rftkit.types import Item

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "examples" / "reward_server" / "server.py"


def start_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(SERVER), "--port", "0", "--latency-ms", str(latency_ms)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"reward server did not start: {line!r}")
    return proc, line.split()[-1]


def calls_for(n: int) -> list[tuple[Item, str]]:
    items = [Item(id=f"q{i}", messages=[{"role": "user", "content": f"What is {i} + 1?"}], reference_answer=str(i + 1))
             for i in range(n)]
    return [(it, f"{i} + 1 = {i + 1}. ANSWER: {i + 1}") for i, it in enumerate(items)]


def run_threads(grader: HttpGrader, calls, threads: int) -> tuple[float, list[float], int]:
    """Seconds, per-request latencies, failed samples; `threads` callers, one request each call."""
    chunks = [calls[i:i + grader.batch_size] for i in range(0, len(calls), grader.batch_size)]

    def one(chunk):
        start = time.perf_counter()
        scores = grader.grade_batch(chunk) if len(chunk) > 1 else [grader.grade(*chunk[0])]
        return time.perf_counter() - start, sum(s.reward != 1.0 for s in scores)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, chunks[: max(1, threads // grader.batch_size)]))  # warm-up: open the connections
        start = time.perf_counter()
        results = list(pool.map(one, chunks))
        elapsed = time.perf_counter() - start
    return elapsed, [r[0] for r in results], sum(r[1] for r in results)


def run_executor(grader: HttpGrader, calls) -> tuple[float, list[float], int] | None:
    from rftkit.graders import executor as executor_module

    cls = getattr(executor_module, "GraderExecutor", None)
    if cls is None or not hasattr(cls, "grade_calls"):
        return None
    executor = cls(grader, timeout_s=30.0, step_budget_s=600.0)
    executor.grade_calls(calls[: grader.concurrency * grader.batch_size])  # warm-up
    start = time.perf_counter()
    scores, stats = executor.grade_calls(calls)
    elapsed = time.perf_counter() - start
    return elapsed, [s.latency_s for s in scores], sum(s.reward != 1.0 for s in scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1280)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    args = parser.parse_args()
    latency = args.latency_ms / 1000.0
    proc, url = start_server(args.latency_ms)
    # (label, driver, concurrency, batch_size, threads)
    configs = [
        ("threads c=32 b=1 (headline)", "threads", 32, 1, 64),
        ("threads c=32 b=1, 32 callers", "threads", 32, 1, 32),
        ("threads c=8 b=1", "threads", 8, 1, 16),
        ("threads c=32 b=8", "threads", 32, 8, 64),
        ("executor c=32 b=1", "executor", 32, 1, 32),
        ("executor c=32 b=8", "executor", 32, 8, 32),
    ]
    rows = []
    try:
        for label, driver, concurrency, batch_size, threads in configs:
            grader = HttpGrader(url=url, concurrency=concurrency, batch_size=batch_size, timeout_s=30.0)
            calls = calls_for(args.calls * (batch_size if batch_size > 1 else 1))
            out = run_threads(grader, calls, threads) if driver == "threads" else run_executor(grader, calls)
            grader.close()
            if out is None:
                print(f"{label}: skipped (this executor does not batch)")
                continue
            elapsed, latencies, failed = out
            ideal = concurrency * batch_size / latency
            rate = len(calls) / elapsed
            q = statistics.quantiles(latencies, n=100)
            rows.append((label, len(calls), elapsed, rate, ideal, rate / ideal, q[49] * 1000, q[98] * 1000, failed))
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    header = ("config", "calls", "seconds", "calls/s", "ideal", "efficiency", "p50 ms", "p99 ms", "failed")
    print(f"# HTTP grader throughput, server latency {args.latency_ms:g} ms/request, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {date.today()}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, n, elapsed, rate, ideal, eff, p50, p99, failed in rows:
        print(f"| {label} | {n} | {elapsed:.2f} | {rate:.0f} | {ideal:.0f} | {eff:.2f} | {p50:.0f} | {p99:.0f} | {failed} |")
    print(f"efficiency: {rows[0][5]:.2f}")


if __name__ == "__main__":
    main()

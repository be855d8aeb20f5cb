"""Chat completions served by `rft serve`: requests per second at concurrency 16 vs one at a time, with latency.

    python bench/serve.py [--requests 96] [--concurrency 16] [--max-tokens 32] [--repeats 3] [--json]

Starts `rft serve bundled:tiny-arith` as its own process on a free localhost port and sends
`chat.completions.create` requests with the official `openai` client: arithmetic questions of
the bundled task, temperature 1, `max_tokens` 32 (the model stops at its end-of-turn token
before that on most answers). "one at a time" sends them from one thread, each after the last
reply; "concurrent" from `--concurrency` threads at once, so the server batches what arrives
together into one forward pass (server/serving.py). The two alternate between repeats so
neither always runs warm. Reported: requests per second of each (median over repeats), their
ratio, p50/p99 latency per request, and completion tokens per second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def questions(n: int) -> list[list[dict]]:
    lines = (REPO / "examples" / "arithmetic" / "test.jsonl").read_text().splitlines()
    return [json.loads(lines[i % len(lines)])["messages"] for i in range(n)]


def run(client: openai.OpenAI, prompts: list, concurrency: int, max_tokens: int) -> dict:
    def one(messages):
        start = time.perf_counter()
        reply = client.chat.completions.create(model="bundled:tiny-arith", messages=messages, max_tokens=max_tokens)
        return time.perf_counter() - start, reply.usage.completion_tokens

    start = time.perf_counter()
    if concurrency == 1:
        results = [one(m) for m in prompts]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, prompts))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    return {"rps": len(prompts) / wall, "tokens_per_s": sum(r[1] for r in results) / wall,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "rftkit", "serve", "bundled:tiny-arith", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("rft serve did not start")
                time.sleep(0.2)
        prompts = questions(args.requests)
        run(client, prompts[:16], args.concurrency, args.max_tokens)  # load the model, warm up
        runs: dict[str, list[dict]] = {"one at a time": [], "concurrent": []}
        for r in range(args.repeats):
            order = ["one at a time", "concurrent"] if r % 2 == 0 else ["concurrent", "one at a time"]
            for name in order:
                runs[name].append(run(client, prompts, 1 if name == "one at a time" else args.concurrency, args.max_tokens))
    finally:
        server.terminate()
        server.wait(timeout=60)
    summary = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in runs.items()}
    ratio = summary["concurrent"]["rps"] / summary["one at a time"]["rps"]
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
              "repeats": args.repeats, "summary": summary, "ratio": ratio, "runs": runs}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.requests} requests, max_tokens {args.max_tokens}, median of {args.repeats} ({result['machine']})")
    for name, s in summary.items():
        print(f"  {name:<14} {s['rps']:6.1f} req/s  {s['tokens_per_s']:7.0f} tok/s  p50 {s['p50_ms']:6.0f} ms  "
              f"p99 {s['p99_ms']:6.0f} ms")
    print(f"  concurrency {args.concurrency} vs one at a time: {ratio:.2f}x")


if __name__ == "__main__":
    main()

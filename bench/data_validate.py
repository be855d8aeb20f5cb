"""Peak memory and time of `rft data validate` on a large JSONL file (the goal: 2 GB under 500 MB RSS).

    python bench/data_validate.py [--gb 2.0] [--out docs/bench/data_validate.json]

Writes ~GB of realistic Items (GSM8K-shaped: a system prompt, a question, a reference answer, a
worked solution and a few metadata fields; ~770 bytes a line, every id distinct) into a temporary
folder, runs `rft data validate` on it in a subprocess and reads that process's own peak RSS
(`os.wait4`'s rusage, taken by a small wrapper process: see `_WRAPPER`); then the same for
`load_source` (the lazy sequence a training stage holds), then deletes the file.
tests/data/test_loaders.py runs the same measurement on ~150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM = "You are a careful math tutor. Think step by step, then give the final answer as ANSWER: <n>."
NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Mark"]
THINGS = ["clips", "apples", "books", "marbles", "stamps", "cookies", "pencils", "shells"]


def item(i: int, rng: random.Random) -> dict:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
    question = (f"{name} sold {a} {thing} to her friends in April, and then she sold {b} more {thing} in May than "
                f"in April. In June she sold {c} times as many {thing} as in April and May together, minus {a}. "
                f"How many {thing} did {name} sell altogether in April, May and June? Let's think step by step.")
    may, june = a + b, c * (2 * a + b) - a
    total = a + may + june
    solution = (f"In April {name} sold {a} {thing}. In May she sold {a} + {b} = {may}. April and May together "
                f"make {a} + {may} = {a + may}; June is {c} * {a + may} - {a} = {june}. Altogether "
                f"{a} + {may} + {june} = {total}. ANSWER: {total}")
    return {"id": f"gsm-like-{i:08d}", "messages": [{"role": "system", "content": SYSTEM},
                                                    {"role": "user", "content": question}],
            "reference_answer": str(total), "solution": solution, "difficulty": rng.choice(["easy", "medium", "hard"]),
            "data_source": "bench/gsm-like", "ability": "math"}


def write_items(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Write Items until the file holds `size_bytes`; the number of lines written."""
    rng, n, written = random.Random(seed), 0, 0
    with path.open("w", encoding="utf-8") as f:
        while written < size_bytes:
            chunk = "".join(json.dumps(item(n + k, rng)) + "\n" for k in range(1000))
            f.write(chunk)
            n, written = n + 1000, written + len(chunk)
    return n


# Run in a fresh interpreter: it forks and execs the command and reports the command's peak RSS. Linux counts
# the memory a child had before exec (a fork of the caller) in its ru_maxrss, so measured straight from a
# big caller (pytest with torch loaded: ~380 MB) the figure would be the caller's; from this ~10 MB
# wrapper it is the command's own.
_WRAPPER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, f)
"""


def peak(command: list[str]) -> dict:
    """Run `command` in a subprocess: exit code, its peak RSS (MB), wall time, its output."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, str(result), *command], capture_output=True, text=True)
        wall = time.perf_counter() - start
        measured = json.loads(result.read_text())
    return {"rc": measured["rc"], "peak_rss_mb": measured["maxrss_kb"] / 1024, "wall_s": wall,
            "output": (proc.stdout + proc.stderr).strip()}


def validate_peak(path: Path, *args: str) -> dict:
    """`rft data validate PATH ARGS`, measured by `peak`."""
    return peak([shutil.which("rft") or "rft", "data", "validate", str(path), *args])


_LOAD = """
import sys
from rftkit.data.loaders import load_source
items = load_source(sys.argv[1])
print(len(items), "items; the middle one:", items[len(items) // 2].id)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="size of the file to write (GB, 10^9 bytes)")
    parser.add_argument("--out", type=Path, help="write the result JSON here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rftkit-bench-validate-"))
    try:
        path = tmp / "items.jsonl"
        t0 = time.perf_counter()
        lines = write_items(path, int(args.gb * 1e9))
        write_s = time.perf_counter() - t0
        result = validate_peak(path)
        load = peak([sys.executable, "-c", _LOAD, str(path)])  # what a training stage holds: the lazy sequence
        result.update(load_source=load,
                      file_bytes=path.stat().st_size, lines=lines, write_s=write_s, python=platform.python_version(),
                      machine=f"{platform.machine()}, {os.cpu_count()} cores", date=time.strftime("%Y-%m-%d"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    print(f"{result['file_bytes'] / 1e9:.2f} GB, {lines} lines: peak RSS {result['peak_rss_mb']:.0f} MB, "
          f"{result['wall_s']:.1f} s ({result['file_bytes'] / 1e6 / result['wall_s']:.0f} MB/s); load_source: "
          f"peak RSS {load['peak_rss_mb']:.0f} MB, {load['wall_s']:.1f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if result["rc"] == 0 and load["rc"] == 0 else 1)


if __name__ == "__main__":
    main()

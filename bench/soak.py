"""Soak: a long `rft train` on the bundled model, its memory, file handles and threads sampled throughout.

    python bench/soak.py [--steps 2000] [--interval 1.0] [--json]

The run uses a `multi` grader with a sandboxed `python` child (so the sandbox pool, the
executor's lanes and the sinks all work every step), checkpoints every 100 steps and
validates every 500. Every `--interval` seconds it samples the trainer process (RSS, open
fds, threads) and its sandbox workers (count, summed RSS). Warm-up runs until the first
validation is over (30% of the steps): validation holds more in memory than a training step,
so a peak measured against a warm-up without one would show the validation, not a leak. The
figures: peak RSS after warm-up over peak RSS during it (`rss_growth_pct`), the RSS at the
end over the RSS at the end of warm-up, and the spread of fds, threads and workers while the
run is training (samples after its last step, as it exits, are left out). `--out FILE` keeps
every sample. The last line is `rss growth after warm-up: X.X%`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRADER = {"type": "multi", "calculate_output": "0.5 * answer + 0.5 * shape", "graders": {
    "answer": {"type": "answer_match"},
    "shape": {"type": "python", "source": "def grade(sample, item):\n    return float('ANSWER' in sample['output_text'])\n"},
}}


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


def sample(pid: int) -> dict[str, float]:
    status = _status(pid)
    workers = [c for c in _children(pid) if b"_sandbox_worker" in Path(f"/proc/{c}/cmdline").read_bytes()]
    worker_rss = 0
    for worker in workers:
        try:
            worker_rss += _status(worker).get("VmRSS", 0)
        except OSError:
            pass
    return {"t": time.monotonic(), "rss_mb": status["VmRSS"] / 1024, "threads": status["Threads"],
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "workers": len(workers), "worker_rss_mb": worker_rss / 1024}


def _step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", help="write every sample to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rftkit-soak-") as tmp:
        grader = Path(tmp) / "grader.json"
        grader.write_text(json.dumps(GRADER))
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "rftkit", "train", str(REPO / "examples" / "arithmetic" / "grpo.yaml"),
               f"train.steps={args.steps}", "train.prompts_per_step=4", "rollout.num_generations=4",
               "train.micro_batch_size=16", f"grader={grader}", "run.checkpoint_interval=100",
               "run.eval_interval=500", "run.sample_interval=10", f"run.dir={run_dir}", "--quiet"]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples = []
        while proc.poll() is None:
            try:
                samples.append({**sample(proc.pid), "step": _step(run_dir)})
            except (OSError, KeyError):
                pass
            time.sleep(args.interval)
        stderr = proc.stderr.read()
        if proc.returncode != 0:
            sys.exit(f"the run failed ({proc.returncode}):\n{stderr[-3000:]}")
    took = time.monotonic() - start
    if args.out:
        Path(args.out).write_text(json.dumps(samples))
    warm_up = int(args.steps * 0.3)
    running = [s for s in samples if s["step"] < args.steps and s["workers"]]  # not the exit
    during = [s for s in running if s["step"] < warm_up]
    warm = [s for s in running if s["step"] >= warm_up]
    if not warm or not during:
        sys.exit("not enough samples on both sides of warm-up: the run was too short to measure")
    base, peak = max(s["rss_mb"] for s in during), max(s["rss_mb"] for s in warm)
    report = {
        "steps": args.steps, "seconds": round(took, 1), "samples": len(samples), "warm_up_steps": warm_up,
        "rss_mb_peak_in_warm_up": round(base, 1), "rss_mb_peak_after": round(peak, 1),
        "rss_mb_end_of_warm_up": round(during[-1]["rss_mb"], 1), "rss_mb_last": round(warm[-1]["rss_mb"], 1),
        "rss_growth_pct": round(100 * (peak / base - 1), 2),
        "rss_end_growth_pct": round(100 * (warm[-1]["rss_mb"] / during[-1]["rss_mb"] - 1), 2),
        "fds": [min(s["fds"] for s in warm), max(s["fds"] for s in warm)],
        "threads": [min(s["threads"] for s in warm), max(s["threads"] for s in warm)],
        "workers": [min(s["workers"] for s in warm), max(s["workers"] for s in warm)],
        "worker_rss_mb": [round(min(s["worker_rss_mb"] for s in warm), 1), round(max(s["worker_rss_mb"] for s in warm), 1)],
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.steps} steps in {took:.0f} s, {len(samples)} samples every {args.interval:g} s; warm-up: "
          f"{warm_up} steps")
    for key, value in report.items():
        print(f"  {key}: {value}")
    print(f"rss growth after warm-up: {report['rss_growth_pct']:.1f}%")


if __name__ == "__main__":
    main()

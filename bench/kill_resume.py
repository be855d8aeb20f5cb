"""Kill `rft train` with SIGKILL at random moments, resume each time, and compare the final weights
with an uninterrupted run's, bit for bit.

    python bench/kill_resume.py [--runs 10] [--kills 3] [--steps 12] [--seed 0] [--json]

One uninterrupted reference run, then `--runs` runs of the same config. Each is killed
`--kills` times at a moment drawn uniformly between 0.5 s and the reference run's duration
(a kill may land in start-up, a rollout, an update or a checkpoint write), resumed with
`rft train --resume` after each kill, and finally left to finish. The run checkpoints every
step. Runs use one torch thread: at two threads CPU reductions are not bit-reproducible even
without kills (docs/LOG.md, session 6), so that is the setting in which the guarantee is
stated. The last line is `identical: k/N (K kills)`; with --json, one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def config_args(steps: int) -> list[str]:
    return [str(REPO / "examples" / "arithmetic" / "grpo.yaml"), f"train.steps={steps}", "train.prompts_per_step=4",
            "rollout.num_generations=4", "train.micro_batch_size=16", "train.lr=1e-3", "train.threads=1",
            "run.checkpoint_interval=1", "run.keep_checkpoints=2", "run.eval_interval=0", "run.sample_interval=1",
            "--quiet"]


def train(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rftkit", "train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def killed_run(run_dir: Path, steps: int, kills: int, horizon_s: float, rng: random.Random) -> dict:
    """Start, kill and resume up to `kills` times, then finish; how many kills landed (or the error)."""
    landed, args = 0, [*config_args(steps), f"run.dir={run_dir}"]
    for attempt in range(kills):
        proc = subprocess.Popen([sys.executable, "-m", "rftkit", "train", *args], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # what is left of the run shrinks with each kill: draw the moment within it
        wait = rng.uniform(0.5, max(1.0, horizon_s * (kills - attempt) / kills))
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        _, stderr = proc.communicate(timeout=900)
        if (run_dir / "final").exists():
            break
        if proc.returncode not in (0, -signal.SIGKILL):
            return {"kills": landed, "error": stderr[-2000:]}
        if (run_dir / "config.yaml").exists():
            args = ["--resume", str(run_dir), "--quiet"]
        # else killed before the run wrote its config: as a user would, run the original command again
    if not (run_dir / "final").exists():
        done = train(args if args[0] != "--resume" else ["--resume", str(run_dir), "--quiet"])
        if done.returncode != 0:
            return {"kills": landed, "error": done.stderr[-2000:]}
    return {"kills": landed}


def same_weights(a: Path, b: Path) -> bool:
    left, right = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per run")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="rftkit-kill-") as tmp:
        root = Path(tmp)
        start = time.monotonic()
        reference = train([*config_args(args.steps), f"run.dir={root / 'reference'}"])
        if reference.returncode != 0:
            sys.exit(f"the reference run failed:\n{reference.stderr[-3000:]}")
        horizon = time.monotonic() - start
        results = []
        for index in range(args.runs):
            run_dir = root / f"run{index}"
            outcome = killed_run(run_dir, args.steps, args.kills, horizon, rng)
            outcome["identical"] = "error" not in outcome and same_weights(root / "reference", run_dir)
            results.append(outcome)
            if not args.json:
                print(f"run {index + 1}/{args.runs}: {outcome['kills']} kills, "
                      f"{'identical' if outcome['identical'] else 'DIFFERENT'}{' ' + outcome['error'] if 'error' in outcome else ''}",
                      flush=True)
    identical, kills = sum(r["identical"] for r in results), sum(r["kills"] for r in results)
    summary = {"runs": args.runs, "identical": identical, "kills": kills, "steps": args.steps,
               "reference_s": round(horizon, 1), "results": results}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"reference run: {horizon:.1f} s for {args.steps} steps")
        print(f"identical: {identical}/{args.runs} ({kills} kills)")


if __name__ == "__main__":
    main()

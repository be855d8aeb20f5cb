"""A synthetic run directory for report tests: what a 40-step run leaves behind, without training.

The numbers tell a story the report should show: reward rises, entropy collapses (so the real
health checks warn), validation every 10 steps, a grader that sometimes times out, and a
completion that tries to inject a script. `make_run_dir(..., steps=10_000)` tells the same story
over a long run; `write_evaluation` adds the held-out before/after files `rft demo` writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

STEPS = 40
SCRIPT = "<script>alert(1)</script>"

CONFIG = """\
# resolved config (synthetic) </pre><script>alert('config')</script>
model:
  name: tiny-arith
rollout:
  num_generations: 4
  temperature: 1.0
train:
  steps: 40
  prompts_per_step: 8
run:
  eval_interval: 10
  sample_interval: 5
"""


def metric_row(step: int, steps: int = STEPS) -> dict:
    t = step / steps
    mean = 0.1 + 0.7 * t + 0.03 * math.sin(step)
    row = {
        "step": step,
        "critic/rewards/mean": mean,
        "critic/rewards/std": 0.35 - 0.15 * t,
        "critic/rewards/min": 0.0,
        "critic/rewards/max": 1.0,
        "critic/frac_zero_std_groups": 0.2,
        "actor/entropy": 1.5 * math.exp(-4 * t),  # collapses: the health check warns entropy_collapse
        "actor/kl": None if step == 1 else 0.002 * step,  # null: not measured on the first step
        "actor/pg_loss": -0.01 * math.cos(step),
        "actor/grad_norm": 0.5 + 0.1 * math.sin(step),
        "actor/lr": 1e-5,
        "response_length/mean": 20 + 0.5 * step,
        "response_length/max": 40 + step,
        "response/clipped_ratio": 0.0,
        "grader/errors": float(step % 7 == 0),
        "grader/timeouts": float(step % 13 == 0),
        "grader/error_rate": 0.03 if step % 7 == 0 else 0.0,
        "grader/latency_p50": None if step % 9 == 0 else 0.01 + 0.001 * (step % 5),
        "grader/latency_p99": None if step % 9 == 0 else 0.05 + 0.01 * (step % 3),
        "perf/time_per_step": 0.4,
        "perf/tokens_per_s": 12500.0,
    }
    if step % 10 == 0:
        row["val/reward_mean"] = 0.15 + 0.6 * t
        row["val/pass@1"] = 0.1 + 0.6 * t
    return row


def sample_rows(step: int, steps: int = STEPS) -> list[dict]:
    rows = []
    for i in range(4):
        a, b = step + i, 7 * i
        good = (step + i) % 4 < 1 + 3 * step // steps  # more right answers later in the run
        completion = f"{a} + {b} = {a + b}\nANSWER: {a + b if good else a + b + 1}"
        if step == 1 and i == 0:
            completion = f"ANSWER: {SCRIPT} & \"quotes\" 'too'"
        failed = step == 1 and i == 2
        rows.append({
            "step": step, "item_id": f"q-{step}-{i}", "prompt": f"What is {a}+{b}? Answer as ANSWER: <n>",
            "reference_answer": str(a + b), "completion": completion,
            "reward": None if failed else float(good), "advantage": 0.0,
            "error": "timeout after 5.0 s" if failed else None, "finish_reason": "stop",
        })
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run_dir(root: Path, name: str = "run-arith", steps: int = STEPS) -> Path:
    """A run directory with metrics.jsonl (40 steps), samples.jsonl (steps 1, 5, 10, ...) and config.yaml."""
    run = Path(root) / name
    run.mkdir(parents=True)
    write_jsonl(run / "metrics.jsonl", [metric_row(s, steps) for s in range(1, steps + 1)])
    sampled = [1] + list(range(5, steps + 1, 5))
    write_jsonl(run / "samples.jsonl", [r for s in sampled for r in sample_rows(s, steps)])
    (run / "config.yaml").write_text(CONFIG)
    return run


# What `rft eval run --out` writes (src/rftkit/eval/run.py) for the base and for the tuned model.
EVAL_BASE = {"pass@1": 0.2, "pass@8": 0.5, "reward_mean": 0.3, "n_items": 50, "grader_errors": 0,
             "model": "bundled:tiny-arith", "data": "examples/arithmetic/test.jsonl", "samples": 8,
             "temperature": 1.0, "seed": 0}
EVAL_TUNED = {**EVAL_BASE, "pass@1": 0.45, "pass@8": 0.75, "reward_mean": 0.5}


def write_evaluation(where: Path, run: Path, **tuned) -> None:
    """eval_base.json + eval_tuned.json in `where`, the tuned model being RUN/final as `rft demo` names it
    (a path relative to where the demo ran, e.g. runs/demo/grpo/final)."""
    model = f"runs/{run.parent.name}/{run.name}/final"
    (Path(where) / "eval_base.json").write_text(json.dumps(EVAL_BASE, indent=2))
    (Path(where) / "eval_tuned.json").write_text(json.dumps({**EVAL_TUNED, "model": model, **tuned}, indent=2))

"""Where an rftkit GRPO step spends its time: generation, grading, the update's parts, optimizer, overhead.

    python bench/profile_step.py --steps 10 --warmup 2 [--threads N] [--out docs/bench/profile_step.json] \
        [--trace /tmp/grpo_step_trace.json] [KEY=VALUE ...]

Runs rftkit's own Trainer on examples/arithmetic/grpo.yaml (overrides as for `rft train`; no
checkpoints, samples or validation unless overridden) through its public API only: a
`Callback` sees each step's `StepResult`, whose metrics carry the step's timings
(`perf/time_generate`, `perf/time_grade`, `perf/time_update` and, within the update,
`perf/time_backward` for the loss forward + backward and `perf/time_optimizer` for clipping,
the optimizer and the schedule). Nothing in rftkit is patched or subclassed.

The table is the median over the `--steps` steps after `--warmup` warm-up steps; "% of step" is
each part's share of the summed step time, so the leaf rows add up to 100%. "overhead" is what
is left of the step: prompt sampling, rewards and advantages, rollout metrics, the old-log-prob
or reference passes of mu > 1 and KL. Work between steps (sinks, health checks, progress) is
reported on its own line.

Then the last step's update batch is replayed (`--replays` times each, interleaved, median) with
rftkit's public functions to price the alternatives to what it does, on the same rows:
- the padded forward (`policy_logprobs(..., packed=False)`): right-padded (prompt + completion)
  rows, each prompt forwarded once per row -- rftkit's update before the shared-prefix forward
  (models/packed.py), which forwards each distinct prompt once and only real completion tokens;
- zero-advantage rows: rftkit skips them (their gradient is exactly 0 with beta = 0); the price of
  forwarding every row, padded, as TRL does, is shown for reference;
- old-policy log-probs: rftkit reuses `logp.detach()` when mu = 1 (no extra pass); the price of
  the pass it avoids is shown for reference.
`--trace PATH` runs one extra step under torch.profiler (started and stopped by the callback),
writes a Chrome trace and prints the top operators. That step is not in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from rftkit.algorithms.grpo import AGGREGATIONS, StepCounts, clipped_policy_loss
from rftkit.config import load_config
from rftkit.models.packed import policy_logprobs
from rftkit.policy import Row
from rftkit.train.loop import Callback, Trainer

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "arithmetic" / "grpo.yaml"
SHARED = "as rftkit (shared-prefix forward, loss, backward)"

# (row label, key, parent key or None). Leaves (rows without children) add up to the step.
ROWS = [
    ("generate (Engine.generate)", "generate", None),
    ("grade (GraderExecutor.score)", "grade", None),
    ("update (Policy.update)", "update", None),
    ("  loss forward + backward", "backward", "update"),
    ("  optimizer (clip, step, schedule)", "optimizer", "update"),
    ("overhead (prompts, rewards, advantages, metrics)", "overhead", None),
]


class Profile(Callback):
    """Records each step's timings and rows; profiles one step with torch.profiler when asked."""

    def __init__(self, trace_step: int | None, trace_path: Path | None):
        self.trace_step, self.trace_path = trace_step, trace_path
        self.records: list[dict] = []
        self.last = None
        self._begin = self._last_begin = self._last_wall = None
        self._prof = None
        self.trace_table = ""

    def on_step_begin(self, step: int) -> None:
        self._last_begin, self._begin = self._begin, time.perf_counter()
        if step == self.trace_step:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self._prof = profile(activities=activities)
            self._prof.__enter__()

    def on_step_end(self, step: int, result) -> None:
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            self._prof.export_chrome_trace(str(self.trace_path))
            self.trace_table = self._prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
            self._prof = None
        m = result.metrics
        t = {"generate": m["perf/time_generate"], "grade": m["perf/time_grade"], "update": m["perf/time_update"],
             "backward": m["perf/time_backward"], "optimizer": m["perf/time_optimizer"]}
        t["overhead"] = m["perf/time_per_step"] - t["generate"] - t["grade"] - t["backward"] - t["optimizer"]
        completions = [c for g in result.groups for c in g.completions]
        advantages = [a for row in (result.advantages or []) for a in row]
        self.records.append({
            "step": step, "wall": m["perf/time_per_step"], "stages": t, "reward": m["critic/rewards/mean"],
            # the loop's own work after the previous step (sinks, health, progress): iteration - step
            "between_steps": (self._begin - self._last_begin - self._last_wall) if self._last_begin is not None else float("nan"),
            "stats": {"rows": len(completions), "completion_tokens": sum(len(c.token_ids) for c in completions),
                      "active_rows": sum(a != 0.0 for a in advantages)},
            "traced": step == self.trace_step,
        })
        self.last = result
        self._last_wall = m["perf/time_per_step"]


# ---- counterfactual replays of the last update batch ------------------------------------------


def update_rows(result) -> tuple[list[Row], list[Row], StepCounts]:
    """(rows with a non-zero advantage, every graded row, the step's counts), in group order."""
    rows = [Row(g.prompt_ids, c.token_ids, a) for g, adv in zip(result.groups, result.advantages)
            for c, a in zip(g.completions, adv) if c.score is not None and c.score.reward is not None and c.token_ids]
    n_tokens = sum(len(r.completion_ids) for r in rows)
    counts = StepCounts(tokens=float(max(n_tokens, 1)), rows=float(max(len(rows), 1)), max_new_tokens=1)
    return [r for r in rows if r.advantage != 0.0], rows, counts


def loss_backward(model, rows: list[Row], micro_batch_size: int, counts: StepCounts, epsilon: float, pad: int,
                  packed: bool) -> None:
    aggregate = lambda v, m: AGGREGATIONS["token_mean"](v, m, counts)  # noqa: E731
    if not packed:  # the padded forward's order: similar lengths side by side
        rows = sorted(rows, key=lambda r: len(r.prompt_ids) + len(r.completion_ids))
    for start in range(0, len(rows), micro_batch_size):
        chunk = rows[start : start + micro_batch_size]
        logp, mask = policy_logprobs(model, [r.prompt_ids for r in chunk], [r.completion_ids for r in chunk],
                                     pad_id=pad, packed=packed)
        adv = torch.tensor([r.advantage for r in chunk], device=logp.device)
        clipped_policy_loss(logp, logp.detach(), adv, mask, epsilon, aggregate).loss.backward()


@torch.no_grad()
def old_logprobs(model, rows: list[Row], micro_batch_size: int, pad: int) -> None:
    for start in range(0, len(rows), micro_batch_size):
        chunk = rows[start : start + micro_batch_size]
        policy_logprobs(model, [r.prompt_ids for r in chunk], [r.completion_ids for r in chunk], pad_id=pad, packed=False)


def replay(trainer: Trainer, result, n: int, sync) -> dict:
    cfg, model = trainer.cfg, trainer.policy.module
    mbs, pad, eps = cfg.train.micro_batch_size, trainer.tokenizer.pad_token_id, cfg.algorithm.epsilon
    active, every, counts = update_rows(result)
    variants = {
        SHARED: lambda: loss_backward(model, active, mbs, counts, eps, pad, packed=True),
        "padded forward, active rows (before the shared prefix)": lambda: loss_backward(model, active, mbs, counts, eps, pad, False),
        "padded forward, every row (TRL's way)": lambda: loss_backward(model, every, mbs, counts, eps, pad, False),
        "old-policy log-prob pass (avoided when mu = 1)": lambda: old_logprobs(model, active, mbs, pad),
    }
    times = defaultdict(list)
    model.train()
    for _ in range(n):
        for name, fn in variants.items():
            model.zero_grad(set_to_none=True)
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return {"median_s": {k: statistics.median(v) for k, v in times.items()}, "all_s": dict(times),
            "active_rows": len(active), "rows": len(every), "micro_batches": -(-len(active) // mbs),
            "padded_positions": sum(max(len(r.prompt_ids) + len(r.completion_ids) for r in active[i : i + mbs]) * len(active[i : i + mbs])
                                    for i in range(0, len(active), mbs)),
            "shared_forward_tokens": sum(len(p) for p in {tuple(r.prompt_ids) for r in active})
            + sum(len(r.completion_ids) - 1 for r in active)}


# ---- main -------------------------------------------------------------------------------------


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as for `rft train`")
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--steps", type=int, default=10, help="measured steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="steps run first and left out of the table")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--replays", type=int, default=5, help="repetitions of each counterfactual replay (0 = skip)")
    p.add_argument("--trace", type=Path, help="write a torch.profiler Chrome trace of one extra step here")
    p.add_argument("--out", type=Path, help="write the full JSON here (e.g. docs/bench/profile_step.json)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--steps >= 1, --warmup >= 0, --threads >= 1")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_dir = Path(tempfile.mkdtemp(prefix="bench-profile-")) / "run"
    total = args.warmup + args.steps + (1 if args.trace else 0)
    cfg = load_config(args.config, [
        "run.checkpoint_interval=0", "run.sample_interval=0", "run.eval_interval=0", *args.overrides,
        f"train.steps={total}", f"train.threads={args.threads}", f"run.dir={run_dir}",
    ])
    cuda = cfg.model.device.startswith("cuda") or (cfg.model.device == "auto" and torch.cuda.is_available())
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    profile = Profile(total if args.trace else None, args.trace)
    trainer = Trainer(cfg, quiet=True, callbacks=[profile])
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    measured = [r for r in profile.records if args.warmup < r["step"] <= args.warmup + args.steps]

    keys = [k for _, k, _ in ROWS]
    summed_wall = sum(r["wall"] for r in measured)
    median = {k: statistics.median(r["stages"][k] for r in measured) for k in keys}
    share = {k: 100 * sum(r["stages"][k] for r in measured) / summed_wall for k in keys}
    med_wall = statistics.median(r["wall"] for r in measured)
    stats = {k: statistics.fmean(r["stats"][k] for r in measured) for k in measured[0]["stats"]}
    between = [r["between_steps"] for r in measured if r["between_steps"] == r["between_steps"]]

    print(f"rftkit GRPO step profile: {cfg.train.prompts_per_step} prompts x {cfg.rollout.num_generations} generations, "
          f"max {cfg.rollout.max_new_tokens} new tokens, micro-batch {cfg.train.micro_batch_size}, {args.threads} threads, "
          f"device {'cuda' if cuda else 'cpu'}; median of {len(measured)} steps after {args.warmup} warm-up")
    width = max(len(label) for label, _, _ in ROWS) + 2
    print(f"{'stage':<{width}} {'median s':>9} {'% of step':>9}")
    for label, key, _ in ROWS:
        print(f"{label:<{width}} {median[key]:9.4f} {share[key]:9.1f}")
    print(f"{'step (perf/time_per_step)':<{width}} {med_wall:9.4f}")
    if between:
        print(f"{'between steps (sinks, health, progress)':<{width}} {statistics.median(between):9.4f}")
    print(f"\ngeneration: {stats['completion_tokens']:.0f} completion tokens/step, "
          f"{stats['completion_tokens'] / max(median['generate'], 1e-9):.0f} tokens/s; update: {stats['active_rows']:.0f} of "
          f"{stats['rows']:.0f} rows forwarded (zero-advantage rows skipped)")

    replays = None
    if args.replays and profile.last is not None and profile.last.groups:
        replays = replay(trainer, profile.last, args.replays, sync)
        base = replays["median_s"][SHARED]
        print(f"\nreplay of the last step's update ({replays['active_rows']} active of {replays['rows']} rows, "
              f"{replays['micro_batches']} micro-batch(es), median of {args.replays}):")
        print(f"{'variant':<56} {'s':>8} {'vs rftkit':>10} {'% of step':>9}")
        for name, s in replays["median_s"].items():
            delta = s if name.startswith("old-policy") else s - base
            print(f"{name:<56} {s:8.4f} {delta:+10.4f} {100 * delta / med_wall:+9.1f}")
    if args.trace:
        print(f"\ntorch.profiler, one extra step (trace: {args.trace}):\n{profile.trace_table}")

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                        "loadavg": os.getloadavg()},
            "config": cfg.model_dump(), "threads": args.threads, "warmup": args.warmup, "train_wall_s": train_s,
            "median_s": median, "share_pct": share, "median_step_wall_s": med_wall, "stats_mean_per_step": stats,
            "replays": replays, "steps": profile.records, "trace": str(args.trace) if args.trace else None,
        }, indent=1, default=str))
        print(f"\nwrote {args.out}")


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()

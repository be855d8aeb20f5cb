"""Where an rftkit GRPO step spends its time: generation, grading, the update's parts, optimizer, overhead.

    python bench/profile_step.py --steps 10 --warmup 2 [--threads N] [--out docs/bench/profile_step.json] \
        [--trace /tmp/grpo_step_trace.json] [KEY=VALUE ...]

Runs rftkit's own Trainer on examples/arithmetic/grpo.yaml (overrides as for `rft train`; no
checkpoints, samples or validation unless overridden) and times each stage of `Trainer._step`
with wall-clock timers installed from outside: wrappers around the engine, the grader executor,
`grpo_update` and the functions it calls (`pack_prompt_completion`, `token_logprobs`,
`clipped_policy_loss`, `token_entropy`), `Tensor.backward`, `clip_grad_norm_`, the optimizer and
scheduler, and forward hooks on the model (so generation splits into model forward vs. the rest
of HF `generate`: sampling, KV-cache bookkeeping, stopping checks, tokenise/decode). Nothing in
src/ is changed. On a GPU every timer synchronises, which serialises the work it measures.

The table is the median over the `--steps` steps after `--warmup` warm-up steps; "% of step" is
each stage's share of the summed time of those steps, so the leaf rows add up to 100%.
"overhead" is what is left of `_step`: prompt sampling, advantages, rollout metrics. Work between
steps (metric sinks, health checks, progress) is reported on its own line, outside the step.

Then the last step's update batch is replayed (`--replays` times each, interleaved, median) to
price the alternatives to what rftkit does, on the same rows:
- the padded forward: right-padded (prompt + completion) rows sorted by length, each prompt
  forwarded once per row -- rftkit's update before the shared-prefix forward
  (algorithms/shared_prefix.py), which forwards each distinct prompt once and only real
  completion tokens;
- zero-advantage rows: rftkit skips them (their gradient is exactly 0 with beta = 0); the price of
  forwarding every row, padded, as TRL does, is shown for reference;
- old-policy log-probs: rftkit reuses `logp.detach()` when mu = 1 (no extra pass); the price of
  the pass it avoids is shown for reference.
`--trace PATH` runs one extra step under torch.profiler, writes a Chrome trace and prints the top
operators; the timers appear in it as named ranges. That step is not in the table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

import rftkit.algorithms.grpo_update as gu
import rftkit.rollout.hf as hf
import rftkit.train.loop as loop
import rftkit.train.stages.grpo as grpo_stage
from rftkit.algorithms.common import pack_prompt_completion, token_entropy, token_logprobs
from rftkit.algorithms.shared_prefix import completion_logprobs as shared_logprobs
from rftkit.algorithms.grpo import AGGREGATIONS, StepCounts, clipped_policy_loss
from rftkit.config import load_config

ROOT = Path(__file__).resolve().parent.parent
SHARED = "as rftkit (shared-prefix forward, loss, backward)"
CONFIG = ROOT / "examples" / "arithmetic" / "grpo.yaml"

# (row label, key, parent key or None). Leaves (rows without children) add up to the step.
ROWS = [
    ("generate (engine.generate)", "generate", None),
    ("  model forward (prefill; + decode under HF generate)", "generate.forward", "generate"),
    ("  lean decode loop (rollout/decode.py: layers, sampling)", "generate.decode", "generate"),
    ("  rest (HF generate's sampling/cache/stop checks, or tokenise/detokenise)", "generate.other", "generate"),
    ("grade (executor.score)", "grade", None),
    ("update (grpo_update)", "update", None),
    ("  pack batch", "update.pack", "update"),
    ("  forward (logits; shared-prefix forward: + log-probs)", "update.forward", "update"),
    ("  log-probs (cross-entropy)", "update.logprobs", "update"),
    ("  loss (clipped surrogate)", "update.loss", "update"),
    ("  backward", "update.backward", "update"),
    ("  entropy metric (2nd log-softmax)", "update.entropy", "update"),
    ("  other (.item() syncs, loop)", "update.other", "update"),
    ("clip grad norm", "clip_grad_norm", None),
    ("optimizer step", "optimizer.step", None),
    ("zero_grad + scheduler", "optimizer.misc", None),
    ("overhead (prompts, advantages, metrics)", "overhead", None),
]


class Clock:
    """Accumulates wall time per named stage; `phase` tells the forward hooks whose forward they time."""

    def __init__(self, sync):
        self.sync, self.phase = sync, None
        self.t: dict[str, float] = defaultdict(float)
        self.stats: dict[str, float] = defaultdict(float)

    @contextmanager
    def time(self, name: str, phase: str | None = None):
        self.sync()
        t0, before = time.perf_counter(), self.phase
        if phase:
            self.phase = phase
        try:
            with torch.profiler.record_function(f"bench/{name}"):
                yield
        finally:
            self.sync()
            self.phase = before
            self.t[name] += time.perf_counter() - t0

    def wrap(self, name: str, fn, phase: str | None = None):
        @functools.wraps(fn)
        def timed(*a, **k):
            with self.time(name, phase):
                return fn(*a, **k)
        return timed


def install_global_timers(clock: Clock):
    """Module-level functions `_step` and `grpo_update` look up at call time. Returns an undo function."""
    saved = [(grpo_stage, "grpo_update"), (gu, "token_logprobs"), (gu, "token_entropy"), (gu, "clipped_policy_loss"),
             (gu, "pack_prompt_completion"), (gu, "shared_logprobs"), (hf, "sample_tokens"), (torch.Tensor, "backward"),
             (torch.nn.utils, "clip_grad_norm_")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in saved if hasattr(owner, name)]  # older/newer code
    grpo_stage.grpo_update = clock.wrap("update", gu.grpo_update, phase="update")
    if hasattr(hf, "sample_tokens"):
        hf.sample_tokens = clock.wrap("generate.decode", hf.sample_tokens)
    gu.token_logprobs = clock.wrap("update.logprobs", token_logprobs)
    if hasattr(gu, "shared_logprobs"):  # the shared-prefix forward: forward and log-probs in one call
        gu.shared_logprobs = clock.wrap("update.forward", gu.shared_logprobs)
    if hasattr(gu, "token_entropy"):  # before the entropy moved into sampling (rollout/hf.py)
        gu.token_entropy = clock.wrap("update.entropy", token_entropy)
    gu.clipped_policy_loss = clock.wrap("update.loss", clipped_policy_loss)

    def pack(*a, **k):
        with clock.time("update.pack"):
            input_ids, attention, mask = pack_prompt_completion(*a, **k)
        clock.stats["update.positions"] += input_ids.numel()
        clock.stats["update.real_tokens"] += attention.sum().item()
        clock.stats["update.completion_tokens"] += mask.sum().item()
        clock.stats["update.rows"] += input_ids.shape[0]
        return input_ids, attention, mask

    gu.pack_prompt_completion = pack
    backward = torch.Tensor.backward

    def timed_backward(self, *a, **k):
        with clock.time("update.backward"):
            return backward(self, *a, **k)

    torch.Tensor.backward = timed_backward
    torch.nn.utils.clip_grad_norm_ = clock.wrap("clip_grad_norm", torch.nn.utils.clip_grad_norm_)

    def undo():
        for owner, name, value in saved:
            setattr(owner, name, value)
    return undo


class ProfiledTrainer(loop.Trainer):
    def __init__(self, cfg, clock: Clock, trace_step: int | None, trace_path: Path | None):
        super().__init__(cfg, quiet=True)
        self.clock, self.trace_step, self.trace_path = clock, trace_step, trace_path
        self.records: list[dict] = []
        self._last_end = None
        self.last_groups = None

    def _setup(self, resume: bool) -> int:
        start = super()._setup(resume)
        c = self.clock
        self.engine.generate = c.wrap("generate", self.engine.generate, phase="generate")
        self.stage.executor.score = c.wrap("grade", self.stage.executor.score)
        self.optimizer.step = c.wrap("optimizer.step", self.optimizer.step)
        self.optimizer.zero_grad = c.wrap("optimizer.misc", self.optimizer.zero_grad)
        self.scheduler.step = c.wrap("optimizer.misc", self.scheduler.step)
        starts: list[float] = []

        def pre(module, args, kwargs):
            c.sync()
            starts.append(time.perf_counter())

        def post(module, args, kwargs, output):
            c.sync()
            t = time.perf_counter() - starts.pop()
            if c.phase:
                c.t[f"{c.phase}.forward"] += t
                ids = kwargs.get("input_ids", args[0] if args else None)
                c.stats[f"{c.phase}.forward_calls"] += 1
                if c.phase == "generate" and ids is not None:
                    c.stats["generate.row_steps"] += ids.shape[0]  # every row is computed, finished or not

        self.hooks = [self.model.register_forward_pre_hook(pre, with_kwargs=True),
                      self.model.register_forward_hook(post, with_kwargs=True)]
        return start

    def _step(self, step: int):
        t0 = time.perf_counter()
        between = t0 - self._last_end if self._last_end is not None else float("nan")
        self.clock.t.clear()
        self.clock.stats.clear()
        if step == self.trace_step:
            metrics = self._traced_step(step)
        else:
            metrics = super()._step(step)
        wall = time.perf_counter() - t0
        self._last_end = time.perf_counter()
        t, s = dict(self.clock.t), dict(self.clock.stats)
        t["generate.other"] = t["generate"] - t.get("generate.forward", 0.0) - t.get("generate.decode", 0.0)
        parts = ("update.pack", "update.forward", "update.logprobs", "update.loss", "update.backward", "update.entropy")
        t["update.other"] = t["update"] - sum(t.get(k, 0.0) for k in parts)
        top = [k for _, k, parent in ROWS if parent is None and k != "overhead"]
        t["overhead"] = wall - sum(t.get(k, 0.0) for k in top)
        groups = self._groups
        rows = [c for g in groups for c in g.completions]
        s["rows"] = len(rows)
        s["completion_tokens"] = sum(len(c.token_ids) for c in rows)
        s["active_rows"] = sum(c.advantage != 0.0 for c in rows)
        self.records.append({"step": step, "wall": wall, "between_steps": between, "perf/time_per_step": metrics["perf/time_per_step"],
                             "reward": metrics["critic/rewards/mean"], "stages": t, "stats": s, "traced": step == self.trace_step})
        self.last_groups = groups
        return metrics

    def _traced_step(self, step: int):
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as prof:
            metrics = super()._step(step)
        prof.export_chrome_trace(str(self.trace_path))
        self.trace_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        return metrics


# ---- counterfactual replays of the last update batch ------------------------------------------


def update_rows(groups, all_rows: bool):
    """The rows grpo_update trains on (non-zero advantage), or every graded row, in group order."""
    rows, n_tokens = gu.rows_for_update(groups)
    chosen = rows if all_rows else [r for r in rows if r.advantage != 0.0]
    counts = StepCounts(tokens=float(max(n_tokens, 1)), rows=float(max(len(rows), 1)), max_new_tokens=1)
    return chosen, counts


def padded_batches(rows, pad_id: int, micro_batch_size: int, device):
    """Right-padded (prompt + completion) micro-batches, rows sorted by length (the padded forward's way)."""
    rows = sorted(rows, key=lambda r: len(r.prompt_ids) + len(r.completion_ids))
    out = []
    for start in range(0, len(rows), micro_batch_size):
        chunk = rows[start : start + micro_batch_size]
        ids, att, mask = pack_prompt_completion([r.prompt_ids for r in chunk], [r.completion_ids for r in chunk], pad_id)
        adv = torch.tensor([r.advantage for r in chunk], device=device)
        out.append((ids.to(device), att.to(device), mask.to(device), adv))
    return out


def _loss(logp, mask, adv, counts, epsilon):
    aggregate = lambda v, m: AGGREGATIONS["token_mean"](v, m, counts)  # noqa: E731
    return clipped_policy_loss(logp, logp.detach(), adv, mask, epsilon, aggregate).loss


def variant_padded(model, batches, counts, epsilon):
    for ids, att, mask, adv in batches:
        logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits  # [B, T, V]
        _loss(token_logprobs(logits, ids), mask, adv, counts, epsilon).backward()


def variant_shared_prefix(model, rows, micro_batch_size: int, counts, epsilon):
    for start in range(0, len(rows), micro_batch_size):
        chunk = rows[start : start + micro_batch_size]
        logp, mask = shared_logprobs(model, [r.prompt_ids for r in chunk], [r.completion_ids for r in chunk])
        adv = torch.tensor([r.advantage for r in chunk], device=logp.device)
        _loss(logp, mask, adv, counts, epsilon).backward()


@torch.no_grad()
def variant_old_logprobs(model, batches, counts, epsilon):
    for ids, att, mask, adv in batches:
        token_logprobs(model(input_ids=ids, attention_mask=att, use_cache=False).logits, ids).sum().item()


def replay(trainer, n: int, sync) -> dict:
    cfg, model = trainer.cfg, trainer.model
    device = next(model.parameters()).device
    mbs, pad = cfg.train.micro_batch_size, trainer.tokenizer.pad_token_id
    active, counts = update_rows(trainer.last_groups, all_rows=False)
    every, _ = update_rows(trainer.last_groups, all_rows=True)
    padded, padded_every = padded_batches(active, pad, mbs, device), padded_batches(every, pad, mbs, device)
    eps = cfg.algorithm.epsilon
    variants = {
        SHARED: lambda: variant_shared_prefix(model, active, mbs, counts, eps),
        "padded forward, active rows (before the shared prefix)": lambda: variant_padded(model, padded, counts, eps),
        "padded forward, every row (TRL's way)": lambda: variant_padded(model, padded_every, counts, eps),
        "old-policy log-prob pass (avoided when mu = 1)": lambda: variant_old_logprobs(model, padded, counts, eps),
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
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_s": med, "all_s": dict(times), "active_rows": len(active), "rows": len(every),
            "micro_batches": len(padded), "padded_positions": sum(b[0].numel() for b in padded),
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
    clock = Clock(sync)
    undo_timers = install_global_timers(clock)
    trainer = ProfiledTrainer(cfg, clock, total if args.trace else None, args.trace)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    undo_timers()  # the replays below run untimed code paths
    for hook in trainer.hooks:
        hook.remove()
    measured = [r for r in trainer.records if args.warmup < r["step"] <= args.warmup + args.steps]

    keys = [k for _, k, _ in ROWS]
    leaves = [k for _, k, _ in ROWS if not any(parent == k for _, _, parent in ROWS)]
    summed_wall = sum(r["wall"] for r in measured)
    median = {k: statistics.median(r["stages"].get(k, 0.0) for r in measured) for k in keys}
    share = {k: 100 * sum(r["stages"].get(k, 0.0) for r in measured) / summed_wall for k in keys}
    med_wall = statistics.median(r["wall"] for r in measured)
    stats = {k: statistics.fmean(r["stats"].get(k, 0.0) for r in measured)
             for k in sorted({k for r in measured for k in r["stats"]})}
    between = [r["between_steps"] for r in measured if r["between_steps"] == r["between_steps"]]

    print(f"rftkit GRPO step profile: {cfg.train.prompts_per_step} prompts x {cfg.rollout.num_generations} generations, "
          f"max {cfg.rollout.max_new_tokens} new tokens, micro-batch {cfg.train.micro_batch_size}, {args.threads} threads, "
          f"device {'cuda' if cuda else 'cpu'}; median of {len(measured)} steps after {args.warmup} warm-up")
    width = max(len(label) for label, _, _ in ROWS)
    print(f"{'stage':<{width}} {'median s':>9} {'% of step':>9}")
    for label, key, _ in ROWS:
        print(f"{label:<{width}} {median[key]:9.4f} {share[key]:9.1f}")
    print(f"{'step (_step wall)':<{width}} {med_wall:9.4f} {100 * sum(share[k] for k in leaves) / 100:9.1f}")
    print(f"{'  perf/time_per_step (logged)':<{width}} {statistics.median(r['perf/time_per_step'] for r in measured):9.4f}")
    if between:
        print(f"{'between steps (sinks, health, progress)':<{width}} {statistics.median(between):9.4f}")

    gen_eff = stats.get("completion_tokens", 0) / max(stats.get("generate.row_steps", 1), 1)
    if median.get("generate.decode"):  # the lean loop calls layers, not model.forward: the hooks see the prefill only
        print(f"\ngeneration: {stats.get('completion_tokens', 0):.0f} completion tokens/step, prefill by model.forward, "
              f"decode in rftkit's loop; {stats.get('completion_tokens', 0) / max(median['generate'], 1e-9):.0f} tokens/s")
    else:
        print(f"\ngeneration: {stats.get('completion_tokens', 0):.0f} completion tokens/step in {stats.get('generate.forward_calls', 0):.0f} "
              f"forward calls over {stats.get('generate.row_steps', 0):.0f} row-steps: {100 * gen_eff:.0f}% of computed rows were live "
              f"(finished rows keep being computed until the longest ends); "
              f"{stats.get('completion_tokens', 0) / max(median['generate'], 1e-9):.0f} tokens/s")
    pos = stats.get("update.positions", 0)
    if pos:
        print(f"update: {stats.get('active_rows', 0):.0f} of {stats.get('rows', 0):.0f} rows forwarded (zero-advantage rows skipped), "
              f"{stats.get('update.forward_calls', 0):.0f} forward(s) for {stats.get('update.rows', 0):.0f} rows in micro-batches of "
              f"<= {cfg.train.micro_batch_size} (so no old-policy or reference pass); of {pos:.0f} positions computed, "
              f"{100 * stats.get('update.real_tokens', 0) / pos:.0f}% are tokens (rest padding), "
              f"{100 * stats.get('update.completion_tokens', 0) / pos:.0f}% completion tokens (the only ones in the loss)")

    replays = None
    if args.replays and trainer.last_groups:
        replays = replay(trainer, args.replays, sync)
        base = replays["median_s"][SHARED]
        print(f"\nreplay of the last step's update ({replays['active_rows']} active of {replays['rows']} rows, "
              f"{replays['micro_batches']} micro-batch(es), median of {args.replays}):")
        print(f"{'variant':<56} {'s':>8} {'vs rftkit':>10} {'% of step':>9}")
        for name, s in replays["median_s"].items():
            delta = s if name.startswith("old-policy") else s - base
            print(f"{name:<56} {s:8.4f} {delta:+10.4f} {100 * delta / med_wall:+9.1f}")
    if args.trace:
        print(f"\ntorch.profiler, one extra step (trace: {args.trace}):\n{trainer.trace_table}")

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                        "loadavg": os.getloadavg()},
            "config": cfg.model_dump(), "threads": args.threads, "warmup": args.warmup, "train_wall_s": train_s,
            "median_s": median, "share_pct": share, "median_step_wall_s": med_wall, "stats_mean_per_step": stats,
            "generation_live_row_fraction": gen_eff, "replays": replays, "steps": trainer.records,
            "trace": str(args.trace) if args.trace else None,
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

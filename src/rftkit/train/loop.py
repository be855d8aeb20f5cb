"""The GRPO training loop: rollout -> grade -> advantages -> update, with the run's bookkeeping.

Read `train()` top to bottom: setup (config checks before any model is loaded), then one
`_step()` per iteration, then the final model. Everything random draws from generators
that checkpoints save, so a resumed run repeats an uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console

from rftkit.algorithms.grpo import ADVANTAGES
from rftkit.algorithms.grpo_update import grpo_update
from rftkit.config import Config
from rftkit.data import load_items
from rftkit.errors import Interrupted, UserError
from rftkit.eval.passk import evaluate_groups
from rftkit.graders import build_grader, check_grader_items
from rftkit.graders.executor import GraderExecutor
from rftkit.models import apply_lora, load_model, load_tokenizer
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine
from rftkit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rftkit.train.progress import RunProgress
from rftkit.train.health import HealthMonitor
from rftkit.train.sinks import make_sinks, read_jsonl, truncate_after
from rftkit.types import Group, Item


class PromptSampler:
    """Epochs over the items, reshuffled each epoch from (seed, epoch): its state is two ints."""

    def __init__(self, n_items: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle = n_items, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._make_order()


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"model.device={name} but no CUDA GPU is visible; use model.device=cpu")
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]


def rollout_metrics(groups: list[Group], grading) -> dict[str, float]:
    rewards = [r for g in groups for r in g.rewards if r is not None]
    completions = [c for g in groups for c in g.completions]
    lengths = [len(c.token_ids) for c in completions]
    zero_std = sum(len({r for r in g.rewards if r is not None}) <= 1 for g in groups)
    return {
        "critic/rewards/mean": statistics.fmean(rewards) if rewards else float("nan"),
        "critic/rewards/min": min(rewards) if rewards else float("nan"),
        "critic/rewards/max": max(rewards) if rewards else float("nan"),
        "critic/rewards/std": statistics.pstdev(rewards) if len(rewards) > 1 else 0.0,
        "critic/frac_zero_std_groups": zero_std / len(groups),
        "response_length/mean": statistics.fmean(lengths),
        "response_length/max": max(lengths),
        "response/clipped_ratio": sum(c.finish_reason == "length" for c in completions) / len(completions),
        "grader/errors": grading.errors,
        "grader/error_rate": grading.errors / len(completions),
        "grader/timeouts": grading.timeouts,
        "grader/latency_p50": _percentile(grading.latencies, 0.5),
        "grader/latency_p99": _percentile(grading.latencies, 0.99),
        **{f"grader/injected_{kind}": n for kind, n in grading.injected.items()},
        **breakdown_means([c.score for c in completions]),
    }


def breakdown_means(scores, limit: int = 32) -> dict[str, float]:
    """`grader/sub/<name>`: the mean of each sub-reward and logged metric over the scored samples."""
    values: dict[str, list[float]] = {}
    for score in scores:
        if score is not None and score.reward is not None:
            for key, value in score.breakdown.items():
                if isinstance(value, (int, float)):
                    values.setdefault(key, []).append(float(value))
    return {f"grader/sub/{k}": statistics.fmean(v) for k, v in list(values.items())[:limit] if v}


class _deferred_interrupt:
    """First Ctrl-C: finish the current step, checkpoint it, stop. Second Ctrl-C: stop at once.

    Stopping mid-step would checkpoint weights that already hold part of the next update,
    and the resumed run would differ from an uninterrupted one.
    """

    def __init__(self, console: Console):
        self.console, self.requested, self._old = console, False, None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.console.print("Ctrl-C: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class Trainer:
    def __init__(self, cfg: Config, console: Console | None = None, quiet: bool = False):
        self.cfg, self.quiet = cfg, quiet
        self.console = console or Console(stderr=True)
        self.run_dir = Path(cfg.run.dir)

    # ---- setup -------------------------------------------------------------------------
    def _setup(self, resume: bool) -> int:
        cfg = self.cfg
        grader = build_grader(cfg.grader, "grader")  # config errors surface before any model loads
        self.items: list[Item] = load_items(cfg.data.train, grader.needs_reference, cfg.data.skip_bad_lines)
        check_grader_items(grader, self.items, "grader", cfg.data.train)
        self.val_items = load_items(cfg.data.val, grader.needs_reference, cfg.data.skip_bad_lines) if cfg.data.val else []
        if cfg.run.eval_interval and not self.val_items:
            raise UserError("run.eval_interval is set but data.val is not: name a validation file or set run.eval_interval=0")
        self._prepare_run_dir(resume)
        self.console.rule("resolved config")  # also in quiet mode: logs should say what ran
        self.console.print(cfg.to_yaml(), highlight=False, markup=False)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)
        device = resolve_device(cfg.model.device)
        self.tokenizer = load_tokenizer(cfg.model.path)
        model = load_model(cfg.model.path, cfg.model.dtype, device)
        self.reference = None
        if cfg.lora.enabled:
            model = apply_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules)
        elif cfg.algorithm.beta > 0:
            self.reference = load_model(cfg.model.path, cfg.model.dtype, device).eval().requires_grad_(False)
        self.model = model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        warmup = cfg.train.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.engine = HFEngine(model, self.tokenizer, batch_size=cfg.rollout.batch_size)
        self.executor = GraderExecutor(grader, cfg.grading.timeout_s, cfg.grading.step_budget_s, cfg.grading.workers)
        self.sampler = PromptSampler(len(self.items), cfg.train.seed, cfg.data.shuffle)
        self.sampling = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k, cfg.rollout.max_new_tokens)
        start = 0
        if resume:
            ckpt = latest_checkpoint(self.run_dir)
            if ckpt is not None:
                state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler)
                self.sampler.restore(state["sampler"])
                start = state["step"]
                self.console.print(f"resumed from {ckpt} (step {start})")
            else:
                self.console.print(f"no checkpoint in {self.run_dir}: starting from step 0")
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_after(self.run_dir / name, start)
        run = cfg.run
        self.sink = make_sinks(self.run_dir, run.tensorboard, run.mlflow, run.mlflow_tracking_uri, run.mlflow_experiment,
                               params=cfg.model_dump(), resume_step=start)
        self.health = HealthMonitor(read_jsonl(self.run_dir / "metrics.jsonl") if start else [])
        return start

    def _prepare_run_dir(self, resume: bool) -> None:
        resolved = self.cfg.to_yaml()
        saved = self.run_dir / "config.yaml"
        if resume:
            if not saved.exists():
                raise UserError(f"--resume {self.run_dir}: not a run directory (no config.yaml)")
            before, now = yaml.safe_load(saved.read_text()), self.cfg.model_dump()
            may_change = {"train.steps", "run.dir"}  # extending a run is fine; run.dir may be spelled differently
            changed = [f"{s}.{k}" for s in now if isinstance(now[s], dict) for k in now[s]
                       if isinstance(before.get(s), dict) and before[s].get(k) != now[s][k] and f"{s}.{k}" not in may_change]
            if changed:
                raise UserError(f"--resume {self.run_dir}: config differs from the run's in {changed}; "
                                "only train.steps may change on resume (start a new run.dir otherwise)")
            if (self.run_dir / "final").exists() and not latest_checkpoint(self.run_dir):
                raise UserError(f"{self.run_dir} already finished (final/ exists)")
        elif self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise UserError(f"run directory {self.run_dir} is not empty: pass --resume {self.run_dir} to continue it, "
                            "or choose another run.dir")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(resolved)

    # ---- one step ----------------------------------------------------------------------
    def _step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        items = [self.items[i] for i in self.sampler.take(cfg.train.prompts_per_step)]
        groups = self.engine.generate(items, cfg.rollout.num_generations, self.sampling)  # Stage 1
        t_gen = time.perf_counter()
        grading = self.executor.score(groups)  # Stage 2
        t_grade = time.perf_counter()
        rewards = torch.tensor([[float("nan") if r is None else r for r in g.rewards] for g in groups])  # [G, N]
        advantages = ADVANTAGES[cfg.algorithm.advantage](rewards)  # [G, N]
        for g, row in zip(groups, advantages.tolist()):
            for c, a in zip(g.completions, row):
                c.advantage = a
        self.optimizer.zero_grad(set_to_none=True)  # Stage 3
        sums = grpo_update(self.model, groups, self.tokenizer.pad_token_id, cfg.train.micro_batch_size,
                           cfg.algorithm.epsilon, cfg.algorithm.beta, self._reference_logprobs,
                           cfg.algorithm.loss_aggregation, cfg.rollout.max_new_tokens, cfg.rollout.temperature)
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        t_end = time.perf_counter()
        self._groups = groups
        n_tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
        return {
            **rollout_metrics(groups, grading),
            "actor/entropy": self.engine.mean_entropy,  # of the sampling distribution, over every rollout token
            # with beta = 0 no reference is loaded: KL is not measured (null), not zero
            "actor/kl": sums["kl"] / max(sums["tokens"], 1.0) if cfg.algorithm.beta > 0 else float("nan"),
            "actor/pg_loss": sums["pg_loss"],
            "actor/clipfrac": sums["clipped"] / max(sums["tokens"], 1.0),
            "actor/grad_norm": float(grad_norm),
            "actor/lr": self.scheduler.get_last_lr()[0],
            "perf/time_per_step": t_end - t0,
            "perf/time_generate": t_gen - t0,
            "perf/time_grade": t_grade - t_gen,
            "perf/time_update": t_end - t_grade,
            "perf/tokens_per_s": n_tokens / max(t_gen - t0, 1e-9),
        }

    def _reference_logprobs(self, input_ids, attention):
        from rftkit.algorithms.common import token_logprobs

        if self.reference is not None:
            return token_logprobs(self.reference(input_ids=input_ids, attention_mask=attention).logits, input_ids)
        with self.model.disable_adapter():  # LoRA: the base weights are the reference, no second copy
            return token_logprobs(self.model(input_ids=input_ids, attention_mask=attention).logits, input_ids)

    def validate(self) -> dict[str, float]:
        groups = self.engine.generate(self.val_items, self.cfg.run.eval_samples, self.sampling)
        self.executor.score(groups)
        result = evaluate_groups(groups, k=self.cfg.run.eval_samples)
        return {"val/reward_mean": result["reward_mean"], "val/pass@1": result["pass@1"]}

    def _write_samples(self, step: int) -> None:
        with open(self.run_dir / "samples.jsonl", "a") as f:
            for g in self._groups[: self.cfg.run.samples_per_write]:
                for c in g.completions:
                    f.write(json.dumps({
                        "step": step, "item_id": g.item.id, "prompt": g.item.messages[-1]["content"],
                        "reference_answer": g.item.reference_answer, "completion": c.text,
                        "reward": c.score.reward if c.score else None, "advantage": round(c.advantage, 4),
                        "error": c.score.error if c.score else None, "finish_reason": c.finish_reason,
                    }) + "\n")

    def _checkpoint(self, step: int) -> None:
        save_checkpoint(self.run_dir, step, self.model, self.optimizer, self.scheduler,
                        {"sampler": self.sampler.state()}, self.cfg.run.keep_checkpoints)

    # ---- the run -----------------------------------------------------------------------
    def train(self, resume: bool = False) -> Path:
        cfg = self.cfg
        start = self._setup(resume)
        progress = RunProgress(cfg.train.steps, start, self.console, self.quiet)
        last_val, saved_step = None, start
        with _deferred_interrupt(self.console) as stop:
            try:
                for step in range(start + 1, cfg.train.steps + 1):
                    metrics = self._step(step)
                    if cfg.run.eval_interval and (step % cfg.run.eval_interval == 0 or step == cfg.train.steps):
                        metrics.update(self.validate())
                        last_val = metrics["val/pass@1"]
                    self.sink.log(step, metrics)
                    for warning in self.health.update({"step": step, **metrics}):
                        progress.warn(f"health warning [{warning.code}] at step {warning.step}: {warning.message}. "
                                      f"What to do: {warning.advice}")
                    if cfg.run.sample_interval and (step % cfg.run.sample_interval == 0 or step == 1):
                        self._write_samples(step)
                    if (cfg.run.checkpoint_interval and step % cfg.run.checkpoint_interval == 0) or stop.requested:
                        self._checkpoint(step)
                        saved_step = step
                    info = f"reward {metrics['critic/rewards/mean']:.3f}" + (f" val {last_val:.3f}" if last_val is not None else "")
                    progress.update(step, info)
                    if stop.requested:
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                progress.close()
                self.sink.close()
                self.executor.close()
                raise Interrupted(f"interrupted; the last checkpoint is step {saved_step}; "
                                  f"continue with: rft train --resume {self.run_dir}") from None
        progress.close()
        self.sink.close()
        self.executor.close()
        return self._save_final()

    def _save_final(self) -> Path:
        final, tmp = self.run_dir / "final", self.run_dir / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        model = self.model
        if self.cfg.lora.enabled and self.cfg.lora.merge_final:
            model = model.merge_and_unload()
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        self.console.print(f"final model: {final}")
        return final

"""The training loop every algorithm shares, with the run's bookkeeping.

Read `train()` top to bottom: setup (config checks before any model is loaded), then one
`_step()` per iteration (the algorithm's Stage: for GRPO rollout -> grade -> advantages ->
update, see train/stages/), then the final model. Everything random draws from generators
that checkpoints save, so a resumed run repeats an uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import math
import random
import shutil
import signal
import statistics
import threading
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console

from rftkit.config import Config
from rftkit.errors import Interrupted, UserError
from rftkit.models import apply_lora, load_tokenizer
from rftkit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rftkit.train.progress import RunProgress
from rftkit.train.health import HealthMonitor
from rftkit.train.lineage import check_compatible, materialize, resolve_init, write_lineage
from rftkit.train.sinks import make_sinks, read_jsonl, truncate_after
from rftkit.train.stages import stage_class
from rftkit.types import Group


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
    """The run machinery every algorithm shares; `algorithm.name` picks the Stage that steps (train/stages/)."""

    def __init__(self, cfg: Config, console: Console | None = None, quiet: bool = False):
        self.cfg, self.quiet = cfg, quiet
        self.console = console or Console(stderr=True)
        self.run_dir = Path(cfg.run.dir)
        self.stage = stage_class(cfg.algorithm.name)(self)
        self.reference = None

    # ---- setup -------------------------------------------------------------------------
    def _setup(self, resume: bool) -> int:
        cfg = self.cfg
        self.stage.prepare()  # data and config errors surface before any model loads
        start_from = resolve_init(cfg.init_from) if cfg.init_from else None
        if start_from is not None:
            check_compatible(start_from, cfg.algorithm.name)
        self._prepare_run_dir(resume)
        self.console.rule("resolved config")  # also in quiet mode: logs should say what ran
        self.console.print(cfg.to_yaml(), highlight=False, markup=False)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)
        self.device = resolve_device(cfg.model.device)
        model_path = cfg.model.path
        if start_from is not None:
            model_path = str(materialize(start_from, self.run_dir, self.console))
        write_lineage(self.run_dir, cfg, start_from, model_path)
        self.model_path = model_path
        self.tokenizer = load_tokenizer(model_path)
        model = self.stage.load_model(model_path, cfg.model.dtype, self.device)
        if cfg.lora.enabled:
            model = apply_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules,
                               **self.stage.lora_options)
        elif self.stage.needs_reference_model:
            self.reference = self.stage.load_model(model_path, cfg.model.dtype, self.device).eval().requires_grad_(False)
        self.model = model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        warmup = cfg.train.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.stage.build()
        start = 0
        if resume:
            ckpt = latest_checkpoint(self.run_dir)
            if ckpt is not None:
                state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler)
                self.stage.restore(state["stage"])
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
            changed += [s for s in now if not isinstance(now[s], dict) and before.get(s) != now[s]]
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

    # ---- what stages share -------------------------------------------------------------
    def optimizer_step(self) -> float:
        """Clip the accumulated gradients, step the optimizer and the schedule, clear the gradients; the norm."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def reference_logits(self, input_ids, attention):
        """Logits of the frozen reference: a second copy, or with LoRA the base weights (adapter off)."""
        if self.reference is not None:
            return self.reference(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
        with self.model.disable_adapter():  # LoRA: the base weights are the reference, no second copy
            return self.model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits

    # ---- one step ----------------------------------------------------------------------
    def _step(self, step: int) -> dict[str, float]:
        return self.stage.step(step)

    @property
    def engine(self):
        return self.stage.engine

    @property
    def _groups(self):
        return self.stage.groups

    def validate(self) -> dict[str, float]:
        return self.stage.validate()

    def _checkpoint(self, step: int) -> None:
        save_checkpoint(self.run_dir, step, self.model, self.optimizer, self.scheduler,
                        {"stage": self.stage.state()}, self.cfg.run.keep_checkpoints)

    # ---- the run -----------------------------------------------------------------------
    def train(self, resume: bool = False) -> Path:
        cfg = self.cfg
        start = self._setup(resume)
        progress = RunProgress(cfg.train.steps, start, self.console, self.quiet)
        last_val, saved_step = None, start
        if cfg.run.eval_at_start and cfg.run.eval_interval and start == 0:  # the starting model's numbers, as step 0
            baseline = self.validate()
            self.sink.log(0, baseline)
            last_val = baseline.get(self.stage.headline_val)
        with _deferred_interrupt(self.console) as stop:
            try:
                for step in range(start + 1, cfg.train.steps + 1):
                    metrics = self._step(step)
                    if cfg.run.eval_interval and (step % cfg.run.eval_interval == 0 or step == cfg.train.steps):
                        metrics.update(self.validate())
                        last_val = metrics.get(self.stage.headline_val)
                    self.sink.log(step, metrics)
                    for warning in self.health.update({"step": step, **metrics}):
                        progress.warn(f"health warning [{warning.code}] at step {warning.step}: {warning.message}. "
                                      f"What to do: {warning.advice}")
                    if cfg.run.sample_interval and (step % cfg.run.sample_interval == 0 or step == 1):
                        self.stage.write_samples(step)
                    if (cfg.run.checkpoint_interval and step % cfg.run.checkpoint_interval == 0) or stop.requested:
                        self._checkpoint(step)
                        saved_step = step
                    info = self.stage.summary(metrics) + (f" val {last_val:.3f}" if last_val is not None else "")
                    progress.update(step, info)
                    if stop.requested:
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                progress.close()
                self.sink.close()
                self.stage.close()
                raise Interrupted(f"interrupted; the last checkpoint is step {saved_step}; "
                                  f"continue with: rft train --resume {self.run_dir}") from None
        progress.close()
        self.sink.close()
        self.stage.close()
        return self._save_final()

    def _save_final(self) -> Path:
        self.stage.finalize()
        final, tmp = self.run_dir / "final", self.run_dir / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        model = self.model
        if self.cfg.lora.enabled and (self.cfg.lora.merge_final or self.stage.merge_lora_on_save):
            model = model.merge_and_unload()
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        self.console.print(f"final model: {final}")
        return final

"""The training loop every algorithm shares, with the run's bookkeeping.

Read `train()` top to bottom: setup (config checks before any model is loaded, then the
Policy and the Stage), then one `stage.step()` per iteration (for GRPO rollout -> grade ->
advantages -> update, train/stages/grpo.py), whose StepResult the loop logs, samples and
checkpoints, then the final model. The loop calls the stage and the stage never calls back.
`callbacks` see every step from outside (the benchmarks use them). Everything random draws
from generators that checkpoints save, so a resumed run repeats an uninterrupted one exactly
on CPU.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console

from rftkit.config import Config
from rftkit.errors import Interrupted, UserError
from rftkit.metrics import sample_records
from rftkit.metrics.health import HealthMonitor
from rftkit.distributed import LearnerGroup
from rftkit.models import apply_lora, load_tokenizer
from rftkit.models.chat import set_thinking_switch
from rftkit.policy import LocalPolicy
from rftkit.train.checkpoint import checkpoint_dir, latest_checkpoint, resumable, save_checkpoint
from rftkit.train import memory
from rftkit.train.lineage import check_compatible, materialize, resolve_init, write_lineage
from rftkit.train.progress import RunProgress
from rftkit.train.sinks import make_sinks, read_jsonl, truncate_after
from rftkit.train.stages import stage_class
from rftkit.train.stages.base import StepResult

# a full disk, a quota, a read-only or vanished folder: the run stops with the last good checkpoint named
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # whatever the file: the disk itself
RUN_DIR_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT}  # only when the file is in the run dir
TRIM_EVERY = 10  # steps between malloc_trim calls (~1-4 ms each)
RUN_FILES = ("metrics.jsonl", "samples.jsonl", "events.jsonl")  # rows past a resumed checkpoint are rewritten


class Callback:
    """Sees a run from outside, e.g. to time it (bench/) or to stream it; every method is optional."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_step_begin(self, step: int) -> None: ...

    def on_step_end(self, step: int, result: StepResult) -> None: ...

    def on_train_end(self, final: Path) -> None: ...


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

    def __init__(self, cfg: Config, console: Console | None = None, quiet: bool = False, callbacks=()):
        self.cfg, self.quiet = cfg, quiet
        self.console = console or Console(stderr=True)
        self.run_dir = Path(cfg.run.dir)
        self.stage = stage_class(cfg.algorithm.name)(cfg)
        self.callbacks = list(callbacks)

    # ---- setup -------------------------------------------------------------------------
    def _setup(self, resume: bool) -> int:
        cfg = self.cfg
        self.stage.prepare()  # data and config errors surface before any model loads
        memory.configure()  # big tensors in their own mappings: RSS follows live memory (train/memory.py)
        start_from = resolve_init(cfg.init_from) if cfg.init_from else None
        if start_from is not None:
            check_compatible(start_from, cfg.algorithm.name)
        self._prepare_run_dir(resume)
        if self.quiet:  # the resolved config is in RUN_DIR/config.yaml either way
            self.console.print(f"run directory: {self.run_dir} (resolved config: {self.run_dir / 'config.yaml'})", highlight=False)
        else:
            self.console.rule("resolved config")
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
        set_thinking_switch(self.tokenizer, cfg.reasoning.effort, cfg.model.path)  # exit 2 if it has no switch
        self.policy = self._policy(model_path)
        self.stage.model_path = model_path  # the folder the weights came from (an engine in another process loads it)
        self.stage.build(self.policy, self.tokenizer)
        start = 0
        if resume:
            found = resumable(self.run_dir, lambda message: self.console.print(f"warning: {message}", highlight=False))
            if found is not None:
                ckpt, policy_state, state = found
                try:
                    self.policy.load_state_dict(policy_state)
                except (RuntimeError, KeyError, ValueError) as exc:  # the checkpoint is of another model or layout
                    first = str(exc).strip().splitlines()[0][:300]
                    raise UserError(f"{ckpt} does not fit this model ({first}); was model.path or lora changed? "
                                    f"Resume with the run's own config, or start a new run.dir") from None
                self.stage.restore(state["stage"])
                start = state["step"]
                self.console.print(f"resumed from {ckpt} (step {start})")
            elif any(checkpoint_dir(self.run_dir).glob("step-*")):
                raise UserError(f"no intact checkpoint in {checkpoint_dir(self.run_dir)} (see the warnings above); "
                                f"start a new run.dir")
            else:
                self.console.print(f"no checkpoint in {self.run_dir}: starting from step 0")
        for name in RUN_FILES:
            truncate_after(self.run_dir / name, start)
        run = cfg.run
        self.sink = make_sinks(self.run_dir, run.tensorboard, run.mlflow, run.mlflow_tracking_uri, run.mlflow_experiment,
                               params=cfg.model_dump(), resume_step=start)
        self.health = HealthMonitor(read_jsonl(self.run_dir / "metrics.jsonl") if start else [])
        return start

    def _policy(self, model_path: str) -> LocalPolicy:
        """The learner: the model (LoRA-wrapped or not), AdamW, the warm-up schedule and, for KL without LoRA,
        a frozen reference copy."""
        cfg, stage = self.cfg, self.stage
        model = stage.load_model(model_path, cfg.model.dtype, self.device)
        reference = None
        if cfg.lora.enabled:
            model = apply_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules,
                               **stage.lora_options)
        elif stage.needs_reference_model:
            reference = stage.load_model(model_path, cfg.model.dtype, self.device).eval().requires_grad_(False)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        warmup = cfg.train.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        policy = LocalPolicy(model, optimizer, scheduler, reference=reference, max_grad_norm=cfg.train.max_grad_norm,
                             micro_batch_size=cfg.train.micro_batch_size, pad_id=self.tokenizer.pad_token_id)
        rt = cfg.runtime
        if getattr(stage, "ray", None) is not None and rt.learners > 1:  # data-parallel learners (distributed/learners.py)
            return LearnerGroup(stage.ray, policy, learners=rt.learners, cpus=rt.cpus_per_learner, gpus=rt.gpus_per_learner,
                                timeout_s=rt.timeout_s, threads=cfg.train.threads)
        return policy

    def _prepare_run_dir(self, resume: bool) -> None:
        resolved = self.cfg.to_yaml()
        saved = self.run_dir / "config.yaml"
        if resume:
            if not saved.exists():
                started = self.run_dir.exists() and any(p.name != ".config.yaml.tmp" for p in self.run_dir.iterdir())
                raise UserError(f"--resume {self.run_dir}: not a run directory (no config.yaml)" + (
                    "" if started else "; the run was stopped before it started: run the original command again"))
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
        elif self.run_dir.exists() and any(p.name != ".config.yaml.tmp" for p in self.run_dir.iterdir()):
            raise UserError(f"run directory {self.run_dir} is not empty: pass --resume {self.run_dir} to continue it, "
                            "or choose another run.dir")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        partial = saved.with_name(".config.yaml.tmp")  # written whole or not at all: a kill here leaves no half config
        partial.write_text(resolved)
        os.replace(partial, saved)

    def _checkpoint(self, step: int) -> Path:
        return save_checkpoint(self.run_dir, step, self.policy.state_dict(), {"stage": self.stage.state()},
                               self.cfg.run.keep_checkpoints)

    # ---- the run -----------------------------------------------------------------------
    def train(self, resume: bool = False) -> Path:
        cfg = self.cfg
        start = self._setup(resume)
        progress = RunProgress(cfg.train.steps, start, self.console, self.quiet)
        last_val, saved_step = None, start
        for callback in self.callbacks:
            callback.on_train_begin(self)
        if cfg.run.eval_at_start and cfg.run.eval_interval and start == 0:  # the starting model's numbers, as step 0
            baseline = self.stage.validate()
            self.sink.log(0, baseline)
            last_val = baseline.get(self.stage.headline_val)
        with _deferred_interrupt(self.console) as stop:
            try:
                for step in range(start + 1, cfg.train.steps + 1):
                    for callback in self.callbacks:
                        callback.on_step_begin(step)
                    result = self.stage.step(step)
                    metrics = result.metrics
                    validated = bool(cfg.run.eval_interval) and (step % cfg.run.eval_interval == 0 or step == cfg.train.steps)
                    if validated:
                        metrics.update(self.stage.validate())
                        last_val = metrics.get(self.stage.headline_val)
                    if validated or step % TRIM_EVERY == 0:  # freed tensors' pages back to the system (train/memory.py)
                        memory.trim()
                    self.sink.log(step, metrics)
                    for warning in self.health.update({"step": step, **metrics}):
                        progress.warn(f"health warning [{warning.code}] at step {warning.step}: {warning.message}. "
                                      f"What to do: {warning.advice}")
                        self.sink.event(step, "health_warning", {"code": warning.code, "message": warning.message,
                                                                  "advice": warning.advice, "at_step": warning.step})
                    if cfg.run.sample_interval and (step % cfg.run.sample_interval == 0 or step == 1):
                        shown = cfg.run.samples_per_write
                        self.sink.samples(step, sample_records(step, result.groups[:shown], result.advantages))
                    if (cfg.run.checkpoint_interval and step % cfg.run.checkpoint_interval == 0) or stop.requested:
                        self.sink.event(step, "checkpoint", {"path": str(self._checkpoint(step))})
                        saved_step = step
                    info = self.stage.summary(metrics) + (f" val {last_val:.3f}" if last_val is not None else "")
                    progress.update(step, info)
                    for callback in self.callbacks:
                        callback.on_step_end(step, result)
                    if stop.requested:
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                progress.close()
                self.sink.close()
                self.stage.close()
                raise Interrupted(f"interrupted; the last checkpoint is step {saved_step}; "
                                  f"continue with: rft train --resume {self.run_dir}") from None
            except OSError as exc:
                if not self._disk_fault(exc):
                    raise
                progress.close()
                self.stage.close()
                raise UserError(f"cannot write to {self.run_dir}: {exc.strerror} ({exc.filename or 'a run file'}); "
                                f"the last good checkpoint is step {saved_step}. Free space or fix the folder, "
                                f"then: rft train --resume {self.run_dir}") from None
        progress.close()
        self.sink.close()
        self.stage.close()
        try:
            final = self._save_final()
        except OSError as exc:
            if not self._disk_fault(exc):
                raise
            raise UserError(f"cannot write the final model to {self.run_dir}: {exc.strerror}; the last good "
                            f"checkpoint is step {saved_step}. Free space or fix the folder, then: "
                            f"rft train --resume {self.run_dir}") from None
        for callback in self.callbacks:
            callback.on_train_end(final)
        return final

    def _disk_fault(self, exc: OSError) -> bool:
        """Whether an OSError is the run directory failing (full, read-only, gone), not something else in a step."""
        if exc.errno in DISK_ERRNOS:
            return True
        inside = exc.filename is not None and str(exc.filename).startswith(str(self.run_dir))
        return exc.errno in RUN_DIR_ERRNOS and inside

    def _save_final(self) -> Path:
        self.stage.finalize()
        final, tmp = self.run_dir / "final", self.run_dir / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            merge = self.cfg.lora.enabled and (self.cfg.lora.merge_final or self.stage.merge_lora_on_save)
            self.policy.save_pretrained(tmp, merge_lora=merge)
            self.tokenizer.save_pretrained(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # no half-written model left behind
            raise
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        self.console.print(f"final model: {final}")
        return final

"""What every Stage provides to the shared loop, and the helpers the offline stages share."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from rftkit.errors import UserError


class Stage:
    """One algorithm's part of a run. The loop calls, in order: prepare() before any model is
    loaded, build() once the model, tokenizer and optimizer exist, then step(n) per step and
    validate() every run.eval_interval steps; state()/restore() ride in checkpoints."""

    headline_val = "val/pass@1"  # the validation metric the progress line shows
    needs_reference_model = False  # a frozen copy of the starting model is loaded (not with LoRA)
    lora_options: dict = {}  # extra apply_lora arguments (a reward model trains its new head in full)
    merge_lora_on_save = False  # final/ holds the merged model even without lora.merge_final
    engine = None  # a generating stage's engine (the bench reads its stop ids)
    groups: list = []  # the last step's groups, for samples and the bench

    def __init__(self, trainer):
        self.trainer, self.cfg = trainer, trainer.cfg

    @staticmethod
    def load_model(path: str, dtype: str, device: str):
        from rftkit.models import load_model

        return load_model(path, dtype, device)

    def prepare(self) -> None: ...

    def build(self) -> None: ...

    def step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        return {}

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None: ...

    def write_samples(self, step: int) -> None: ...

    def summary(self, metrics: dict[str, float]) -> str:
        return f"loss {metrics.get('train/loss', float('nan')):.4f}"

    def finalize(self) -> None:
        """Last changes to the model before final/ is saved."""

    def close(self) -> None: ...

    # ---- helpers ---------------------------------------------------------------------
    @property
    def model(self):
        return self.trainer.model

    @property
    def tokenizer(self):
        return self.trainer.tokenizer

    def require_val(self) -> None:
        if self.cfg.run.eval_interval and not self.cfg.data.val:
            raise UserError("run.eval_interval is set but data.val is not: name a validation file or set run.eval_interval=0")

    def load_rows(self, path: str | None, kind: str) -> list:
        from rftkit.data.rows import load_rows

        return load_rows(path, kind, self.cfg.data.skip_bad_lines) if path else []

    def perf(self, t0: float, n_tokens: float) -> dict[str, float]:
        elapsed = time.perf_counter() - t0
        return {"perf/time_per_step": elapsed, "perf/tokens_per_s": n_tokens / max(elapsed, 1e-9)}

    def lr(self) -> float:
        return self.trainer.scheduler.get_last_lr()[0]


@contextmanager
def eval_mode(model):
    """model.eval() and no gradients inside, the model's previous mode restored after (dropout in LoRA)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)

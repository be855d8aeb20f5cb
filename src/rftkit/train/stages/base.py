"""What every Stage provides to the shared loop, and what a step returns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rftkit.errors import UserError
from rftkit.types import Group


@dataclass
class StepResult:
    """One step's outcome: its metrics, and the groups it generated (with their advantages) for samples.jsonl."""

    metrics: dict[str, float]
    groups: list[Group] = field(default_factory=list)  # every group generated this step (none for offline stages)
    advantages: list[list[float]] | None = None  # per group in `groups`, per completion; 0 where not trained on


class Stage:
    """One algorithm's part of a run. The loop calls, in order: prepare() before any model is
    loaded, build(policy, tokenizer) once the policy exists, then step(n) per step and
    validate() every run.eval_interval steps; state()/restore() ride in checkpoints. A stage
    trains only through its Policy and never calls back into the loop."""

    headline_val = "val/pass@1"  # the validation metric the progress line shows
    needs_reference_model = False  # a frozen copy of the starting model is loaded (not with LoRA)
    lora_options: dict = {}  # extra apply_lora arguments (a reward model trains its new head in full)
    merge_lora_on_save = False  # final/ holds the merged model even without lora.merge_final

    def __init__(self, cfg):
        self.cfg = cfg

    @staticmethod
    def load_model(path: str, dtype: str, device: str):
        from rftkit.models import load_model

        return load_model(path, dtype, device)

    def prepare(self) -> None: ...

    def build(self, policy, tokenizer) -> None:
        self.policy, self.tokenizer = policy, tokenizer

    def step(self, step: int) -> StepResult:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        return {}

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None: ...

    def summary(self, metrics: dict[str, float]) -> str:
        return f"loss {metrics.get('train/loss', float('nan')):.4f}"

    def finalize(self) -> None:
        """Last changes to the model before final/ is saved."""

    def close(self) -> None: ...

    # ---- helpers ---------------------------------------------------------------------
    def require_val(self) -> None:
        if self.cfg.run.eval_interval and not self.cfg.data.val:
            raise UserError("run.eval_interval is set but data.val is not: name a validation file or set run.eval_interval=0")

    def load_rows(self, path: str | None, kind: str) -> list:
        from rftkit.data.rows import load_rows

        return load_rows(path, kind, self.cfg.data.skip_bad_lines) if path else []

    def perf(self, t0: float, n_tokens: float) -> dict[str, float]:
        elapsed = time.perf_counter() - t0
        return {"perf/time_per_step": elapsed, "perf/tokens_per_s": n_tokens / max(elapsed, 1e-9)}

"""The in-process Policy: one module, its AdamW optimizer and schedule, and the frozen reference.

The GRPO update (`update`) accumulates the clipped loss of algorithms/grpo.py over micro-batches
of rows, then takes one optimizer step:

- With one update per batch (mu = 1) the "old" log-probs are the current ones detached, so no
  separate old-policy forward is made. Rows whose advantage is exactly 0 (every row of a group
  with no reward spread, and failed gradings) contribute exactly zero gradient when beta = 0,
  so they are not forwarded at all; their tokens still count in the normaliser, which keeps
  the update identical to processing every row.
- Log-probs are those of the distribution sampled from: logits / temperature, as the sampler
  draws them. They come from `models.packed.policy_logprobs`, which runs the shared-prefix
  forward (each distinct prompt forwarded once, no padding in the matmuls) where the model
  allows it and the padded forward otherwise.
- A row's `loss_mask` zeroes the tokens the policy did not sample (tool outputs in a
  multi-turn trajectory): they are context, not targets, and not in the normaliser.

The offline stages (SFT, DPO, reward model, A-SFT) bring their own loss: `update_with(fn)` runs
`fn(module)` (which accumulates gradients) and then the same optimizer step.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial

import torch

from rftkit.algorithms.grpo import (AGGREGATIONS, KL_ESTIMATORS, StepCounts, clipped_policy_loss, mismatch_kl,
                                   truncated_is_weights)
from rftkit.models.batching import pad_right
from rftkit.models.layout import packed_forward_usable
from rftkit.models.packed import policy_logprobs
from rftkit.policy.base import LossSpec, Row


class LocalPolicy:
    def __init__(self, module, optimizer, scheduler, *, reference=None, max_grad_norm: float = 1.0,
                 micro_batch_size: int = 64, pad_id: int = 0):
        """`reference`: a frozen copy of the starting model, or None (no KL, or LoRA: the base weights
        with the adapter off are the reference)."""
        self.module, self.optimizer, self.scheduler, self.reference = module, optimizer, scheduler, reference
        self.max_grad_norm, self.micro_batch_size, self.pad_id = max_grad_norm, micro_batch_size, pad_id
        self.version = 0
        self.device = next(module.parameters()).device
        # data-parallel learners (distributed/learners.py) sum their gradients here before the clip and the step
        self.reduce_gradients: Callable[[list[torch.nn.Parameter]], None] | None = None

    # ---- log-probs -----------------------------------------------------------------------------
    @torch.no_grad()
    def logprobs(self, rows: list[Row], temperature: float = 1.0) -> list[torch.Tensor]:
        return self._completion_logprobs(rows, temperature, None)

    @torch.no_grad()
    def reference_logprobs(self, rows: list[Row], temperature: float = 1.0) -> list[torch.Tensor]:
        return self._completion_logprobs(rows, temperature, self.reference_logits)

    def _completion_logprobs(self, rows: list[Row], temperature: float, logits_fn) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for start in range(0, len(rows), self.micro_batch_size):
            chunk = rows[start : start + self.micro_batch_size]
            logp, mask = policy_logprobs(self.module, [r.prompt_ids for r in chunk], [r.completion_ids for r in chunk],
                                         temperature, self.pad_id, logits_fn=logits_fn)  # [B, C]
            out += [row[m.bool()].cpu() for row, m in zip(logp, mask)]
        return out

    def reference_logits(self, input_ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Logits of the frozen reference: a second copy, or with LoRA the base weights (adapter off)."""
        if self.reference is not None:
            return self.reference(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
        with self.module.disable_adapter():  # LoRA: the base weights are the reference, no second copy
            return self.module(input_ids=input_ids, attention_mask=attention, use_cache=False).logits

    # ---- updates -------------------------------------------------------------------------------
    def update(self, rows: list[Row], spec: LossSpec, counts: StepCounts | None = None,
               extra: Callable[[torch.nn.Module], dict] | None = None) -> dict[str, float]:
        """One optimizer step on the GRPO loss of `rows` (graded, non-empty completions). `counts`: the whole
        batch's sizes when `rows` are one learner's share of it (the loss's normaliser is the batch's).
        `extra(module)` backpropagates a second loss into the same step (replay's SFT loss) and returns its metrics."""
        t0 = time.perf_counter()
        sums = self.accumulate_grpo(rows, spec, counts)
        if extra is not None:
            sums.update(extra(self.module))
        t1 = time.perf_counter()
        grad_norm = self.optimizer_step()
        return {**sums, "grad_norm": grad_norm, "time_backward": t1 - t0, "time_optimizer": time.perf_counter() - t1}

    def accumulate_grpo(self, rows: list[Row], spec: LossSpec, counts: StepCounts | None = None) -> dict[str, float]:
        """Backpropagate the GRPO loss of `rows` into the gradients (no step); the loss's parts, summed."""
        n_tokens = sum(sum(r.loss_mask) for r in rows)
        counts = counts or step_counts(rows, spec)
        aggregate = partial(AGGREGATIONS[spec.aggregation], counts=counts)
        active = [r for r in rows if spec.beta > 0 or r.trains]
        packed = packed_forward_usable(self.module)
        if not packed:
            # Similar lengths side by side waste less compute on padding; sorting is stable, so the
            # order (and the floating-point sum) is the same on every run. The shared-prefix forward
            # pads nothing in its matmuls and wants a group's rows together, so it keeps group order.
            active.sort(key=lambda r: len(r.prompt_ids) + len(r.completion_ids))
        sums = {"pg_loss": 0.0, "kl": 0.0, "clipped": 0.0, "mismatch_kl": 0.0, "rows": len(active)}
        for start in range(0, len(active), self.micro_batch_size):
            chunk = active[start : start + self.micro_batch_size]
            prompts, completions = [r.prompt_ids for r in chunk], [r.completion_ids for r in chunk]
            logp, present = policy_logprobs(self.module, prompts, completions, spec.temperature, self.pad_id, packed=packed)  # [B, C]
            mask = present * pad_right([r.loss_mask for r in chunk], 0).to(present)  # [B, C] tokens trained on
            ref = None
            if spec.beta > 0:
                with torch.no_grad():
                    ref, _ = policy_logprobs(self.module, prompts, completions, spec.temperature, self.pad_id,
                                             logits_fn=self.reference_logits)  # [B, C]
            advantages = _advantages(chunk, logp)  # [B] or [B, C]
            old = logp.detach()
            if chunk[0].old_logp is not None:  # completion targets are contiguous per row, so row order = mask order
                old = old.clone()
                old[present.bool()] = torch.cat([r.old_logp for r in chunk]).to(old.device, old.dtype)
            if any(r.behaviour_logp is not None for r in chunk):  # sampled by an older version: truncated IS weights
                behaviour = logp.detach().clone()  # rows without one were sampled by these weights
                for i, r in enumerate(chunk):
                    if r.behaviour_logp is not None:
                        behaviour[i, present[i].bool()] = r.behaviour_logp.to(logp.device, logp.dtype)
                weights = truncated_is_weights(logp, behaviour, spec.is_cap)  # [B, C]
                advantages = (advantages if advantages.dim() == 2 else advantages[:, None]) * weights
                sums["mismatch_kl"] += float(mismatch_kl(logp, behaviour, mask))
            parts = clipped_policy_loss(logp, old, advantages, mask, spec.epsilon, aggregate, ref, spec.beta,
                                        epsilon_high=spec.epsilon_high, kl_estimator=KL_ESTIMATORS[spec.kl_estimator])
            parts.loss.backward()
            sums["pg_loss"] += parts.pg_loss.item()
            sums["kl"] += parts.kl.item()
            sums["clipped"] += parts.clipped.item()
        sums["tokens"] = float(n_tokens)
        return sums

    def update_with(self, accumulate: Callable[[torch.nn.Module], dict]) -> dict:
        """`accumulate(module)` backpropagates a loss (any stage's) and returns its metrics; then one optimizer step."""
        metrics = accumulate(self.module)
        return {**metrics, "grad_norm": self.optimizer_step()}

    def optimizer_step(self) -> float:
        """Clip the accumulated gradients, step the optimizer and the schedule, clear the gradients; the norm."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        if self.reduce_gradients is not None:
            self.reduce_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        return float(grad_norm)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    @contextmanager
    def evaluating(self):
        """The module in eval mode with no gradients (validation, reference scores), its mode restored after."""
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                yield self.module
        finally:
            self.module.train(was_training)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Trainable weights (all, or the LoRA adapter's), optimizer, schedule and version: a copy, not a view.

        torch's Optimizer.state_dict() hands out its live moment tensors, and load_state_dict() keeps
        tensors that already fit: without the deep copy, a policy loaded from another in the same
        process would share its Adam moments with it, and a kept state would change with training."""
        weights = {n: p.detach().contiguous().clone() for n, p in self.module.named_parameters() if p.requires_grad}
        return {"model": weights, "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "scheduler": self.scheduler.state_dict(), "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        expected = {n for n, p in self.module.named_parameters() if p.requires_grad}
        if set(state["model"]) != expected:
            missing, extra = sorted(expected - set(state["model"]))[:5], sorted(set(state["model"]) - expected)[:5]
            raise RuntimeError(f"checkpoint does not match the model (missing {missing}, unexpected {extra})")
        self.module.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.version = int(state.get("version", 0))

    def save_pretrained(self, folder, merge_lora: bool = False) -> None:
        """A Hugging Face folder of the module (with LoRA: the adapter, or the merged model)."""
        module = self.module.merge_and_unload() if merge_lora else self.module
        module.save_pretrained(folder)


def step_counts(rows: list[Row], spec: LossSpec) -> StepCounts:
    """The sizes every micro-batch's loss divides by: the whole batch's graded tokens and rows."""
    n_tokens = sum(sum(r.loss_mask) for r in rows)
    return StepCounts(tokens=float(max(n_tokens, 1)), rows=float(max(len(rows), 1)), max_new_tokens=max(spec.max_new_tokens, 1))


def _advantages(chunk: list[Row], logp: torch.Tensor) -> torch.Tensor:
    """[B] one advantage per row, or [B, C] when any row carries one per token (per-turn credit)."""
    if not any(isinstance(r.advantage, list) for r in chunk):
        return torch.tensor([r.advantage for r in chunk], device=logp.device, dtype=logp.dtype)
    per_token = [r.advantage if isinstance(r.advantage, list) else [r.advantage] * len(r.completion_ids) for r in chunk]
    out = torch.zeros_like(logp)
    for i, values in enumerate(per_token):
        out[i, : len(values)] = torch.tensor(values, dtype=logp.dtype)
    return out

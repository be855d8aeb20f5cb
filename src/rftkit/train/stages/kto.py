"""KTO as a Stage: unpaired (prompt, completion, label) rows against the starting model, whose log-probs are computed once.

Each example also gets a mismatched KL pair, its prompt with another example's completion,
fixed in build(): completions rotated by one within consecutive blocks of
`train.prompts_per_step` rows in file order (algorithms/kto.py `kl_partners`), as TRL builds
them once in its dataset. The reference log-probs of every example and of every KL pair
(training and validation) are then computed once, before the first update, with the model as
loaded, so no second copy is kept (with LoRA the fresh adapter is zero: the base model).

A step draws `train.prompts_per_step` examples. The reference point z0 is estimated over the
whole step's KL pairs (a forward without gradients: z0 is detached anyway), then each
micro-batch's KTO loss is backpropagated with its share of the step's mean, so
`train.micro_batch_size` changes speed, not the loss. TRL estimates z0 per micro-batch
(per_device_train_batch_size); with one micro-batch per step the two agree. With
`data.shuffle: false` and a file whose length is a multiple of `train.prompts_per_step`, each
step's KL pairs borrow exactly its own completions, as TRL's sequential batches do; shuffled,
a step's KL pairs are fixed mismatched pairs from elsewhere in the file, an estimate of the
same quantity.

Validation on data.val: `val/loss` (z0 over all held-out KL pairs), `val/reward_margin` (mean
implicit reward beta * r of desirable minus undesirable held-out answers, which KTO should
raise) and `val/kl`.
"""

from __future__ import annotations

import time
import warnings

import torch

from rftkit.algorithms.dpo import sequence_logps
from rftkit.algorithms.kto import kl_baseline, kl_partners, kto_loss
from rftkit.errors import UserError
from rftkit.models import sft_example
from rftkit.models.batching import pack_prompt_completion, token_logprobs
from rftkit.train.stages.base import StepResult
from rftkit.train.stages.offline import OfflineStage


def _warn_if_one_sided(rows, name: str) -> None:
    """TRL trains on one-sided files too (it only warns about the weights); so do we, with a warning."""
    labels = {row.label for row in rows}
    if len(labels) == 1:
        side = "desirable (label: true)" if labels == {True} else "undesirable (label: false)"
        effect = "val/reward_margin will be nan" if name == "data.val" else "the loss pushes one way only"
        warnings.warn(f"{name} holds only {side} examples: KTO still trains (z0 comes from mismatched pairs of "
                      f"the same side), but {effect}", stacklevel=2)


class KTOStage(OfflineStage):
    row_kind = "unpaired"
    headline_val = "val/reward_margin"

    def prepare(self) -> None:
        super().prepare()
        if self.cfg.train.prompts_per_step < 2:
            raise UserError("kto needs train.prompts_per_step >= 2: each example's KL pair borrows another example's "
                            f"completion from its step (got {self.cfg.train.prompts_per_step})")
        for rows, name in ((self.rows, "data.train"), (self.val_rows, "data.val")):
            if rows and len(rows) < 2:
                raise UserError(f"kto needs at least 2 rows in {name} to pair prompts with other completions (got 1)")
            if rows:
                _warn_if_one_sided(rows, name)

    def tokenize(self, row) -> list:
        prompt, completion = sft_example(self.tokenizer, row.messages, row.completion)
        return [{"prompt": prompt, "completion": completion, "label": row.label}]

    def build(self, policy, tokenizer) -> None:
        super().build(policy, tokenizer)
        for examples in (self.examples, self.val_examples):
            if examples:
                for example, j in zip(examples, kl_partners(len(examples), self.cfg.train.prompts_per_step)):
                    example["kl_completion"] = examples[j]["completion"]
        with policy.evaluating() as model:
            for examples in (self.examples, self.val_examples):
                for key in ("completion", "kl_completion"):
                    for example, logp in zip(examples, self.logps(model, examples, key).tolist()):
                        example[f"ref_{key}"] = logp

    def logps(self, model, examples: list[dict], key: str) -> torch.Tensor:
        """[B] summed log-probs of each example's `key` ids ("completion" or "kl_completion") after its prompt."""
        out = []
        for start in range(0, len(examples), self.cfg.train.micro_batch_size):
            chunk = examples[start : start + self.cfg.train.micro_batch_size]
            ids, attention, mask = pack_prompt_completion([e["prompt"] for e in chunk], [e[key] for e in chunk],
                                                          self.tokenizer.pad_token_id)
            ids, attention, mask = ids.to(self.policy.device), attention.to(self.policy.device), mask.to(self.policy.device)
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits  # [B, T, V]
            out.append(sequence_logps(token_logprobs(logits, ids), mask))  # [B]
        return torch.cat(out) if out else torch.zeros(0, device=self.policy.device)

    def kl(self, model, examples: list[dict]) -> torch.Tensor:
        """z0 over the examples' KL pairs: the policy's log-probs now against the reference's from build()."""
        with torch.no_grad():
            policy = self.logps(model, examples, "kl_completion")  # [B]
        return kl_baseline(policy, torch.tensor([e["ref_kl_completion"] for e in examples], device=policy.device))

    def loss(self, model, examples: list[dict], kl: torch.Tensor):
        """algorithms/kto.py's loss of `examples` (one forward per micro-batch) against the reference point `kl`."""
        k = self.cfg.kto
        logps = self.logps(model, examples, "completion")  # [B]
        ref = torch.tensor([e["ref_completion"] for e in examples], device=logps.device)  # [B]
        good = torch.tensor([e["label"] for e in examples], device=logps.device)  # [B] bool
        return kto_loss(logps[good], logps[~good], ref[good], ref[~good], kl, k.beta, k.desirable_weight, k.undesirable_weight)

    def _accumulate(self, model, batch: list[dict]) -> dict:
        kl = self.kl(model, batch)
        sums = {"loss": 0.0, "desirable": [], "undesirable": []}
        for start in range(0, len(batch), self.cfg.train.micro_batch_size):
            chunk = batch[start : start + self.cfg.train.micro_batch_size]
            out = self.loss(model, chunk, kl)
            share = len(chunk) / len(batch)  # micro-batch means weighted into the step's mean over examples
            (out.loss * share).backward()
            sums["loss"] += float(out.loss.detach()) * share
            sums["desirable"] += out.rewards_desirable.tolist()
            sums["undesirable"] += out.rewards_undesirable.tolist()
        return {**sums, "kl": float(kl)}

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        batch = self.take()
        out = self.policy.update_with(lambda model: self._accumulate(model, batch))
        metrics = {"train/loss": out["loss"], "kto/kl": out["kl"], "kto/desirable_fraction": len(out["desirable"]) / len(batch)}
        for side in ("desirable", "undesirable"):  # a step may draw one side only: no metric rather than a nan
            if out[side]:
                metrics[f"kto/rewards_{side}"] = sum(out[side]) / len(out[side])
        tokens = sum(len(e["completion"]) + len(e["kl_completion"]) for e in batch)
        return StepResult({**metrics, "actor/grad_norm": out["grad_norm"], "actor/lr": self.policy.lr, **self.perf(t0, tokens)})

    def validate(self) -> dict[str, float]:
        with self.policy.evaluating() as model:
            out = self.loss(model, self.val_examples, self.kl(model, self.val_examples))
        mean = lambda t: float(t.mean()) if t.numel() else float("nan")  # noqa: E731
        return {"val/loss": float(out.loss), "val/kl": float(out.kl),
                "val/reward_margin": mean(out.rewards_desirable) - mean(out.rewards_undesirable)}

"""DPO as a Stage: (prompt, chosen, rejected) pairs against the starting model, whose log-probs are computed once.

The reference log-probs of every training and validation pair are computed in build(),
before the first update, with the model as loaded: no second copy of the model is kept
(with LoRA the fresh adapter is zero, so this is the base model too). A step draws
`train.prompts_per_step` pairs; chosen and rejected answers of `train.micro_batch_size`
pairs go through one forward together. Metrics: the loss, the implicit rewards, their
accuracy and margin; validation adds `val/logp_margin`, the mean of
log p(chosen) - log p(rejected) on held-out pairs, which DPO should raise.
"""

from __future__ import annotations

import time

import torch

from rftkit.algorithms.dpo import LOSSES, dpo_loss, sequence_logps
from rftkit.models import prompt_ids
from rftkit.models.batching import pack_prompt_completion, token_logprobs
from rftkit.train.stages.base import StepResult
from rftkit.train.stages.offline import OfflineStage


class DPOStage(OfflineStage):
    row_kind = "preference"
    headline_val = "val/logp_margin"

    def tokenize(self, row) -> list:
        prompt = prompt_ids(self.tokenizer, row.messages)
        eos = [self.tokenizer.eos_token_id]
        encode = lambda text: self.tokenizer(text, add_special_tokens=False).input_ids + eos  # noqa: E731
        return [{"prompt": prompt, "chosen": encode(row.chosen), "rejected": encode(row.rejected)}]

    def build(self, policy, tokenizer) -> None:
        super().build(policy, tokenizer)
        with policy.evaluating() as model:
            for pairs in (self.examples, self.val_examples):
                for start in range(0, len(pairs), self.cfg.train.micro_batch_size):
                    chunk = pairs[start : start + self.cfg.train.micro_batch_size]
                    chosen, rejected = self.sequence_logps(model, chunk)
                    for pair, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
                        pair["ref_chosen"], pair["ref_rejected"] = c, r

    def sequence_logps(self, model, chunk: list[dict], average: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] log-probs of the chosen and of the rejected answers (summed, or averaged for IPO)."""
        average = LOSSES[self.cfg.dpo.loss].average_logps if average is None else average
        device = self.policy.device
        prompts = [p["prompt"] for p in chunk] * 2
        answers = [p["chosen"] for p in chunk] + [p["rejected"] for p in chunk]
        input_ids, attention, mask = pack_prompt_completion(prompts, answers, self.tokenizer.pad_token_id)
        input_ids, attention, mask = input_ids.to(device), attention.to(device), mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits  # [2B, T, V]
        logps = sequence_logps(token_logprobs(logits, input_ids), mask, average)  # [2B]
        return logps[: len(chunk)], logps[len(chunk) :]

    def _loss(self, model, chunk: list[dict]):
        dpo = self.cfg.dpo
        chosen, rejected = self.sequence_logps(model, chunk)
        ref_c = torch.tensor([p["ref_chosen"] for p in chunk], device=chosen.device)
        ref_r = torch.tensor([p["ref_rejected"] for p in chunk], device=chosen.device)
        return dpo_loss(chosen, rejected, ref_c, ref_r, dpo.beta, dpo.loss, dpo.label_smoothing)

    def _accumulate(self, model, pairs: list[dict]) -> dict[str, float]:
        sums = {"loss": 0.0, "chosen": 0.0, "rejected": 0.0, "accuracy": 0.0}
        for start in range(0, len(pairs), self.cfg.train.micro_batch_size):
            chunk = pairs[start : start + self.cfg.train.micro_batch_size]
            loss, r_chosen, r_rejected = self._loss(model, chunk)
            share = len(chunk) / len(pairs)  # micro-batch means weighted into the step's mean
            (loss * share).backward()
            sums["loss"] += float(loss.detach()) * share
            sums["chosen"] += float(r_chosen.sum())
            sums["rejected"] += float(r_rejected.sum())
            sums["accuracy"] += float((r_chosen > r_rejected).sum())
        return sums

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        pairs = self.take()
        sums = self.policy.update_with(lambda model: self._accumulate(model, pairs))
        n = len(pairs)
        tokens = sum(len(p["chosen"]) + len(p["rejected"]) for p in pairs)
        return StepResult({
            "train/loss": sums["loss"], "rewards/chosen": sums["chosen"] / n, "rewards/rejected": sums["rejected"] / n,
            "rewards/margin": (sums["chosen"] - sums["rejected"]) / n, "rewards/accuracy": sums["accuracy"] / n,
            "actor/grad_norm": sums["grad_norm"], "actor/lr": self.policy.lr, **self.perf(t0, tokens)})

    def validate(self) -> dict[str, float]:
        margins, losses, correct = [], 0.0, 0
        with self.policy.evaluating() as model:
            for start in range(0, len(self.val_examples), self.cfg.train.micro_batch_size):
                chunk = self.val_examples[start : start + self.cfg.train.micro_batch_size]
                chosen, rejected = self.sequence_logps(model, chunk, average=False)
                margins += (chosen - rejected).tolist()
                loss, r_chosen, r_rejected = self._loss(model, chunk)
                losses += float(loss.detach()) * len(chunk)
                correct += int((r_chosen > r_rejected).sum())
        n = max(len(self.val_examples), 1)
        return {"val/logp_margin": sum(margins) / n, "val/loss": losses / n, "val/reward_accuracy": correct / n}

"""A-SFT as a Stage: advantage-weighted SFT on logged (messages, response, reward) rows; nothing is generated.

Weights come from algorithms/asft.py, computed once over the whole training file (the
data is offline, so a prompt's baseline uses every logged answer to it, not only those
that share a batch), then each step is a weighted SFT step: weight * NLL summed over
answer tokens, divided by the answer-token count. Validation is the weighted loss on
data.val (weights computed over that file); held-out pass@1 is `rft eval compare`'s job.
"""

from __future__ import annotations

import time

import torch

from rftkit.algorithms.asft import asft_weights, prompt_groups
from rftkit.models import sft_example
from rftkit.train.stages.base import StepResult
from rftkit.train.stages.sft import SFTStage


class ASFTStage(SFTStage):
    row_kind = "logged"

    def tokenize(self, row) -> list:
        return [sft_example(self.tokenizer, row.messages, row.response)]

    def build(self, policy, tokenizer) -> None:
        super().build(policy, tokenizer)
        self.weights = self._weights(self.rows)
        self.val_weights = self._weights(self.val_rows)

    def _weights(self, rows) -> list[float]:
        if not rows:
            return []
        a = self.cfg.asft
        rewards = torch.tensor([float("nan") if r.reward is None else r.reward for r in rows], dtype=torch.float64)
        groups = prompt_groups([repr(r.messages) for r in rows])
        return asft_weights(rewards, groups, a.baseline, a.temperature, a.max_weight, a.normalization).tolist()

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        index = self.sampler.take(self.cfg.train.prompts_per_step)
        weights = [self.weights[i] for i in index]
        pairs = [self.examples[i] for i in index]
        out = self.policy.update_with(lambda model: self.loss(model, pairs, weights))
        return StepResult({"train/loss": out["train/loss"], "train/tokens": out["train/tokens"],
                           "asft/weight_mean": sum(weights) / len(weights), "asft/weight_max": max(weights),
                           "actor/grad_norm": out["grad_norm"], "actor/lr": self.policy.lr,
                           **self.perf(t0, out["train/tokens"])})

    def validate(self) -> dict[str, float]:
        with self.policy.evaluating() as model:
            weighted = self.loss(model, self.val_examples, self.val_weights, backward=False)["train/loss"]
            plain = self.loss(model, self.val_examples, backward=False)["train/loss"]
        return {"val/loss": weighted, "val/unweighted_loss": plain}

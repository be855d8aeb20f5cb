"""SFT as a Stage: next-token loss on assistant turns only, packed rows, LoRA or full weights.

Rows are OpenAI chat fine-tuning conversations (data/rows.py); every assistant turn is an
example whose prompt is the conversation before it (algorithms/sft.py). A step draws
`train.prompts_per_step` examples, packs them into rows of `sft.pack_length` tokens and
runs `train.micro_batch_size` rows per forward. The loss is the mean over the step's
answer tokens. Validation is the same loss on data.val (`val/loss`).
"""

from __future__ import annotations

import time

from rftkit.algorithms.sft import conversation_examples, sft_pairs_loss
from rftkit.train.stages.base import StepResult
from rftkit.train.stages.offline import OfflineStage


class SFTStage(OfflineStage):
    headline_val = "val/loss"

    def tokenize(self, row) -> list:
        return conversation_examples(self.tokenizer, row.messages)

    def loss(self, model, pairs, weights=None, backward: bool = True) -> dict[str, float]:
        sft = self.cfg.sft
        loss, tokens = sft_pairs_loss(model, pairs, self.cfg.train.micro_batch_size, sft.packing, sft.pack_length, weights, backward)
        return {"train/loss": loss, "train/tokens": tokens}

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        pairs = self.take()
        out = self.policy.update_with(lambda model: self.loss(model, pairs))
        return StepResult({"train/loss": out["train/loss"], "train/tokens": out["train/tokens"],
                           "actor/grad_norm": out["grad_norm"], "actor/lr": self.policy.lr,
                           **self.perf(t0, out["train/tokens"])})

    def validate(self) -> dict[str, float]:
        with self.policy.evaluating() as model:
            return {"val/loss": self.loss(model, self.val_examples, backward=False)["train/loss"]}

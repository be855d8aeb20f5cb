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
from rftkit.train.stages.base import eval_mode
from rftkit.train.stages.offline import OfflineStage


class SFTStage(OfflineStage):
    headline_val = "val/loss"

    def tokenize(self, row) -> list:
        return conversation_examples(self.tokenizer, row.messages)

    def loss(self, pairs, weights=None, backward: bool = True) -> tuple[float, float]:
        sft = self.cfg.sft
        return sft_pairs_loss(self.model, pairs, self.cfg.train.micro_batch_size, sft.packing, sft.pack_length, weights, backward)

    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        loss, tokens = self.loss(self.take())
        return {"train/loss": loss, "train/tokens": tokens, "actor/grad_norm": self.trainer.optimizer_step(),
                "actor/lr": self.lr(), **self.perf(t0, tokens)}

    def validate(self) -> dict[str, float]:
        with eval_mode(self.model):
            loss, _ = self.loss(self.val_examples, backward=False)
        return {"val/loss": loss}

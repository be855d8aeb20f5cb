"""What the offline stages share: rows from a file, tokenised once, drawn `train.prompts_per_step` per step."""

from __future__ import annotations

from rftkit.data.sampler import PromptSampler
from rftkit.train.stages.base import Stage


class OfflineStage(Stage):
    """Subclasses set `row_kind` and implement `tokenize(row)`, `step` and `validate`."""

    row_kind = "conversation"

    def prepare(self) -> None:
        self.rows = self.load_rows(self.cfg.data.train, self.row_kind)
        self.val_rows = self.load_rows(self.cfg.data.val, self.row_kind)
        self.require_val()

    def build(self, policy, tokenizer) -> None:
        super().build(policy, tokenizer)
        self.examples = [e for row in self.rows for e in self.tokenize(row)]
        self.val_examples = [e for row in self.val_rows for e in self.tokenize(row)]
        self.sampler = PromptSampler(len(self.examples), self.cfg.train.seed, self.cfg.data.shuffle)

    def tokenize(self, row) -> list:
        raise NotImplementedError

    def take(self) -> list:
        return [self.examples[i] for i in self.sampler.take(self.cfg.train.prompts_per_step)]

    def state(self) -> dict:
        return {"sampler": self.sampler.state()}

    def restore(self, state: dict) -> None:
        self.sampler.restore(state["sampler"])

"""Reward model as a Stage: Bradley-Terry on preference pairs, a scalar head on the language model.

The starting model (any causal LM folder, or an earlier reward model) is loaded as a
sequence classifier with one label: the body is the language model's, the `score` head is
new. The score of a conversation is the head at its last token (models/reward.py's
`score_pairs`, which the `reward_model` grader also uses, so training and grading read the
same token). With LoRA the head is trained in full and the final model is always saved
merged: the grader needs one plain Hugging Face folder. Only score differences are
learnt, so the final model stores the mean score of its training answers as
`config.score_offset`, which the grader subtracts: 0 is an average answer.
"""

from __future__ import annotations

import time

import torch

from rftkit.algorithms.reward_model import bradley_terry_loss
from rftkit.models.reward import conversation_ids, load_reward_model, score_pairs
from rftkit.train.stages.base import StepResult
from rftkit.train.stages.offline import OfflineStage


class RewardModelStage(OfflineStage):
    row_kind = "preference"
    headline_val = "val/accuracy"
    lora_options = {"task_type": "SEQ_CLS", "modules_to_save": ["score"]}
    merge_lora_on_save = True

    @staticmethod
    def load_model(path: str, dtype: str, device: str):
        return load_reward_model(path, dtype, device)

    def tokenize(self, row) -> list:
        margin = row.margin if self.cfg.reward_model.margin and row.margin is not None else 0.0
        return [{"chosen": conversation_ids(self.tokenizer, row.messages, row.chosen),
                 "rejected": conversation_ids(self.tokenizer, row.messages, row.rejected), "margin": margin}]

    def _scores(self, model, chunk: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = score_pairs(model, [p["chosen"] for p in chunk] + [p["rejected"] for p in chunk], self.tokenizer.pad_token_id)
        return scores[: len(chunk)], scores[len(chunk) :]  # [B], [B]

    def _chunks(self, model, pairs: list[dict]):
        for start in range(0, len(pairs), self.cfg.train.micro_batch_size):
            chunk = pairs[start : start + self.cfg.train.micro_batch_size]
            chosen, rejected = self._scores(model, chunk)
            margin = torch.tensor([p["margin"] for p in chunk], device=chosen.device)
            yield chunk, chosen, rejected, bradley_terry_loss(chosen, rejected, margin)

    def _accumulate(self, model, pairs: list[dict]) -> dict[str, float]:
        loss_sum, correct, gap = 0.0, 0, 0.0
        for chunk, chosen, rejected, loss in self._chunks(model, pairs):
            share = len(chunk) / len(pairs)
            (loss * share).backward()
            loss_sum += float(loss.detach()) * share
            correct += int((chosen > rejected).sum())
            gap += float((chosen - rejected).detach().sum())
        return {"train/loss": loss_sum, "train/accuracy": correct / len(pairs), "rewards/margin": gap / len(pairs)}

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        pairs = self.take()
        out = self.policy.update_with(lambda model: self._accumulate(model, pairs))
        tokens = sum(len(p["chosen"]) + len(p["rejected"]) for p in pairs)
        return StepResult({"train/loss": out["train/loss"], "train/accuracy": out["train/accuracy"],
                           "rewards/margin": out["rewards/margin"], "actor/grad_norm": out["grad_norm"],
                           "actor/lr": self.policy.lr, **self.perf(t0, tokens)})

    def finalize(self) -> None:
        """Store the mean score of (up to 1024) training answers as config.score_offset: Bradley-Terry fixes only
        differences, so without it a score of 0 means nothing. The reward_model grader subtracts it."""
        answers = [ids for p in self.examples[:512] for ids in (p["chosen"], p["rejected"])]
        with self.policy.evaluating() as model:
            scores = torch.cat([score_pairs(model, answers[i : i + 64], self.tokenizer.pad_token_id)
                                for i in range(0, len(answers), 64)])
            model.config.score_offset = float(scores.mean())

    def validate(self) -> dict[str, float]:
        loss_sum, correct = 0.0, 0
        with self.policy.evaluating() as model:
            for chunk, chosen, rejected, loss in self._chunks(model, self.val_examples):
                loss_sum += float(loss.detach()) * len(chunk)
                correct += int((chosen > rejected).sum())
        n = max(len(self.val_examples), 1)
        return {"val/accuracy": correct / n, "val/loss": loss_sum / n}

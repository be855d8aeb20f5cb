"""Reward model as a Stage: Bradley-Terry on preference pairs, a scalar head on the language model.

The starting model (any causal LM folder, or an earlier reward model) is loaded as a
sequence classifier with one label: the body is the language model's, the `score` head is
new. The score of a conversation is the head at its last token (graders/reward_model.py's
`score_pairs`, which the `reward_model` grader also uses, so training and grading read the
same token). With LoRA the head is trained in full and the final model is always saved
merged: the grader needs one plain Hugging Face folder. Only score differences are
learnt, so the final model stores the mean score of its training answers as
`config.score_offset`, which the grader subtracts: 0 is an average answer.
"""

from __future__ import annotations

import sys
import time
import warnings

import torch

from rftkit.algorithms.reward_model import bradley_terry_loss
from rftkit.graders.reward_model import conversation_ids, score_pairs
from rftkit.train.stages.base import eval_mode
from rftkit.train.stages.offline import OfflineStage


class RewardModelStage(OfflineStage):
    row_kind = "preference"
    headline_val = "val/accuracy"
    lora_options = {"task_type": "SEQ_CLS", "modules_to_save": ["score"]}
    merge_lora_on_save = True

    @staticmethod
    def load_model(path: str, dtype: str, device: str):
        from transformers import AutoModelForSequenceClassification

        from rftkit.models import _quiet_transformers, load_tokenizer, resolve_model_path

        from transformers.utils import logging as hf_logging

        _quiet_transformers()
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its load report flags the head a causal LM lacks; we say it plainly below
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                resolve_model_path(path), num_labels=1, dtype=torch_dtype, output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        missing = info.get("missing_keys") or []
        body = sorted(k for k in missing if not k.startswith("score."))
        if body:
            warnings.warn(f"{path}: {len(body)} weights not in the checkpoint were initialised randomly: {', '.join(body[:5])}",
                          stacklevel=2)
        elif missing:
            print(f"reward model: {path} has no scalar head yet; a new one is initialised", file=sys.stderr)
        if model.config.pad_token_id is None:  # scoring never relies on it; set for anyone calling the model directly
            model.config.pad_token_id = load_tokenizer(path).pad_token_id
        return model.to(device)

    def tokenize(self, row) -> list:
        margin = row.margin if self.cfg.reward_model.margin and row.margin is not None else 0.0
        return [{"chosen": conversation_ids(self.tokenizer, row.messages, row.chosen),
                 "rejected": conversation_ids(self.tokenizer, row.messages, row.rejected), "margin": margin}]

    def _scores(self, chunk: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = score_pairs(self.model, [p["chosen"] for p in chunk] + [p["rejected"] for p in chunk], self.tokenizer.pad_token_id)
        return scores[: len(chunk)], scores[len(chunk) :]  # [B], [B]

    def _chunks(self, pairs: list[dict]):
        for start in range(0, len(pairs), self.cfg.train.micro_batch_size):
            chunk = pairs[start : start + self.cfg.train.micro_batch_size]
            chosen, rejected = self._scores(chunk)
            margin = torch.tensor([p["margin"] for p in chunk], device=chosen.device)
            yield chunk, chosen, rejected, bradley_terry_loss(chosen, rejected, margin)

    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        pairs = self.take()
        loss_sum, correct, gap = 0.0, 0, 0.0
        for chunk, chosen, rejected, loss in self._chunks(pairs):
            share = len(chunk) / len(pairs)
            (loss * share).backward()
            loss_sum += float(loss.detach()) * share
            correct += int((chosen > rejected).sum())
            gap += float((chosen - rejected).detach().sum())
        tokens = sum(len(p["chosen"]) + len(p["rejected"]) for p in pairs)
        return {"train/loss": loss_sum, "train/accuracy": correct / len(pairs), "rewards/margin": gap / len(pairs),
                "actor/grad_norm": self.trainer.optimizer_step(), "actor/lr": self.lr(), **self.perf(t0, tokens)}

    def finalize(self) -> None:
        """Store the mean score of (up to 1024) training answers as config.score_offset: Bradley-Terry fixes only
        differences, so without it a score of 0 means nothing. The reward_model grader subtracts it."""
        answers = [ids for p in self.examples[:512] for ids in (p["chosen"], p["rejected"])]
        with eval_mode(self.model):
            scores = torch.cat([score_pairs(self.model, answers[i : i + 64], self.tokenizer.pad_token_id)
                                for i in range(0, len(answers), 64)])
        self.model.config.score_offset = float(scores.mean())

    def validate(self) -> dict[str, float]:
        loss_sum, correct = 0.0, 0
        with eval_mode(self.model):
            for chunk, chosen, rejected, loss in self._chunks(self.val_examples):
                loss_sum += float(loss.detach()) * len(chunk)
                correct += int((chosen > rejected).sum())
        n = max(len(self.val_examples), 1)
        return {"val/accuracy": correct / n, "val/loss": loss_sum / n}

"""Batched, KV-cached sampling with `transformers` generate, on CPU or GPU.

All n copies of every prompt are generated together (left-padded, since the model is a
decoder) in chunks of `batch_size` rows to bound memory. Completions are cut at the first
end-of-turn token, which is kept in `token_ids` so training teaches the model to stop.
"""

from __future__ import annotations

import torch

from rftkit.models import prompt_ids, stop_token_ids
from rftkit.rollout.base import SamplingParams
from rftkit.types import Completion, Group, Item


class HFEngine:
    def __init__(self, model, tokenizer, batch_size: int = 256, return_logprobs: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.return_logprobs = return_logprobs  # costs one [rows, vocab] tensor per generated token
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id

    @torch.no_grad()
    def generate(self, items: list[Item], n: int, sampling: SamplingParams) -> list[Group]:
        prompts = [prompt_ids(self.tokenizer, item.messages) for item in items]
        rows = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
        completions: list[Completion] = []
        for start in range(0, len(rows), self.batch_size):
            completions += self._generate_rows([p for _, p in rows[start : start + self.batch_size]], sampling)
        return [Group(item=item, prompt_ids=prompts[i], completions=completions[i * n : (i + 1) * n]) for i, item in enumerate(items)]

    def _generate_rows(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)  # [B, P]
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # [B, P]
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=sampling.temperature > 0,
            temperature=sampling.temperature if sampling.temperature > 0 else None,
            top_p=sampling.top_p if sampling.temperature > 0 else None,
            top_k=sampling.top_k if sampling.temperature > 0 else None,
            max_new_tokens=sampling.max_new_tokens,
            # A model's own generation_config may add e.g. repetition_penalty=1.05 (Qwen2.5-Instruct): sampling
            # would then differ from the distribution the loss assumes, and training would be off-policy.
            repetition_penalty=1.0,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=self.return_logprobs,
        )
        self.model.train(was_training)
        new = out.sequences[:, width:].tolist()  # [B, N]
        step_logprobs = None
        if self.return_logprobs:
            temp = sampling.temperature if sampling.temperature > 0 else 1.0
            logits = torch.stack(out.logits, dim=1).float() / temp  # [B, N, V]
            step_logprobs = torch.log_softmax(logits, -1).gather(-1, out.sequences[:, width:, None]).squeeze(-1).tolist()
        stops = set(self.stop_ids)
        result = []
        for row, ids in enumerate(new):
            cut = next((k + 1 for k, t in enumerate(ids) if t in stops), None)
            ids = ids[:cut] if cut else ids
            text_ids = ids[:-1] if cut else ids
            result.append(
                Completion(
                    text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                    token_ids=ids,
                    logprobs=step_logprobs[row][: len(ids)] if step_logprobs else [],
                    finish_reason="stop" if cut else "length",
                )
            )
        return result

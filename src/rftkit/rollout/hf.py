"""Batched, KV-cached sampling with `transformers` generate, on CPU or GPU.

All n copies of every prompt are generated together (left-padded, since the model is a
decoder) in chunks of `batch_size` rows to bound memory. The n copies share one prefill:
each distinct prompt is run once, so the prompt costs 1/n of what it would (measured:
generation ~20% faster at 8 generations, tokens identical). Our decode loop
(rollout/decode.py) keeps that cache once per prompt; for generate() it is copied per row.
Completions are cut at the first end-of-turn token, which is kept in `token_ids` so
training teaches the model to stop.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList

from rftkit.models import prompt_ids, stop_token_ids
from rftkit.models.layout import supports
from rftkit.errors import UserError
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.budget import ThinkingBudget
from rftkit import native
from rftkit.rollout.decode import sample_tokens
from rftkit.rollout.turncache import TurnCache
from rftkit.types import Completion, Group, Item


class SamplingWarper(LogitsProcessor):
    """Temperature, top-k and top-p, applied by us, then the entropy of what is left.

    `transformers` runs user processors *before* its own warpers, so a meter there would
    see untempered logits. Doing the warping here (and passing generate temperature 1,
    top-k 0, top-p 1) puts the distribution tokens are drawn from in one place: this
    processor returns exactly the scores sampled from, and sums their entropy at every
    generated token of unfinished rows, per row (`row_entropy`: every row, not only the rows
    the update trains on). It draws no random numbers, so seeded sampling is unchanged.
    """

    def __init__(self, stop_ids: list[int], sampling: SamplingParams):
        self.stop_ids = torch.tensor(stop_ids)
        self.temperature, self.top_k, self.top_p = sampling.temperature, sampling.top_k, sampling.top_p
        self.row_entropy: torch.Tensor | None = None  # [B] summed entropy of each row of the current batch
        self._finished: torch.Tensor | None = None

    def new_batch(self, rows: int) -> None:
        self._finished = None
        self.row_entropy = torch.zeros(rows, dtype=torch.float64)

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if 0 < self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True, dim=-1)
            probs = torch.softmax(ordered, dim=-1)
            ahead = probs.cumsum(-1) - probs  # mass of the more likely tokens: keep the smallest set reaching top_p
            drop = torch.zeros_like(ahead, dtype=torch.bool).scatter(-1, order, ahead >= self.top_p)
            scores = scores.masked_fill(drop, float("-inf"))
        return scores

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._finished is None:  # first generated token of a batch
            self._finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        else:
            self._finished |= torch.isin(input_ids[:, -1], self.stop_ids.to(input_ids.device))
        scores = self.warp(scores)
        self.observe(scores, ~self._finished)
        return scores

    def observe(self, scores: torch.Tensor, alive: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Add the entropy of the distributions in `scores` [b, V] to the rows still generating (`alive` [b]).

        `rows` [b]: each score row's place in the batch, when finished rows have left it.
        Returns their probabilities (softmax of the float scores), for the sampler to draw from."""
        probs = torch.softmax(scores.float(), dim=-1)
        entropy = -torch.special.xlogy(probs, probs).sum(-1)  # 0 * log 0 = 0 for cut tokens
        where = alive.nonzero().squeeze(1) if rows is None else rows[alive]
        self.row_entropy.index_put_((where.cpu(),), entropy[alive].cpu().double(), accumulate=True)
        return probs


class HFEngine:
    def __init__(self, model, tokenizer, batch_size: int = 256, return_logprobs: bool = False, lean: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.lean = lean and supports(model) and not return_logprobs  # rollout/decode.py; generate() otherwise
        self.batch_size = batch_size
        self.return_logprobs = return_logprobs  # costs one [rows, vocab] tensor per generated token
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id
        self.version = 0  # of the weights sampling now (update_weights)
        self.turns = TurnCache()  # multi-turn episodes' keys and values between turns (generate_from_ids(reuse=True))
        # transformers 5.2x renamed forward's `past_key_values` to `cache` (the old name warns); 5.0 knows only the old one
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's forward takes **kwargs
        self._cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def update_weights(self, state_or_policy, version: int) -> None:
        """This engine samples with the module it was given; a policy over that same module needs no copy.

        A state dict (or a policy over another module) is loaded into the engine's module."""
        module = getattr(state_or_policy, "module", None)
        if module is None:  # a state dict
            self.model.load_state_dict(state_or_policy, strict=False)
        elif module is not self.model:  # the module's weights only (Policy.state_dict() would copy the optimizer too)
            self.model.load_state_dict(module.state_dict(), strict=False)
        self.version = version
        self.turns.clear()  # kept keys and values belong to the old weights

    @torch.no_grad()
    def generate(self, items: list[Item], n: int, sampling: SamplingParams) -> list[Group]:
        prompts = [prompt_ids(self.tokenizer, item.messages) for item in items]
        completions = self.generate_from_ids([p for p in prompts for _ in range(n)], sampling)
        return [Group(item=item, prompt_ids=prompts[i], completions=completions[i * n : (i + 1) * n]) for i, item in enumerate(items)]

    @torch.no_grad()
    def generate_from_ids(self, prompts: list[list[int]], sampling: SamplingParams, reuse: bool = False,
                          on_token=None) -> list[Completion]:
        """One completion per prompt given as token ids (the next turn of each live episode, agents/rollout.py).

        `reuse`: prompts that extend an earlier call's prompt + completion start from the keys and
        values kept from that call (rollout/turncache.py; C kernel only), so only the new ids are prefilled.
        `on_token(rows, tokens)`: called as tokens are drawn (rows index `prompts`), on our decode loop's path
        only (`self.lean`); a server streams from it (server/serving.py)."""
        completions: list[Completion] = []
        if reuse:
            self.turns.keep_only(prompts)  # what earlier turns kept for episodes that have ended
        for start in range(0, len(prompts), self.batch_size):
            shifted = None if on_token is None else (lambda rows, tokens, at=start: on_token([r + at for r in rows], tokens))
            completions += self._generate_rows(prompts[start : start + self.batch_size], sampling, reuse, shifted)
        return completions

    def _generate_rows(self, prompts: list[list[int]], sampling: SamplingParams, reuse: bool = False,
                       on_token=None) -> list[Completion]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)  # [B, P]
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # [B, P]
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling
        sample = sampling.temperature > 0
        warper = SamplingWarper(self.stop_ids, sampling if sample else SamplingParams(1.0))
        warper.new_batch(len(prompts))
        budget = None
        if sampling.think_budget is not None:  # reasoning.budget_tokens: the close tag inserted at the budget
            if not (self.lean and width > 1):
                raise UserError("reasoning.budget_tokens needs rftkit's decode loop, which this model's layout "
                                "does not have (models/layout.py supports); unset the budget")
            budget = ThinkingBudget(len(prompts), sampling.think_budget, list(sampling.close_ids),
                                    sampling.max_new_tokens, device)
        if self.lean and width > 1:
            keep = [] if reuse and self._kernel_path() else None
            hits = [self.turns.find(p) for p in prompts] if keep is not None else []
            if any(hits):  # later turns: only the ids after what was kept are prefilled
                input_ids, attention, cache, group = self.turns.prefix(self.model, prompts, hits, self._cache_kw, self.pad_id)
            else:
                cache, group = self._distinct_prefill(prompts, input_ids, attention)
            new = sample_tokens(self.model, input_ids, attention, cache, group, sampling.max_new_tokens, warper,
                                self.stop_ids, self.pad_id, do_sample=sample, keep=keep, on_token=on_token,
                                budget=budget).tolist()
            if keep:
                self.turns.store(prompts, new, keep)
            self.model.train(was_training)
            return self._completions(new, None, warper.row_entropy.tolist(), budget)
        cache = self._shared_prefill(prompts, input_ids, attention)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=sample,
            # our SamplingWarper applies temperature, top-k and top-p; transformers' own warpers stay off
            temperature=1.0 if sample else None,
            top_p=1.0 if sample else None,
            top_k=0 if sample else None,
            max_new_tokens=sampling.max_new_tokens,
            # A model's own generation_config may add e.g. repetition_penalty=1.05 (Qwen2.5-Instruct): sampling
            # would then differ from the distribution the loss assumes, and training would be off-policy.
            repetition_penalty=1.0,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=self.return_logprobs,
            logits_processor=LogitsProcessorList([warper]),
            **{self._cache_kw: cache},
        )
        self.model.train(was_training)
        new = out.sequences[:, width:].tolist()  # [B, N]
        step_logprobs = None
        if self.return_logprobs:
            temp = sampling.temperature if sampling.temperature > 0 else 1.0
            logits = torch.stack(out.logits, dim=1).float() / temp  # [B, N, V]
            step_logprobs = torch.log_softmax(logits, -1).gather(-1, out.sequences[:, width:, None]).squeeze(-1).tolist()
        return self._completions(new, step_logprobs, warper.row_entropy.tolist())

    def _kernel_path(self) -> bool:
        """Whether the decode loop runs the C kernel (the layout TurnCache reads): CPU, float32, kernel built."""
        first = next(self.model.parameters())
        return first.device.type == "cpu" and first.dtype == torch.float32 and native.available()

    def _completions(self, new: list[list[int]], step_logprobs: list[list[float]] | None,
                     entropy: list[float], budget: ThinkingBudget | None = None) -> list[Completion]:
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
                    entropy=entropy[row],
                    version=self.version,
                    # the close tag a thinking budget inserted: context, not trained on
                    loss_mask=budget.inserted(row, len(ids)) if budget is not None and budget.forced[row].any() else None,
                )
            )
        return result

    def _shared_prefill(self, prompts: list[list[int]], input_ids: torch.Tensor, attention: torch.Tensor):
        """For generate(): the KV cache of all but the last prompt token, per row, computed once per distinct prompt.

        generate() then only feeds the last prompt token. None (generate() prefills) when no
        prompt repeats, as there is nothing to share.
        """
        if len(set(map(tuple, prompts))) == len(prompts) or input_ids.shape[1] < 2:
            return None
        cache, group = self._distinct_prefill(prompts, input_ids, attention)
        cache.reorder_cache(group)  # [U, P-1] -> [B, P-1]: row r gets its prompt's keys and values
        return cache

    def _distinct_prefill(self, prompts: list[list[int]], input_ids: torch.Tensor, attention: torch.Tensor):
        """(KV cache of all but the last token of each distinct prompt, [B] index of each row's prompt)."""
        index: dict[tuple[int, ...], int] = {}
        group = [index.setdefault(tuple(p), len(index)) for p in prompts]
        first = [group.index(u) for u in range(len(index))]
        cache = self._prefill(input_ids[first, :-1], attention[first, :-1])  # [U, P-1]
        return cache, torch.tensor(group, device=input_ids.device)

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> DynamicCache:
        """The KV cache of left-padded prompt ids [B, P'] (positions numbered as generate() does)."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{self._cache_kw: cache})
        return cache

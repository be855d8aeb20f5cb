"""GRPO as a Stage: rollout -> grade -> rewards -> advantages -> update, each variant an entry in a table.

Variants (config `algorithm.*`), all from algorithms/grpo.py:
- advantage estimator (`ADVANTAGES`), loss aggregation (`AGGREGATIONS`), KL estimator
  (`KL_ESTIMATORS`) used either as a loss term or as a reward penalty (`kl_in`);
- clip-higher (`epsilon_high`), DAPO's soft overlong penalty (`overlong_buffer`);
- dynamic sampling: groups whose rewards are all equal are dropped and more prompts are
  generated until the batch holds `prompts_per_step` informative groups (at most
  `max_refill_rounds` extra rounds; then the step trains on what it has). Reward metrics
  are over every generated group, so they show the policy, not the filter;
- mu = `updates_per_batch` > 1: the batch's log-probs are computed once before the first
  update (no gradients) and every later update's ratio is taken against them. With mu = 1
  no such pass is made: the ratio is 1 and its gradient is the same.

Rewards are shaped (overlong, KL) into a separate tensor before the advantages: a
Score's reward stays what the grader said.
"""

from __future__ import annotations

import time

import torch

from rftkit.algorithms.common import token_logprobs
from rftkit.algorithms.grpo import ADVANTAGES, KL_ESTIMATORS, keep_informative_groups, overlong_penalty
from rftkit.algorithms.grpo_update import completion_logprobs, grpo_update
from rftkit.graders.executor import GradingStats
from rftkit.train.stages.generating import GeneratingStage
from rftkit.types import Group


def merge_grading(stats: list[GradingStats]) -> GradingStats:
    injected: dict[str, int] = {}
    for s in stats:
        for kind, n in s.injected.items():
            injected[kind] = injected.get(kind, 0) + n
    return GradingStats(sum(s.errors for s in stats), sum(s.timeouts for s in stats), [x for s in stats for x in s.latencies], injected)


class GRPOStage(GeneratingStage):
    @property
    def needs_reference_model(self) -> bool:
        return self.cfg.algorithm.beta > 0

    # ---- stage 1 and 2: rollouts, graded (dynamic sampling refills) -------------------------
    def _rollouts(self, n_prompts: int, clock: dict[str, float]) -> tuple[list[Group], GradingStats]:
        items = [self.items[i] for i in self.sampler.take(n_prompts)]
        t0 = time.perf_counter()
        groups = self.engine.generate(items, self.cfg.rollout.num_generations, self.sampling)
        t1 = time.perf_counter()
        grading = self.executor.score(groups)
        clock["generate"] += t1 - t0
        clock["grade"] += time.perf_counter() - t1
        return groups, grading

    def collect(self) -> tuple[list[Group], list[Group], GradingStats, dict[str, float]]:
        """(groups to train on, every group generated, grading counts, timings/counters)."""
        algo, wanted = self.cfg.algorithm, self.cfg.train.prompts_per_step
        info = {"generate": 0.0, "grade": 0.0, "refill_rounds": 0}
        groups, grading = self._rollouts(wanted, info)
        every, stats = list(groups), [grading]
        if algo.dynamic_sampling:
            groups = [g for g, keep in zip(groups, self._informative(groups)) if keep]
            while len(groups) < wanted and info["refill_rounds"] < algo.max_refill_rounds:
                more, grading = self._rollouts(wanted - len(groups), info)
                every += more
                stats.append(grading)
                groups += [g for g, keep in zip(more, self._informative(more)) if keep]
                info["refill_rounds"] += 1
            groups = groups[:wanted]
        return groups, every, merge_grading(stats), info

    def _informative(self, groups: list[Group]) -> list[bool]:
        return keep_informative_groups(self._shaped_rewards(groups, kl=False)).tolist() if groups else []

    # ---- rewards -> advantages ------------------------------------------------------------
    def _shaped_rewards(self, groups: list[Group], kl: bool = True) -> torch.Tensor:
        """[G, N] rewards the advantages see: the grader's, plus the overlong and KL penalties; NaN = failed."""
        algo = self.cfg.algorithm
        rewards = torch.tensor([[float("nan") if r is None else r for r in g.rewards] for g in groups], dtype=torch.float32)
        if algo.overlong_buffer:
            lengths = torch.tensor([[len(c.token_ids) for c in g.completions] for g in groups])
            rewards = rewards + algo.overlong_penalty * overlong_penalty(lengths, self.cfg.rollout.max_new_tokens, algo.overlong_buffer)
        if kl and algo.beta > 0 and algo.kl_in == "reward":
            rewards = rewards - algo.beta * self._sequence_kl(groups)
        return rewards

    def _sequence_kl(self, groups: list[Group]) -> torch.Tensor:
        """[G, N] summed per-token KL estimate of each completion against the reference, at sampling time."""
        cfg = self.cfg
        completions = [c for g in groups for c in g.completions]
        pairs = [(g.prompt_ids, c.token_ids) for g in groups for c in g.completions]
        ref = completion_logprobs(self.trainer.reference_logits, pairs, self.tokenizer.pad_token_id,
                                  cfg.train.micro_batch_size, cfg.rollout.temperature, self.trainer.device)
        estimator = KL_ESTIMATORS[cfg.algorithm.kl_estimator]
        kl = [float(estimator(c.old_logp, r).sum()) if c.token_ids else 0.0 for c, r in zip(completions, ref)]
        self._kl_sum, self._kl_tokens = sum(kl), sum(len(c.token_ids) for c in completions)
        return torch.tensor(kl).view(len(groups), -1)

    def _reference_logprobs(self, input_ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """[B, T-1] reference log-probs of logits / temperature, like the policy's in grpo_update: at
        temperature != 1 untempered ones would make the KL term non-zero while policy == reference."""
        logits = self.trainer.reference_logits(input_ids, attention)  # [B, T, V]
        temperature = self.cfg.rollout.temperature
        return token_logprobs(logits / temperature if temperature != 1.0 else logits, input_ids)

    def _store_old_logprobs(self, groups: list[Group]) -> None:
        """Log-probs of every completion under the policy as it sampled them, before any update of this batch."""
        cfg = self.cfg
        completions = [c for g in groups for c in g.completions]
        pairs = [(g.prompt_ids, c.token_ids) for g in groups for c in g.completions]
        logps = completion_logprobs(lambda ids, att: self.model(input_ids=ids, attention_mask=att, use_cache=False).logits,
                                    pairs, self.tokenizer.pad_token_id, cfg.train.micro_batch_size,
                                    cfg.rollout.temperature, self.trainer.device, model=self.model)  # no_grad inside
        for c, lp in zip(completions, logps):
            c.old_logp = lp

    # ---- one step --------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        from rftkit.train.loop import rollout_metrics

        cfg, algo = self.cfg, self.cfg.algorithm
        t0 = time.perf_counter()
        groups, every, grading, info = self.collect()  # Stages 1 and 2
        t_grade = time.perf_counter()
        kl_reward = algo.beta > 0 and algo.kl_in == "reward"
        if groups and (algo.updates_per_batch > 1 or kl_reward):
            self._store_old_logprobs(groups)
        rewards = self._shaped_rewards(groups) if groups else torch.zeros(0, cfg.rollout.num_generations)
        advantages = ADVANTAGES[algo.advantage](rewards) if groups else rewards  # [G, N]
        for g, row in zip(groups, advantages.tolist()):
            for c, a in zip(g.completions, row):
                c.advantage = a
        sums = {"pg_loss": 0.0, "kl": 0.0, "clipped": 0.0, "tokens": 0.0}
        grad_norms = []
        loss_beta = algo.beta if algo.kl_in == "loss" else 0.0
        for _ in range(algo.updates_per_batch if groups else 0):  # Stage 3
            part = grpo_update(self.model, groups, self.tokenizer.pad_token_id, cfg.train.micro_batch_size,
                               algo.epsilon, loss_beta, self._reference_logprobs, algo.loss_aggregation,
                               cfg.rollout.max_new_tokens, cfg.rollout.temperature, algo.epsilon_high, algo.kl_estimator)
            for key in sums:
                sums[key] += part[key]
            grad_norms.append(self.trainer.optimizer_step())
        t_end = time.perf_counter()
        for g in groups:  # old log-probs are one step's scratch
            for c in g.completions:
                c.old_logp = None
        self.groups = every
        n_tokens = sum(len(c.token_ids) for g in every for c in g.completions)
        passes = max(algo.updates_per_batch if groups else 1, 1)
        metrics = {
            **rollout_metrics(every, grading),
            "actor/entropy": self.engine.mean_entropy,  # of the sampling distribution, over the last round's tokens
            # with beta = 0 no reference is loaded, and a step that kept no group (dynamic sampling)
            # compared nothing with it: KL is not measured (null), not zero
            "actor/kl": float("nan") if algo.beta == 0 or not groups else (
                self._kl_sum / max(self._kl_tokens, 1) if kl_reward else sums["kl"] / max(sums["tokens"], 1.0)),
            "actor/pg_loss": sums["pg_loss"] / passes,
            "actor/clipfrac": sums["clipped"] / max(sums["tokens"], 1.0),
            "actor/grad_norm": grad_norms[-1] if grad_norms else 0.0,
            "actor/lr": self.lr(),
            "perf/time_per_step": t_end - t0,
            "perf/time_generate": info["generate"],
            "perf/time_grade": info["grade"],
            "perf/time_update": t_end - t_grade,
            "perf/tokens_per_s": n_tokens / max(info["generate"], 1e-9),
        }
        if algo.dynamic_sampling:
            metrics.update({"dynamic/groups_kept": len(groups), "dynamic/groups_generated": len(every),
                            "dynamic/refill_rounds": info["refill_rounds"]})
        if algo.overlong_buffer:
            metrics["critic/shaped_rewards/mean"] = float(torch.nanmean(rewards)) if groups else float("nan")
        return metrics


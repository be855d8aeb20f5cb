"""GRPO as a Stage. `GRPOStage.step` reads top to bottom: rollout -> grade -> shape rewards ->
advantages -> update -> metrics, each a named call returning a value.

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

`GeneratingStage` (data, engine, grader executor, pass@1 validation) is the part GRPO shares
with rejection sampling; it lives here so that one file holds the whole step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rftkit.agents import build_environment, run_episodes, with_episode_rewards
from rftkit.algorithms.grpo import (ADVANTAGES, KL_ESTIMATORS, keep_informative_groups, kl_reward_penalty,
                                   overlong_penalty, sequence_kl, turn_advantages)
from rftkit.algorithms.reasoning import linear_efficiency, rank_efficiency
from rftkit.distributed import AheadPipeline, RayEngine, RayGraderExecutor, WorkerRequest, connect
from rftkit.errors import UserError
from rftkit.graders import build_grader
from rftkit.graders.executor import GradingStats, ThreadGraderExecutor
from rftkit.metrics import env_metrics, evaluate_groups, reasoning_metrics, rollout_metrics
from rftkit.models.batching import pad_right
from rftkit.policy import LossSpec, Row
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.select import choose_engine
from rftkit.rollout.thinking import split_groups
from rftkit.rollout.hf import HFEngine
from rftkit.train.stages.base import Stage, StepResult
from rftkit.train.stages.replay import Replay
from rftkit.train.stages.sources import grader_spec, load_prompts, source_metrics
from rftkit.types import Group


@dataclass
class Rollouts:
    """Graded groups of one generation round (or several, merged), and what producing them took."""

    groups: list[Group]
    grading: GradingStats
    generate_s: float
    grade_s: float
    rounds: int = 1

    def __add__(self, other: Rollouts) -> Rollouts:
        return Rollouts(self.groups + other.groups, self.grading.merged(other.grading), self.generate_s + other.generate_s,
                        self.grade_s + other.grade_s, self.rounds + other.rounds)


class GeneratingStage(Stage):
    """Items + grader + engine: the data, rollouts and validation GRPO and rejection sampling share."""

    def prepare(self) -> None:
        cfg = self.cfg
        self.grader_spec = grader_spec(cfg)  # `grader`, or a mixture's per-source graders (train/stages/sources.py)
        grader = build_grader(self.grader_spec, "grader")  # config errors surface before any model loads
        self.prompts = load_prompts(cfg, grader)  # one file or a weighted mixture, every row checked
        self.items, self.val_items = self.prompts.items, self.prompts.val_items
        self.require_val()
        self.grader = grader
        self.environment = build_environment(cfg.environment) if cfg.environment else None  # multi-turn episodes
        self.ray = None
        # vLLM missing or unable to run the architecture: exit 2 here, before any model loads
        self.engine_kind = choose_engine(cfg.rollout.engine, cfg.model.path, cfg.model.device, cfg.runtime.backend)
        if cfg.reasoning.enabled and cfg.reasoning.budget_tokens and (self.engine_kind == "vllm" or cfg.runtime.backend == "ray"):
            raise UserError("reasoning.budget_tokens is enforced by rftkit's local engine only: set rollout.engine=hf and "
                            "runtime.backend=local, or unset the budget")
        if cfg.runtime.backend == "ray":  # Ray missing, an address nothing answers on, too few CPUs: exit 2 here
            rt = cfg.runtime
            self.ray = connect(rt.address, [WorkerRequest("rollout", rt.rollout_workers, rt.cpus_per_rollout_worker,
                                                          rt.gpus_per_rollout_worker),
                                            WorkerRequest("grader", rt.grader_workers, rt.cpus_per_grader_worker, 0.0),
                                            WorkerRequest("learner", rt.learners if rt.learners > 1 else 0,
                                                          rt.cpus_per_learner, rt.gpus_per_learner)],
                               rt.connect_timeout_s)

    def build(self, policy, tokenizer) -> None:
        super().build(policy, tokenizer)
        cfg = self.cfg
        if self.ray is not None:  # Ray actors behind the same two protocols (distributed/)
            rt, grading = cfg.runtime, cfg.grading
            self.engine = RayEngine(self.ray, policy.module, tokenizer, workers=rt.rollout_workers,
                                    batch_size=cfg.rollout.batch_size, cpus=rt.cpus_per_rollout_worker,
                                    gpus=rt.gpus_per_rollout_worker, seed=cfg.train.seed, timeout_s=rt.timeout_s,
                                    threads=cfg.train.threads, follow_driver_rng=not cfg.async_.max_off_policy_steps)
            self.engine.update_weights(policy, policy.version)
            self.executor = RayGraderExecutor(self.ray, self.grader_spec, workers=rt.grader_workers, timeout_s=grading.timeout_s,
                                              step_budget_s=grading.step_budget_s, threads=grading.workers,
                                              cpus=rt.cpus_per_grader_worker, wait_s=rt.timeout_s)
        else:
            if self.engine_kind == "vllm":  # weights reach vLLM in memory after each update (rollout/vllm.py)
                from rftkit.rollout.vllm import VLLMEngine

                r = cfg.rollout
                self.engine = VLLMEngine(getattr(self, "model_path", None) or cfg.model.path, tokenizer, cfg.model.dtype,
                                         cfg.train.seed, r.vllm_max_model_len, r.vllm_gpu_memory_utilization,
                                         r.vllm_kv_cache_gb, r.vllm_sleep,
                                         cfg.lora.model_dump() if cfg.lora.enabled else None)
                self.engine.update_weights(policy, policy.version)
            else:  # the local engine samples with the policy's own module; update_weights keeps its version in step
                self.engine = HFEngine(policy.module, tokenizer, batch_size=cfg.rollout.batch_size)
            self.executor = ThreadGraderExecutor(self.grader, cfg.grading.timeout_s, cfg.grading.step_budget_s,
                                                 cfg.grading.workers)
        self.sampler = self.prompts.sampler(cfg.train.seed, cfg.data.shuffle)  # by weight for a mixture
        r = cfg.reasoning  # a thinking budget: the engine closes the block at budget_tokens (rollout/budget.py)
        budget = r.budget_tokens if r.enabled else None
        close_ids = tuple(tokenizer.encode(r.close_tag, add_special_tokens=False)) if budget else ()
        self.sampling = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k, cfg.rollout.max_new_tokens,
                                       budget, close_ids)
        ahead = cfg.async_.max_off_policy_steps
        self.pipeline = (AheadPipeline(self.engine, self.executor, ahead, cfg.rollout.num_generations, self.sampling)
                         if ahead else None)
        self.waited_s = 0.0  # asynchronous runs: seconds the learner waited for rollouts this step
        # a grader marked `deferred: true` (slow rewards): the learner trains on batches as their rewards arrive
        self.deferred = self.pipeline is not None and isinstance(cfg.grader, dict) and bool(cfg.grader.get("deferred"))
        self.late_dropped, self.deferred_waiting = 0, 0

    def generate(self, items: list, n: int) -> list[Group]:
        """n completions per item: one answer each, or with an environment n multi-turn episodes (agents/)."""
        groups = (self.engine.generate(items, n, self.sampling) if self.environment is None
                  else run_episodes(self.engine, self.tokenizer, self.environment, items, n, self.sampling))
        return split_groups(groups, self.cfg.reasoning, self.tokenizer)  # reasoning models: graders see the answer

    def rollouts(self, n_prompts: int) -> Rollouts:
        """Stages 1 and 2: `rollout.num_generations` completions of the next `n_prompts` prompts, graded.
        Asynchronous runs take the oldest batch the rollout workers generated ahead (distributed/pipeline.py)."""
        t0 = time.perf_counter()
        if self.pipeline is not None and self.deferred:  # whatever rewards are in; the step never waits for them
            groups, scores, grading, dropped, self.deferred_waiting = self.pipeline.arrived(
                lambda: self.take(n_prompts), self.policy.version, self.cfg.runtime.timeout_s)
            self.late_dropped += dropped
            graded = [g.scored(s) for g, s in zip(groups, scores)]
            return Rollouts(graded, grading or GradingStats(0, 0, [], {}), time.perf_counter() - t0, 0.0)
        if self.pipeline is not None and n_prompts == self.cfg.train.prompts_per_step:
            _, groups, scores, grading, waited = self.pipeline.next(lambda: self.take(n_prompts))
            self.waited_s += waited
            graded = [g.scored(s) for g, s in zip(groups, scores)]
            return Rollouts(graded, grading, time.perf_counter() - t0, 0.0)  # its generation and grading overlapped
        groups = self.generate(self.take(n_prompts)[1], self.cfg.rollout.num_generations)
        t1 = time.perf_counter()
        scores, grading = self.executor.score(groups)
        graded = [g.scored(s) for g, s in zip(groups, with_episode_rewards(groups, scores))]
        return Rollouts(graded, grading, t1 - t0, time.perf_counter() - t1)

    def take(self, n_prompts: int) -> tuple[list[int], list]:
        indices = self.sampler.take(n_prompts)
        return indices, [self.items[i] for i in indices]

    def sync_engine(self) -> None:
        """After the policy changed: the engine samples with the new weights (a no-op copy for the local engine)."""
        self.engine.update_weights(self.policy, self.policy.version)

    def state(self) -> dict:
        state = {"sampler": self.sampler.state()}
        if self.pipeline is not None:  # prompts taken for batches still generating: submitted again on resume
            state["inflight"] = self.pipeline.inflight()
        return state

    def restore(self, state: dict) -> None:
        self.sampler.restore(state["sampler"])
        self.sync_engine()  # the policy was loaded from the checkpoint: its version, not 0, samples next
        if self.pipeline is not None:
            self.pipeline.pending.clear()
            for indices in state.get("inflight", []):
                self.pipeline.submit(indices, [self.items[i] for i in indices])

    def close(self) -> None:
        self.executor.close()
        if self.ray is not None:
            self.engine.close()
            if hasattr(self.policy, "close"):  # data-parallel learners
                self.policy.close()

    def runtime_metrics(self) -> dict[str, float]:
        """Ray workers restarted after their process died, so far in this run (none on the local backend)."""
        if self.ray is None:
            return {}
        return {"ray/rollout_worker_restarts": float(self.engine.restarts),
                "ray/grader_worker_restarts": float(self.executor.restarts)}

    def summary(self, metrics: dict[str, float]) -> str:
        return f"reward {metrics['critic/rewards/mean']:.3f}"

    def require_val(self) -> None:
        if not self.prompts.source_val:  # a mixture's sources may bring their own held-out files instead
            super().require_val()

    def validate(self) -> dict[str, float]:
        """val/pass@1 on data.val and, for a mixture's sources with a `val` file, val/NAME/pass@1 with their graders."""
        out = {}
        for prefix, items in [("val", self.val_items)] + [(f"val/{n}", v) for n, v in self.prompts.source_val.items()]:
            if not items:
                continue
            groups = self.generate(items, self.cfg.run.eval_samples)
            scores, _ = self.executor.score(groups)
            graded: list[Group] = [g.scored(s) for g, s in zip(groups, scores)]
            result = evaluate_groups(graded, k=self.cfg.run.eval_samples)
            out.update({f"{prefix}/reward_mean": result["reward_mean"], f"{prefix}/pass@1": result["pass@1"]})
        return out


def graded(c) -> bool:
    """Takes part in the loss: graded (a reward, not a failure) and not empty."""
    return c.score is not None and c.score.reward is not None and bool(c.token_ids)


class GRPOStage(GeneratingStage):
    @property
    def needs_reference_model(self) -> bool:
        return self.cfg.algorithm.beta > 0

    @property
    def kl_in_reward(self) -> bool:
        return self.cfg.algorithm.beta > 0 and self.cfg.algorithm.kl_in == "reward"

    def build(self, policy, tokenizer) -> None:
        super().build(policy, tokenizer)
        algo, rollout = self.cfg.algorithm, self.cfg.rollout
        self.loss_spec = LossSpec(epsilon=algo.epsilon, epsilon_high=algo.epsilon_high,
                                  beta=algo.beta if algo.kl_in == "loss" else 0.0, kl_estimator=algo.kl_estimator,
                                  aggregation=algo.loss_aggregation, temperature=rollout.temperature,
                                  max_new_tokens=rollout.max_new_tokens, is_cap=self.cfg.async_.is_cap)
        self.replay = Replay(self.cfg, tokenizer) if self.cfg.replay.path else None  # an older skill's SFT loss

    # ---- one step --------------------------------------------------------------------------
    def step(self, step: int) -> StepResult:
        algo, temperature = self.cfg.algorithm, self.cfg.rollout.temperature
        t0 = time.perf_counter()
        batch, every = self.collect()  # stages 1 and 2: rollout, grade (dynamic sampling refills)
        batch, stale = self.within_staleness(batch)  # asynchronous runs: groups more than k versions old are dropped
        t_update = time.perf_counter()
        rows = [Row(c.prompt_ids or g.prompt_ids, c.token_ids, loss_mask=c.mask(), behaviour_logp=self.behaviour(c))
                for g in batch for c in g.completions]
        old = self.policy.logprobs(rows, temperature) if rows and (algo.updates_per_batch > 1 or self.kl_in_reward) else None
        rewards, kl = self.shaped_rewards(batch, rows, old)  # [G, N]
        advantages = ADVANTAGES[algo.advantage](rewards) if batch else rewards  # [G, N]
        if algo.credit == "turn":  # multi-turn: each turn's tokens get their own advantage
            advantages = self.turn_credit(batch, rewards)  # [G, N, C]
        trained = self.update_rows(batch, rows, advantages, old)
        updates = [self.update(trained) for _ in range(algo.updates_per_batch if batch else 0)]
        self.sync_engine()
        t_end = time.perf_counter()
        n_tokens = sum(len(c.token_ids) for g in every.groups for c in g.completions)
        timing = {"perf/time_per_step": t_end - t0, "perf/time_update": t_end - t_update,
                  "perf/time_generate": every.generate_s, "perf/time_grade": every.grade_s,
                  # the update's parts: loss forward + backward, optimizer (clip, step, schedule)
                  "perf/time_backward": sum(u["time_backward"] for u in updates),
                  "perf/time_optimizer": sum(u["time_optimizer"] for u in updates),
                  "perf/tokens_per_s": n_tokens / max(every.generate_s, 1e-9)}
        metrics = {**rollout_metrics(every.groups, every.grading), **env_metrics(every.groups),
                   **self.update_metrics(updates, kl, bool(batch)),
                   **timing, **self.variant_metrics(batch, every, rewards), **self.runtime_metrics(),
                   **self.async_metrics(every.groups, stale, updates), **source_metrics(every.groups, self.prompts.names),
                   **(reasoning_metrics(every.groups) if self.cfg.reasoning.enabled else {})}
        return StepResult(metrics, every.groups, self.advantages_of(every.groups, batch, advantages))

    def state(self) -> dict:
        state = super().state()
        if self.replay is not None:
            state["replay_sampler"] = self.replay.sampler.state()
        return state

    def restore(self, state: dict) -> None:
        super().restore(state)
        if self.replay is not None and "replay_sampler" in state:
            self.replay.sampler.restore(state["replay_sampler"])

    def update(self, rows: list[Row]) -> dict[str, float]:
        """One optimizer step on the GRPO loss of `rows`, plus replay's SFT loss when `replay.path` is set."""
        if self.replay is None:
            return self.policy.update(rows, self.loss_spec)
        return self.policy.update(rows, self.loss_spec, extra=self.replay.loss)

    # ---- asynchronous training ---------------------------------------------------------------
    def within_staleness(self, groups: list[Group]) -> tuple[list[Group], int]:
        """(groups sampled at most k versions ago, how many were older): a bound, not a hope."""
        if self.pipeline is None:
            return groups, 0
        k, now = self.cfg.async_.max_off_policy_steps, self.policy.version
        kept = [g for g in groups if all(now - c.version <= k for c in g.completions)]
        return kept, len(groups) - len(kept)

    def behaviour(self, c) -> torch.Tensor | None:
        """The sampler's log-probs of a completion an asynchronous run or vLLM drew (the importance weights' denominator)."""
        if (self.pipeline is None and self.engine_kind != "vllm") or not c.logprobs or len(c.logprobs) != len(c.token_ids):
            return None
        return torch.tensor(c.logprobs, dtype=torch.float32)

    def async_metrics(self, groups: list[Group], stale: int, updates: list[dict]) -> dict[str, float]:
        if self.pipeline is None:  # vLLM: its kernels' log-probs vs the training forward's
            tokens = sum(u["tokens"] for u in updates)
            return ({"actor/mismatch_kl": sum(u.get("mismatch_kl", 0.0) for u in updates) / max(tokens, 1.0)}
                    if self.engine_kind == "vllm" else {})
        now = self.policy.version - len(updates)  # the version the batch was trained by (before this step's update)
        staleness = [now - c.version for g in groups for c in g.completions] or [0]
        tokens = sum(u["tokens"] for u in updates)
        idle, self.engine_idle = self.engine.idle_s - getattr(self, "engine_idle", 0.0), self.engine.idle_s
        waited, self.waited_s = self.waited_s, 0.0
        late, self.late_dropped = self.late_dropped, 0
        deferred = {"async/deferred_waiting_groups": float(self.deferred_waiting)} if self.deferred else {}
        return {"async/staleness_mean": sum(staleness) / len(staleness), "async/staleness_max": float(max(staleness)),
                "async/dropped_groups": float(stale + late), **deferred,
                "actor/mismatch_kl": sum(u.get("mismatch_kl", 0.0) for u in updates) / max(tokens, 1.0),
                "perf/learner_idle_s": waited, "perf/rollout_idle_s": idle}

    # ---- stages 1 and 2: rollouts, graded ---------------------------------------------------
    def collect(self) -> tuple[list[Group], Rollouts]:
        """(the groups to train on, every round generated): dynamic sampling keeps informative groups and refills."""
        algo, wanted = self.cfg.algorithm, self.cfg.train.prompts_per_step
        every = self.rollouts(wanted)
        if not algo.dynamic_sampling or self.deferred:  # deferred rewards: no refills, the step takes what arrived
            return every.groups, every
        batch = self.informative(every.groups)
        while len(batch) < wanted and every.rounds - 1 < algo.max_refill_rounds:
            more = self.rollouts(wanted - len(batch))
            every = every + more
            batch += self.informative(more.groups)
        return batch[:wanted], every

    def informative(self, groups: list[Group]) -> list[Group]:
        if not groups:
            return []
        keep = keep_informative_groups(self.shaped_rewards(groups)[0]).tolist()
        return [g for g, k in zip(groups, keep) if k]

    # ---- rewards -> advantages -> rows ------------------------------------------------------
    def shaped_rewards(self, groups: list[Group], rows: list[Row] | None = None,
                       old: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, float | None]:
        """([G, N] rewards the advantages see, the penalty's mean per-token KL or None): the grader's rewards
        plus the overlong penalty and, given the rows and their sampling-time log-probs, the KL reward
        penalty (the KL of each completion to the reference, summed over its tokens). NaN = failed."""
        algo, n = self.cfg.algorithm, self.cfg.rollout.num_generations
        rewards = torch.tensor([[float("nan") if r is None else r for r in g.rewards] for g in groups], dtype=torch.float32)
        if not groups:
            return torch.zeros(0, n), None
        if algo.overlong_buffer:
            lengths = torch.tensor([[c.model_tokens for c in g.completions] for g in groups])
            rewards = rewards + algo.overlong_penalty * overlong_penalty(lengths, self.cfg.rollout.max_new_tokens, algo.overlong_buffer)
        r = self.cfg.reasoning
        if r.enabled and r.efficiency != "none":  # shorter thinking among correct answers (algorithms/reasoning.py)
            thinking = torch.tensor([[c.thinking_tokens or 0 for c in g.completions] for g in groups])
            rewards = (linear_efficiency(rewards, thinking, r.budget_tokens or self.cfg.rollout.max_new_tokens, r.efficiency_alpha)
                       if r.efficiency == "linear" else rank_efficiency(rewards, thinking, r.efficiency_alpha))
        if rows is None or not self.kl_in_reward:
            return rewards, None
        ref = self.policy.reference_logprobs(rows, self.cfg.rollout.temperature)  # at sampling time, like `old`
        logp, ref_logp = (pad_right_float(x).view(len(groups), n, -1) for x in (old, ref))  # [G, N, C]
        mask = pad_right([[1] * len(r.completion_ids) for r in rows], 0).float().view(len(groups), n, -1)
        estimator = KL_ESTIMATORS[algo.kl_estimator]
        shaped = kl_reward_penalty(rewards, logp, ref_logp, mask, algo.beta, estimator)
        kl = sum(sequence_kl(logp, ref_logp, mask, estimator).flatten().tolist())
        return shaped, kl / max(sum(len(r.completion_ids) for r in rows), 1)

    def update_rows(self, groups: list[Group], rows: list[Row], advantages: torch.Tensor,
                    old: list[torch.Tensor] | None) -> list[Row]:
        """The rows the loss sees: graded, non-empty completions with their advantage and, when they were
        computed (mu > 1, KL reward penalty), the sampling-time log-probs the ratio is taken against."""
        flat = [c for g in groups for c in g.completions]
        values = advantages.flatten().tolist() if isinstance(advantages, torch.Tensor) else [a for g in advantages for a in g]
        return [Row(r.prompt_ids, r.completion_ids, values[i], r.loss_mask, old[i] if old is not None else None,
                    r.behaviour_logp) for i, (r, c) in enumerate(zip(rows, flat)) if graded(c)]

    # ---- metrics ----------------------------------------------------------------------------
    def update_metrics(self, updates: list[dict], kl: float | None, trained: bool) -> dict[str, float]:
        algo = self.cfg.algorithm
        sums = {key: sum(u[key] for u in updates) for key in ("pg_loss", "kl", "clipped", "tokens")}
        if algo.beta == 0 or not trained:
            # with beta = 0 no reference is loaded, and a step that kept no group (dynamic sampling)
            # compared nothing with it: KL is not measured (null), not zero
            mean_kl = float("nan")
        elif kl is not None:  # the reward penalty's KL, per completion token at sampling time
            mean_kl = kl
        else:
            mean_kl = sums["kl"] / max(sums["tokens"], 1.0)
        replay = ({"replay/loss": sum(u["replay/loss"] for u in updates) / len(updates)}
                  if self.replay is not None and updates else {})
        return {
            **replay,
            "actor/kl": mean_kl,
            "actor/pg_loss": sums["pg_loss"] / max(len(updates), 1),
            "actor/clipfrac": sums["clipped"] / max(sums["tokens"], 1.0),
            "actor/grad_norm": updates[-1]["grad_norm"] if updates else 0.0,
            "actor/lr": self.policy.lr,
        }

    def variant_metrics(self, batch: list[Group], every: Rollouts, rewards: torch.Tensor) -> dict[str, float]:
        algo, metrics = self.cfg.algorithm, {}
        if algo.dynamic_sampling:
            metrics.update({"dynamic/groups_kept": len(batch), "dynamic/groups_generated": len(every.groups),
                            "dynamic/refill_rounds": every.rounds - 1})
        if algo.overlong_buffer or (self.cfg.reasoning.enabled and self.cfg.reasoning.efficiency != "none"):
            metrics["critic/shaped_rewards/mean"] = float(torch.nanmean(rewards)) if batch else float("nan")
        return metrics

    def turn_credit(self, groups: list[Group], rewards: torch.Tensor) -> list[list[list[float]]]:
        """Per group, per trajectory, one advantage per completion token (`credit: turn`).

        A trajectory's turn rewards are its environment's (None = 0) with the shaped final reward
        added to its last turn; algorithms/grpo.py `turn_advantages` turns them into per-turn
        advantages, spread over each turn's tokens (observations get 0, and are masked anyway)."""
        out = []
        for g, finals in zip(groups, rewards.tolist()):
            per_turn = []
            for c, final in zip(g.completions, finals):
                turns = [0.0 if r is None else r for r in c.trajectory.turn_rewards] if c.trajectory else [0.0]
                turns = turns or [0.0]
                turns[-1] += final  # NaN (a failed grading) marks the whole trajectory
                per_turn.append(torch.tensor(turns, dtype=torch.float32))
            row = []
            for c, values in zip(g.completions, turn_advantages(per_turn, self.cfg.algorithm.gamma)):
                spans = c.trajectory.turn_spans if c.trajectory else [(0, len(c.token_ids))]
                tokens = [0.0] * len(c.token_ids)
                for (start, end), value in zip(spans, values.tolist()):
                    tokens[start:end] = [value] * (end - start)
                row.append(tokens)
            out.append(row)
        return out

    @staticmethod
    def advantages_of(every: list[Group], batch: list[Group], advantages) -> list[list[float]]:
        """Per generated group, its completions' advantages (0 for groups dynamic sampling dropped; with
        per-turn credit, the first turn's)."""
        if not isinstance(advantages, torch.Tensor):
            advantages = [[a[0] if a else 0.0 for a in row] for row in advantages]
        else:
            advantages = advantages.tolist()
        trained = {id(g): row for g, row in zip(batch, advantages)}
        return [trained.get(id(g), [0.0] * len(g.completions)) for g in every]


def pad_right_float(rows: list[torch.Tensor]) -> torch.Tensor:
    """[R, C] of 1-d float tensors right-padded with 0."""
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)

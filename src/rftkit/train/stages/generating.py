"""The part of a stage that samples and grades: Items, the grader, the engine, pass@1 validation."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rftkit.data.sampler import PromptSampler
from rftkit.graders import build_grader, check_grader_items
from rftkit.graders.executor import GradingStats, ThreadGraderExecutor
from rftkit.metrics import evaluate_groups
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine
from rftkit.train.stages.base import Stage
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
        injected = dict(self.grading.injected)
        for kind, n in other.grading.injected.items():
            injected[kind] = injected.get(kind, 0) + n
        grading = GradingStats(self.grading.errors + other.grading.errors, self.grading.timeouts + other.grading.timeouts,
                               self.grading.latencies + other.grading.latencies, injected)
        return Rollouts(self.groups + other.groups, grading, self.generate_s + other.generate_s,
                        self.grade_s + other.grade_s, self.rounds + other.rounds)


class GeneratingStage(Stage):
    """Items + grader + engine: the data, rollouts and validation GRPO and rejection sampling share."""

    def prepare(self) -> None:
        from rftkit.data import load_items

        cfg = self.cfg
        grader = build_grader(cfg.grader, "grader")  # config errors surface before any model loads
        self.items = load_items(cfg.data.train, grader.needs_reference, cfg.data.skip_bad_lines)
        check_grader_items(grader, self.items, "grader", cfg.data.train)
        self.val_items = load_items(cfg.data.val, grader.needs_reference, cfg.data.skip_bad_lines) if cfg.data.val else []
        self.require_val()
        self.grader = grader

    def build(self, policy, tokenizer) -> None:
        super().build(policy, tokenizer)
        cfg = self.cfg
        # the local engine samples with the policy's own module; update_weights keeps its version in step
        self.engine = HFEngine(policy.module, tokenizer, batch_size=cfg.rollout.batch_size)
        self.executor = ThreadGraderExecutor(self.grader, cfg.grading.timeout_s, cfg.grading.step_budget_s, cfg.grading.workers)
        self.sampler = PromptSampler(len(self.items), cfg.train.seed, cfg.data.shuffle)
        self.sampling = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k, cfg.rollout.max_new_tokens)

    def rollouts(self, n_prompts: int) -> Rollouts:
        """Stages 1 and 2: `rollout.num_generations` completions of the next `n_prompts` prompts, graded."""
        items = [self.items[i] for i in self.sampler.take(n_prompts)]
        t0 = time.perf_counter()
        groups = self.engine.generate(items, self.cfg.rollout.num_generations, self.sampling)
        t1 = time.perf_counter()
        scores, grading = self.executor.score(groups)
        graded = [g.scored(s) for g, s in zip(groups, scores)]
        return Rollouts(graded, grading, t1 - t0, time.perf_counter() - t1)

    def sync_engine(self) -> None:
        """After the policy changed: the engine samples with the new weights (a no-op copy for the local engine)."""
        self.engine.update_weights(self.policy, self.policy.version)

    def state(self) -> dict:
        return {"sampler": self.sampler.state()}

    def restore(self, state: dict) -> None:
        self.sampler.restore(state["sampler"])
        self.sync_engine()  # the policy was loaded from the checkpoint: its version, not 0, samples next

    def close(self) -> None:
        self.executor.close()

    def summary(self, metrics: dict[str, float]) -> str:
        return f"reward {metrics['critic/rewards/mean']:.3f}"

    def validate(self) -> dict[str, float]:
        groups = self.engine.generate(self.val_items, self.cfg.run.eval_samples, self.sampling)
        scores, _ = self.executor.score(groups)
        graded: list[Group] = [g.scored(s) for g, s in zip(groups, scores)]
        result = evaluate_groups(graded, k=self.cfg.run.eval_samples)
        return {"val/reward_mean": result["reward_mean"], "val/pass@1": result["pass@1"]}

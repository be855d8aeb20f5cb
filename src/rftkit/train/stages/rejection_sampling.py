"""Rejection sampling as a Stage: generate, keep what the grader passes, SFT on it; `rounds` times.

Also called expert iteration or iterative RFT (Kakao's Kanana-2 tool calling used it with
execution-verified answers). `train.steps` are split evenly between the rounds. A round
starts by sampling `rollout.num_generations` completions for each of
`rejection_sampling.prompts_per_round` prompts with the current model, grading them, and
keeping up to `max_per_prompt` distinct completions per prompt whose reward is at least
`threshold` and that ended on their own (a completion cut at max_new_tokens would teach
the model not to stop). The round's steps are SFT steps on the kept set
(`train.prompts_per_step` examples each). The kept set rides in checkpoints, so a resumed
run continues its round exactly.
"""

from __future__ import annotations

import math
import statistics
import time

from rftkit.algorithms.sft import sft_pairs_loss
from rftkit.train.stages.base import StepResult
from rftkit.train.stages.grpo import GeneratingStage
from rftkit.types import Group


def kept_completions(groups: list[Group], threshold: float, max_per_prompt: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of the completions to imitate: passed, finished, distinct, at most max_per_prompt per prompt."""
    kept = []
    for g in groups:
        seen: set[str] = set()
        for c in g.completions:
            reward = c.score.reward if c.score else None
            if reward is None or reward < threshold or c.finish_reason != "stop" or c.text in seen:
                continue
            seen.add(c.text)
            kept.append((c.prompt_ids or g.prompt_ids, c.token_ids))
            if len(seen) == max_per_prompt:
                break
    return kept


class RejectionSamplingStage(GeneratingStage):
    def build(self, policy, tokenizer) -> None:
        super().build(policy, tokenizer)
        self.kept: list[tuple[list[int], list[int]]] = []
        self.round, self.cursor = 0, 0
        # fixed at the run's start: extending train.steps on resume adds steps to the last round, not rounds
        self.steps_per_round = math.ceil(self.cfg.train.steps / self.cfg.rejection_sampling.rounds)

    def state(self) -> dict:
        return {**super().state(), "round": self.round, "cursor": self.cursor, "kept": self.kept,
                "steps_per_round": self.steps_per_round}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.round, self.cursor, self.steps_per_round = state["round"], state["cursor"], state["steps_per_round"]
        self.kept = [(list(p), list(c)) for p, c in state["kept"]]

    def summary(self, metrics: dict[str, float]) -> str:
        return f"round {self.round} kept {len(self.kept)} loss {metrics['train/loss']:.4f}"

    def _new_round(self) -> tuple[dict[str, float], list[Group]]:
        rs = self.cfg.rejection_sampling
        t0 = time.perf_counter()
        rollouts = self.rollouts(rs.prompts_per_round)
        groups, grading = rollouts.groups, rollouts.grading
        self.kept = kept_completions(groups, rs.threshold, rs.max_per_prompt)
        self.round += 1
        self.cursor = 0
        rewards = [r for g in groups for r in g.rewards if r is not None]
        solved = sum(any(r is not None and r >= rs.threshold for r in g.rewards) for g in groups)
        metrics = {"rs/round": self.round, "rs/kept": len(self.kept), "rs/prompts_solved": solved / len(groups),
                   "critic/rewards/mean": statistics.fmean(rewards) if rewards else float("nan"),
                   "grader/errors": grading.errors, "perf/time_generate": time.perf_counter() - t0}
        return metrics, groups

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        rounds_due = (step - 1) % self.steps_per_round == 0 and self.round < self.cfg.rejection_sampling.rounds
        metrics, groups = self._new_round() if rounds_due else ({}, [])
        if not self.kept:  # nothing passed this round: no update, the next round tries again
            return StepResult({**metrics, "train/loss": float("nan"), "actor/lr": self.policy.lr, **self.perf(t0, 0)}, groups)
        n = self.cfg.train.prompts_per_step
        batch = [self.kept[(self.cursor + i) % len(self.kept)] for i in range(n)]
        self.cursor = (self.cursor + n) % len(self.kept)
        sft = self.cfg.sft
        out = self.policy.update_with(lambda model: dict(zip(("train/loss", "train/tokens"), sft_pairs_loss(
            model, batch, self.cfg.train.micro_batch_size, sft.packing, sft.pack_length))))
        self.sync_engine()
        return StepResult({**metrics, "train/loss": out["train/loss"], "train/tokens": out["train/tokens"],
                           "actor/grad_norm": out["grad_norm"], "actor/lr": self.policy.lr,
                           **self.perf(t0, out["train/tokens"])}, groups)

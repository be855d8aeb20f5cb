"""The part of a stage that samples and grades: Items, the grader, the engine, pass@1 validation."""

from __future__ import annotations

import json

from rftkit.eval.passk import evaluate_groups
from rftkit.graders import build_grader, check_grader_items
from rftkit.graders.executor import GraderExecutor
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine
from rftkit.train.stages.base import Stage


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

    def build(self) -> None:
        from rftkit.train.loop import PromptSampler

        cfg = self.cfg
        self.engine = HFEngine(self.model, self.tokenizer, batch_size=cfg.rollout.batch_size)
        self.executor = GraderExecutor(self.grader, cfg.grading.timeout_s, cfg.grading.step_budget_s, cfg.grading.workers)
        self.sampler = PromptSampler(len(self.items), cfg.train.seed, cfg.data.shuffle)
        self.sampling = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k, cfg.rollout.max_new_tokens)

    def state(self) -> dict:
        return {"sampler": self.sampler.state()}

    def restore(self, state: dict) -> None:
        self.sampler.restore(state["sampler"])

    def close(self) -> None:
        self.executor.close()

    def summary(self, metrics: dict[str, float]) -> str:
        return f"reward {metrics['critic/rewards/mean']:.3f}"

    def validate(self) -> dict[str, float]:
        groups = self.engine.generate(self.val_items, self.cfg.run.eval_samples, self.sampling)
        self.executor.score(groups)
        result = evaluate_groups(groups, k=self.cfg.run.eval_samples)
        return {"val/reward_mean": result["reward_mean"], "val/pass@1": result["pass@1"]}

    def write_samples(self, step: int) -> None:
        with open(self.trainer.run_dir / "samples.jsonl", "a") as f:
            for g in self.groups[: self.cfg.run.samples_per_write]:
                for c in g.completions:
                    f.write(json.dumps({
                        "step": step, "item_id": g.item.id, "prompt": g.item.messages[-1]["content"],
                        "reference_answer": g.item.reference_answer, "completion": c.text,
                        "reward": c.score.reward if c.score else None, "advantage": round(c.advantage, 4),
                        "error": c.score.error if c.score else None, "finish_reason": c.finish_reason,
                    }) + "\n")

"""How an OpenAI-shaped job becomes an rftkit config (server/jobs.py job_overrides): every hyperparameter lands."""

from __future__ import annotations

import pytest

pytest.importorskip("sqlalchemy")

from rftkit.config import load_config  # noqa: E402
from rftkit.server.db import Job  # noqa: E402
from rftkit.server.jobs import BASE_LR, job_overrides  # noqa: E402
from tests.conftest import EXAMPLES  # noqa: E402

GRADER = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
          "reference": "{{item.reference_answer}}", "operation": "eq"}


def job(method: dict, hyper: dict | None = None, overrides: list[str] | None = None) -> Job:
    return Job(id="ftjob-x", model="bundled:tiny-arith", method=method, hyperparameters=hyper or {}, seed=7,
               config={"overrides": overrides or []}, run_dir="/tmp/rft-job-x")


def test_reinforcement_hyperparameters_map_onto_the_config(tmp_path):
    spec = {"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {
        "n_epochs": 2, "batch_size": 10, "learning_rate_multiplier": 0.5, "eval_interval": 3, "eval_samples": 2,
        "compute_multiplier": 0.5, "reasoning_effort": "high"}}}
    cfg = load_config(None, job_overrides(job(spec), str(EXAMPLES / "train.jsonl"), str(EXAMPLES / "val.jsonl"), 95))
    assert cfg.algorithm.name == "grpo" and cfg.train.prompts_per_step == 10
    assert cfg.train.steps == 19  # ceil(95 items * 2 epochs / 10 per step)
    assert cfg.train.lr == pytest.approx(BASE_LR["reinforcement"] * 0.5) and cfg.train.seed == 7
    assert cfg.rollout.num_generations == 4 and cfg.rollout.max_new_tokens == 96
    assert cfg.run.eval_interval == 3 and cfg.run.eval_samples == 2 and cfg.data.val.endswith("val.jsonl")


def test_supervised_defaults_and_the_rftkit_extension_wins():
    cfg = load_config(None, job_overrides(job({"type": "supervised"}, overrides=["train.steps=5", "train.lr=0.01"]),
                                          str(EXAMPLES.parent / "sft" / "train.jsonl"), None, 64))
    assert cfg.algorithm.name == "sft" and cfg.train.prompts_per_step == 32
    assert cfg.train.steps == 5 and cfg.train.lr == 0.01 and cfg.data.val is None  # the extension's overrides come last

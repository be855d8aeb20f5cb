"""How an OpenAI-shaped job becomes an rftkit config (server/jobs.py job_overrides): every hyperparameter lands."""

from __future__ import annotations

import pytest

pytest.importorskip("sqlalchemy")

from rftkit.config import load_config  # noqa: E402
from rftkit.server.db import Job  # noqa: E402
from rftkit.server.jobs import BASE_LR, config_overrides, job_overrides  # noqa: E402
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


def test_a_whole_rftkit_config_becomes_overrides_that_load():
    config = {"train": {"steps": 7, "lr": 0.001}, "rollout": {"num_generations": 4, "temperature": 0.8},
              "grader": {"type": "regex", "pattern": "ANSWER", "mode": "search"}, "algorithm": {"name": "grpo"}}
    pairs = config_overrides(config)
    assert "train.steps=7" in pairs and any(p.startswith("grader=") for p in pairs)
    cfg = load_config(None, job_overrides(job({"type": "reinforcement", "reinforcement": {"grader": GRADER}},
                                              overrides=pairs), str(EXAMPLES / "train.jsonl"), None, 100))
    assert cfg.train.steps == 7 and cfg.train.lr == 0.001 and cfg.rollout.num_generations == 4
    assert cfg.rollout.temperature == 0.8 and cfg.grader["type"] == "regex"  # the extension wins over the method's

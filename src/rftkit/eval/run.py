"""`rft eval run`: sample K answers per held-out item, grade them, report pass@1, pass@K, reward."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rftkit.agents import EnvironmentSpec, run_episodes, with_episode_rewards
from rftkit.data.loaders import load_source
from rftkit.metrics.calibration import calibration_summary
from rftkit.graders import build_grader, check_grader_items
from rftkit.graders.executor import ThreadGraderExecutor
from rftkit.metrics import env_metrics, evaluate_groups
from rftkit.metrics.passk import passed
from rftkit.models import load_model, load_tokenizer
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine
from rftkit.types import Group


def sample_and_grade(
    model: str,
    data: str,
    grader_spec: dict | str,
    samples: int,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 512,
    environment: EnvironmentSpec | None = None,
) -> list[Group]:
    """Every item of `data` with `samples` graded completions from `model` (seeded); with an `environment`,
    `samples` multi-turn episodes per item (agents/), graded on their last answer and conversation."""
    grader = build_grader(grader_spec, "--grader")  # spec errors before the model loads
    items = list(load_source(data, require_reference=grader.needs_reference))  # JSONL, parquet or a HF dataset
    check_grader_items(grader, items, "--grader", data)
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model)
    engine = HFEngine(load_model(model, device=device), tokenizer, batch_size=batch_size)
    sampling = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    if environment is None:
        groups = engine.generate(items, samples, sampling)
    else:
        groups = run_episodes(engine, tokenizer, environment, items, samples, sampling)
    executor = ThreadGraderExecutor(grader)
    try:
        scores, _ = executor.score(groups)
    finally:
        executor.close()
    return [g.scored(s) for g, s in zip(groups, with_episode_rewards(groups, scores))]


def token_cost(groups: list[Group]) -> dict[str, float]:
    """Completion tokens per sample and per correct sample (metrics/passk.py `passed`): what an answer costs."""
    completions = [c for g in groups for c in g.completions]
    tokens = sum(len(c.token_ids) for c in completions)
    correct = sum(passed(c.score) for c in completions)
    return {"completion_tokens_mean": tokens / len(completions) if completions else float("nan"),
            "tokens_per_correct": tokens / correct if correct else float("nan")}


def write_json(result: dict, out: str | Path | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


def run_eval(
    model: str,
    data: str,
    grader_spec: dict | str,
    samples: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 512,
    out: str | Path | None = None,
    environment: EnvironmentSpec | None = None,
) -> dict:
    """Evaluate `model` on `data`; optionally write the result JSON to `out`."""
    groups = sample_and_grade(model, data, grader_spec, samples, temperature, max_new_tokens, seed, device, batch_size,
                              environment)
    result = {**evaluate_groups(groups, k=samples), **env_metrics(groups),
              **calibration_summary([c.score for g in groups for c in g.completions]),  # a `calibration` grader: ECE
              **token_cost(groups),
              "model": str(model), "data": str(data), "samples": samples, "temperature": temperature, "seed": seed}
    write_json(result, out)
    return result

"""An on-policy thinking budget: at `budget_tokens` the engine inserts the close tag itself; the inserted
tokens get loss mask 0 (zero gradient), and the tokens sampled before them are the ones sampled without a
budget, with the same log-probs under the training forward."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from rftkit.algorithms.grpo import AGGREGATIONS, StepCounts, clipped_policy_loss
from rftkit.metrics import reasoning_metrics
from rftkit.models import load_model, load_tokenizer
from rftkit.models.packed import policy_logprobs
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine
from rftkit.rollout.thinking import split_groups
from rftkit.types import Item
from tests.conftest import EXAMPLES

CLOSE = "ANSWER:"  # the bundled model's "thinking" is its worked steps; its answer follows ANSWER:
BUDGET = 4  # every worked solution is longer than 4 tokens: every completion is cut


@pytest.fixture(scope="module")
def engine():
    tokenizer = load_tokenizer("bundled:tiny-arith")
    return HFEngine(load_model("bundled:tiny-arith"), tokenizer, batch_size=64)


def _items(n=6):
    rows = [json.loads(line) for line in (EXAMPLES / "val.jsonl").read_text().splitlines()[:n]]
    return [Item(id=r["id"], messages=r["messages"], reference_answer=r["reference_answer"]) for r in rows]


def _generate(engine, budget):
    close_ids = tuple(engine.tokenizer.encode(CLOSE, add_special_tokens=False))
    torch.manual_seed(0)
    return engine.generate(_items(), 4, SamplingParams(1.0, max_new_tokens=48, think_budget=budget,
                                                       close_ids=close_ids if budget else ())), list(close_ids)


def test_every_completion_cut_has_the_close_tag_inserted_and_masked(engine):
    groups, close = _generate(engine, BUDGET)
    for c in (c for g in groups for c in g.completions):
        assert c.token_ids[BUDGET : BUDGET + len(close)] == close
        assert c.loss_mask == [1] * BUDGET + [0] * len(close) + [1] * (len(c.token_ids) - BUDGET - len(close))
        assert c.model_tokens == len(c.token_ids) - len(close)  # inserted tokens are not the model's
    cfg = type("R", (), {"enabled": True, "open_tag": "<think>", "close_tag": CLOSE, "grade_thinking": False})()
    metrics = reasoning_metrics(split_groups(groups, cfg, engine.tokenizer))
    assert metrics["response/budget_hit_ratio"] == 1.0


def test_the_sampled_tokens_and_their_logprobs_are_those_without_a_budget(engine):
    cut, close = _generate(engine, BUDGET)
    free, _ = _generate(engine, None)
    prompts = [g.prompt_ids for g in cut for _ in g.completions]
    a = [c.token_ids for g in cut for c in g.completions]
    b = [c.token_ids for g in free for c in g.completions]
    assert [x[:BUDGET] for x in a] == [x[:BUDGET] for x in b]  # the budget changes nothing before it
    assert any(x[BUDGET : BUDGET + len(close)] != close for x in b)  # without it the model would have gone on
    with torch.no_grad():
        logp_cut, _ = policy_logprobs(engine.model, prompts, a, pad_id=engine.pad_id)
        logp_free, _ = policy_logprobs(engine.model, prompts, b, pad_id=engine.pad_id)
    torch.testing.assert_close(logp_cut[:, :BUDGET], logp_free[:, :BUDGET], rtol=0, atol=1e-6)


def test_the_inserted_tokens_get_no_gradient(engine):
    groups, close = _generate(engine, BUDGET)
    completions = [c for g in groups for c in g.completions]
    prompts = [g.prompt_ids for g in groups for _ in g.completions]
    logp, present = policy_logprobs(engine.model, prompts, [c.token_ids for c in completions], pad_id=engine.pad_id)
    logp = logp.detach().requires_grad_(True)
    width = logp.shape[1]
    mask = torch.tensor([c.mask() + [0] * (width - len(c.mask())) for c in completions], dtype=torch.float32) * present
    advantages = torch.linspace(-1, 1, len(completions))
    counts = StepCounts(tokens=float(mask.sum()), rows=float(len(completions)), max_new_tokens=48)
    loss = clipped_policy_loss(logp, logp.detach(), advantages, mask, 0.2,
                               partial(AGGREGATIONS["token_mean"], counts=counts)).loss
    (grad,) = torch.autograd.grad(loss, logp)
    inserted = torch.zeros_like(mask, dtype=torch.bool)
    inserted[:, BUDGET : BUDGET + len(close)] = True
    assert torch.all(grad[inserted] == 0)
    sampled = present.bool() & ~inserted
    assert torch.all(grad[sampled & (advantages[:, None] != 0).expand_as(sampled)] != 0)  # the sampled ones learn


@pytest.mark.slow
def test_a_grpo_step_with_a_small_budget_cuts_every_completion(tmp_path):
    from rftkit.config import load_config
    from rftkit.train.loop import Trainer

    cfg = load_config(EXAMPLES / "grpo.yaml", [
        "train.steps=1", "train.prompts_per_step=4", "rollout.num_generations=4", "train.micro_batch_size=16",
        "run.eval_interval=0", "run.checkpoint_interval=0", f"run.dir={tmp_path / 'run'}",
        "reasoning.enabled=true", f"reasoning.close_tag='{CLOSE}'", f"reasoning.budget_tokens={BUDGET}"])
    Trainer(cfg, quiet=True).train()
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["response/budget_hit_ratio"] == 1.0
    assert metrics["response/thinking_length_mean"] == BUDGET + len(
        load_tokenizer("bundled:tiny-arith").encode(CLOSE, add_special_tokens=False))

"""Keys and values kept between turns (rollout/turncache.py): the same episodes as prefilling every turn."""

from __future__ import annotations

import pytest
import torch

from rftkit import native
from rftkit.agents import build_environment, run_episodes
from rftkit.data import load_items
from rftkit.models import load_model, load_tokenizer
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine

from tests.conftest import REPO

TASK = REPO / "examples" / "tools"
pytestmark = pytest.mark.skipif(not native.available(), reason="the C kernel's cache layout (CI has a compiler)")


@pytest.fixture(scope="module")
def setup():
    tokenizer = load_tokenizer("bundled:tiny-tools")
    env = build_environment({"type": "tools", "tools": str(TASK / "tools.py"), "max_turns": 5, "max_length": 256})
    return tokenizer, env, load_items(TASK / "test.jsonl")[:24]


def episodes(setup, reuse: bool, temperature: float):
    tokenizer, env, items = setup
    engine = HFEngine(load_model("bundled:tiny-tools"), tokenizer)
    if not reuse:  # the rollout asks for reuse; this engine declines, so every turn prefills its whole context
        original = engine.generate_from_ids
        engine.generate_from_ids = lambda prompts, sampling, reuse=False: original(prompts, sampling, reuse=False)
    torch.manual_seed(0)
    groups = run_episodes(engine, tokenizer, env, items, 2, SamplingParams(temperature=temperature, max_new_tokens=48))
    return [c for g in groups for c in g.completions], engine


def test_greedy_episodes_are_the_same_with_and_without_kept_keys(setup):
    cached, engine = episodes(setup, True, 0.0)
    fresh, _ = episodes(setup, False, 0.0)
    assert [c.token_ids for c in cached] == [c.token_ids for c in fresh]
    assert sum(c.trajectory.counts["turns"] for c in cached) > len(cached)  # several turns: the cache was used


def test_sampled_episodes_match_too(setup):
    cached, _ = episodes(setup, True, 1.0)
    fresh, _ = episodes(setup, False, 1.0)
    same = sum(a.token_ids == b.token_ids for a, b in zip(cached, fresh))
    assert same >= 0.9 * len(cached), f"{same}/{len(cached)} episodes identical"  # float rounding may flip a rare token


def test_update_weights_forgets_the_kept_keys(setup):
    tokenizer, env, items = setup
    engine = HFEngine(load_model("bundled:tiny-tools"), tokenizer)
    prompt = [tokenizer.eos_token_id] + tokenizer("What is 1 * 2?", add_special_tokens=False).input_ids
    engine.generate_from_ids([prompt, prompt[:-1]], SamplingParams(temperature=0.0, max_new_tokens=8), reuse=True)
    assert engine.turns.entries
    engine.update_weights(engine.model.state_dict(), 1)
    assert not engine.turns.entries


def test_only_continued_rows_are_copied_and_ended_episodes_are_forgotten(setup):
    tokenizer, _, _ = setup
    engine = HFEngine(load_model("bundled:tiny-tools"), tokenizer)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    a = [tokenizer.eos_token_id] + tokenizer("What is 1 * 2?", add_special_tokens=False).input_ids
    b = [tokenizer.eos_token_id] + tokenizer("Look up the capital.", add_special_tokens=False).input_ids
    first = engine.generate_from_ids([a, b], greedy, reuse=True)
    assert len(engine.turns.entries) == 2
    continued = a + first[0].token_ids + a[1:3]  # row a goes on, b's episode has ended
    assert engine.turns.find(continued) > len(a)  # its turn's keys are there to start from
    fresh = HFEngine(load_model("bundled:tiny-tools"), tokenizer).generate_from_ids([continued], greedy)
    again = engine.generate_from_ids([continued], greedy, reuse=True)
    assert again[0].token_ids == fresh[0].token_ids  # prefilled from a's kept keys: the same turn
    assert all(key[: len(a)] == tuple(a) for key in engine.turns.entries)  # b's (it held the first call's cache) is gone

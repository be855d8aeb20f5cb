"""Black-box agents with the official openai client: batched requests, exact tokens, limits, failures, training."""

from __future__ import annotations

import re
import textwrap

import pytest
import torch

from rftkit.agents import build_environment, run_episodes
from rftkit.errors import ConfigError
from rftkit.models import load_model, load_tokenizer
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine
from rftkit.types import Item

from tests.conftest import BUNDLED, EXAMPLES, REPO

pytest.importorskip("openai")  # the test extra installs it: in CI this never skips

CHAT = '''
async def run(client, item):
    messages = list(item["messages"])
    for follow_up in item["follow_ups"]:
        reply = await client.chat.completions.create(model="policy", messages=messages)
        messages.append(reply.choices[0].message.model_dump(exclude_none=True))
        messages.append({"role": "user", "content": follow_up})
    reply = await client.chat.completions.create(model="policy", messages=messages)
    return REWARD
'''


def agent_file(tmp_path, body=CHAT, reward="None"):
    path = tmp_path / "agent.py"
    path.write_text(textwrap.dedent(body).replace("REWARD", reward))
    return path


def items(n=2):
    return [Item(id=f"q{i}", messages=[{"role": "user", "content": f"What is {i + 10} + 5 - 3?"}],
                 reference_answer=str(i + 12), metadata={"follow_ups": ["What is 31 + 4 - 8?", "What is 5 - 6 + 70?"]})
            for i in range(n)]


@pytest.fixture(scope="module")
def bundled():
    torch.manual_seed(0)
    return load_model(str(BUNDLED)), load_tokenizer(str(BUNDLED))


def logprob_check(model, tokenizer, episodes, temperature):
    """The training forward (in float64, so rounding cannot hide an off-by-one) against the sampling-time log-probs."""
    from rftkit.models.packed import policy_logprobs

    logp, _ = policy_logprobs(model, [c.prompt_ids for c in episodes], [c.token_ids for c in episodes], temperature,
                              tokenizer.pad_token_id)
    worst = 0.0
    for i, c in enumerate(episodes):
        mask = torch.tensor(c.loss_mask, dtype=torch.bool)
        got, want = logp[i, : len(c.token_ids)][mask].detach(), torch.tensor(c.logprobs, dtype=logp.dtype)[mask]
        worst = max(worst, float((got - want).abs().max()))
    return worst


def test_requests_are_batched_and_stitched_token_for_token(tmp_path, bundled):
    _, tokenizer = bundled
    model = load_model(str(BUNDLED)).double()
    env = build_environment({"type": "agent", "entry": f"{agent_file(tmp_path)}:run", "max_turns": 5})
    engine = HFEngine(model, tokenizer, return_logprobs=True)
    groups = run_episodes(engine, tokenizer, env, items(2), 3, SamplingParams(temperature=0.8, max_new_tokens=40))
    episodes = [c for g in groups for c in g.completions]
    assert len(episodes) == 6
    for c in episodes:
        assert c.finish_reason == "stop", c.trajectory.errors
        assert c.trajectory.counts["turns"] == 3 and c.trajectory.counts["agent_resets"] == 0
        assert [m["role"] for m in c.trajectory.messages] == ["assistant", "user", "assistant", "user", "assistant"]
        assert c.model_tokens < len(c.token_ids)  # the follow-ups are inside, masked
    assert logprob_check(model, tokenizer, episodes, 0.8) <= 1e-8
    text = tokenizer.decode(episodes[0].prompt_ids + episodes[0].token_ids)
    assert text.count("<|im_start|>assistant") == 3 and "What is 31 + 4 - 8?" in text
    assert env.limits.batch_window_s > 0


def test_a_reward_from_the_agent_replaces_the_graders(tmp_path, bundled):
    from rftkit.agents import with_episode_rewards
    from rftkit.types import Score

    model, tokenizer = bundled
    env = build_environment({"type": "agent", "entry": f"{agent_file(tmp_path, reward='0.25')}:run"})
    groups = run_episodes(HFEngine(model, tokenizer), tokenizer, env, items(1), 2, SamplingParams(max_new_tokens=40))
    scores = with_episode_rewards(groups, [[Score(reward=1.0)] * 2])
    assert [s.reward for s in scores[0]] == [0.25, 0.25]


@pytest.mark.parametrize("body, options, finish, error", [
    ("async def run(client, item):\n    raise RuntimeError('agent bug')\n", {}, "agent_error", "RuntimeError: agent bug"),
    ("import asyncio\nasync def run(client, item):\n    await asyncio.sleep(30)\n", {"episode_timeout_s": 0.5},
     "deadline", "did not finish within 0.5s"),
    (CHAT, {"max_turns": 2}, "max_turns", "max_turns (2) reached"),
    ("async def run(client, item):\n    return 'great'\n", {}, "agent_error", "run returned str"),
])
def test_agent_failures_end_the_episode_only(tmp_path, bundled, body, options, finish, error):
    model, tokenizer = bundled
    env = build_environment({"type": "agent", "entry": f"{agent_file(tmp_path, body)}:run", **options})
    groups = run_episodes(HFEngine(model, tokenizer), tokenizer, env, items(1), 2, SamplingParams(max_new_tokens=40))
    for c in groups[0].completions:
        assert c.finish_reason == finish and any(error in e for e in c.trajectory.errors), c.trajectory.errors


@pytest.mark.parametrize("body, message", [
    ("def run(client, item):\n    return 1\n", "must be `async def run(client, item)`"),
    ("async def go(client, item):\n    return 1\n", "has no 'run'"),
    ("async def run(client, item:\n", "line 1: syntax error"),
])
def test_entry_errors_are_config_errors(tmp_path, body, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_environment({"type": "agent", "entry": f"{agent_file(tmp_path, body)}:run"})


@pytest.mark.slow
def test_the_example_agent_trains_end_to_end(tmp_path):
    """examples/agent: GRPO with the openai-client agent, 3 steps: parameters change, episodes were graded."""
    from rftkit.config import load_config
    from rftkit.train.loop import Trainer
    from rftkit.train.sinks import read_jsonl

    cfg = load_config(REPO / "examples" / "agent" / "grpo.yaml", [
        f"run.dir={tmp_path / 'run'}", "train.steps=3", "train.prompts_per_step=4", "rollout.num_generations=4",
        "train.micro_batch_size=16", "run.eval_interval=0", "train.lr=1e-3"])
    trainer = Trainer(cfg, quiet=True)
    final = trainer.train()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 3 and all(r["env/turns_mean"] >= 1 for r in rows)
    assert all(r["grader/errors"] == 0 and r["env/agent_errors"] == 0 for r in rows), rows
    before = load_model(str(BUNDLED)).state_dict()
    after = load_model(str(final)).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), f"{len(before) - len(changed)} tensors did not change"
    assert EXAMPLES.exists()

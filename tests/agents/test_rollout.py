"""Multi-turn rollouts: batching across episodes, exact token bookkeeping, limits, and log-prob agreement."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoTokenizer

from rftkit.agents import build_environment, run_episodes
from rftkit.models.chat import TOOLS_CHAT_TEMPLATE, conversation_ids, observation_ids
from rftkit.rollout.base import SamplingParams
from rftkit.types import Item

from tests.agents.conftest import ScriptedEngine, call


@pytest.fixture(scope="module")
def tokenizer(toy_model_dir):
    tok = AutoTokenizer.from_pretrained(toy_model_dir)
    tok.chat_template = TOOLS_CHAT_TEMPLATE
    return tok


def items(n):
    return [Item(id=f"q{i}", messages=[{"role": "user", "content": f"What is {i} * 37?"}]) for i in range(n)]


def tools_env(tools_file, **limits):
    return build_environment({"type": "tools", "tools": str(tools_file), "tool_timeout_s": 2.0, **limits})


def by_turn(tokenizer, texts_per_turn):
    """A script answering turn k (counted by the assistant headers in the context) with texts_per_turn[k]."""
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids

    def script(ids):
        turns = sum(ids[i : i + len(header)] == header for i in range(len(ids)))
        return texts_per_turn[min(turns - 1, len(texts_per_turn) - 1)]
    return script


def test_a_two_call_episode_token_by_token(tokenizer, tools_file):
    env = tools_env(tools_file)
    script = by_turn(tokenizer, [call("lookup", name="zorb"), call("calculator", expression="4821 * 37"), "ANSWER: 178377"])
    engine = ScriptedEngine(tokenizer, script)
    [group] = run_episodes(engine, tokenizer, env, items(1), 1, SamplingParams(max_new_tokens=200))
    c = group.completions[0]
    assert c.finish_reason == "stop" and c.text == "ANSWER: 178377"
    assert c.trajectory.counts["turns"] == 3 and c.trajectory.counts["tool_calls"] == 2
    assert [m["role"] for m in c.trajectory.messages] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert [m["content"] for m in c.trajectory.messages if m["role"] == "tool"] == ["4821", "178377"]
    # the ids are the turns as generated and the observations as the template writes them, nothing re-tokenised
    tools = env.new().tools(group.item)
    eos = tokenizer.eos_token_id
    turn = lambda text: tokenizer(text, add_special_tokens=False).input_ids + [eos]  # noqa: E731
    obs = lambda content, k: observation_ids(tokenizer, [{"role": "tool", "tool_call_id": f"call_{k}-0", "content": content}], tools)  # noqa: E731
    expected = (turn(call("lookup", name="zorb")) + obs("4821", 0) + turn(call("calculator", expression="4821 * 37"))
                + obs("178377", 1) + turn("ANSWER: 178377"))
    assert c.token_ids == expected
    assert group.prompt_ids == conversation_ids(tokenizer, group.item.messages, tools)
    # loss mask: 1 exactly on the turns' ids
    spans = c.trajectory.turn_spans
    assert [c.loss_mask[s:e] for s, e in spans] == [[1] * (e - s) for s, e in spans]
    assert sum(c.loss_mask) == sum(e - s for s, e in spans) == c.model_tokens < len(c.token_ids)
    # the full text reads as one conversation in the template
    text = tokenizer.decode(group.prompt_ids + c.token_ids)
    assert "<|im_start|>tool\n4821<|im_end|>\n<|im_start|>assistant\n" in text


def test_all_live_episodes_share_one_batch_per_turn(tokenizer, tools_file):
    env = tools_env(tools_file)
    k = {"n": 0}

    def script(ids):  # half the episodes answer at once, the rest after one tool call
        k["n"] += 1
        header = tokenizer("<|im_start|>tool", add_special_tokens=False).input_ids
        after_tool = any(ids[i : i + len(header)] == header for i in range(len(ids)))
        first_digit = tokenizer.decode(ids).split("What is ")[1][0]
        return "ANSWER: 1" if after_tool or int(first_digit) % 2 else call("calculator", expression="1+1")

    engine = ScriptedEngine(tokenizer, script)
    groups = run_episodes(engine, tokenizer, env, items(8), 4, SamplingParams(max_new_tokens=200))
    assert engine.batches == [32, 16]  # 32 episodes in turn 1, the 16 still calling tools in turn 2
    assert sum(c.trajectory.counts["tool_calls"] for g in groups for c in g.completions) == 16


def test_tool_calls_of_different_episodes_run_concurrently(tokenizer, tools_file, tmp_path):
    slow = tmp_path / "slow.py"
    slow.write_text("import time\n\ndef wait() -> str:\n    '''Sleeps.'''\n    time.sleep(1.0)\n    return 'ok'\n")
    env = build_environment({"type": "tools", "tools": str(slow), "workers": 4})
    script = by_turn(tokenizer, [call("wait"), "ANSWER: 1"])
    t0 = time.monotonic()
    run_episodes(ScriptedEngine(tokenizer, script), tokenizer, env, items(4), 1, SamplingParams(max_new_tokens=200))
    assert time.monotonic() - t0 < 3.0  # 4 one-second calls one after another would take 4 s


@pytest.mark.parametrize("limits, script, reason", [
    ({"max_turns": 2}, [call("lookup", name="zorb")], "max_turns"),
    ({"max_length": 40}, [call("calculator", expression="1 + 1 + 1 + 1 + 1 + 1")], "max_length"),
    ({}, ["3" * 300], "length"),
])
def test_limits_cut_and_count(tokenizer, tools_file, limits, script, reason):
    env = tools_env(tools_file, **limits)
    [group] = run_episodes(ScriptedEngine(tokenizer, by_turn(tokenizer, script)), tokenizer, env, items(1), 1,
                           SamplingParams(max_new_tokens=200))
    c = group.completions[0]
    assert c.finish_reason == reason and c.trajectory.counts["truncated"] == 1
    assert len(c.token_ids) <= env.limits.max_length


def test_episode_deadline(tokenizer, tmp_path):
    slow = tmp_path / "slow.py"
    slow.write_text("import time\n\ndef wait() -> str:\n    '''Sleeps.'''\n    time.sleep(0.6)\n    return 'ok'\n")
    env = build_environment({"type": "tools", "tools": str(slow), "episode_timeout_s": 1.0, "max_turns": 10,
                             "max_length": 5000})
    t0 = time.monotonic()
    [group] = run_episodes(ScriptedEngine(tokenizer, by_turn(tokenizer, [call("wait")])), tokenizer, env, items(1), 1,
                           SamplingParams(max_new_tokens=200))
    assert group.completions[0].finish_reason == "deadline" and time.monotonic() - t0 < 3.0


def test_user_simulator_scripted(tokenizer):
    env = build_environment({"type": "user_simulator", "script_field": "user_turns", "max_turns": 5})
    item = Item(id="u", messages=[{"role": "user", "content": "Hi"}],
                metadata={"user_turns": ["Tell me more.", "Thanks [DONE]"]})
    [group] = run_episodes(ScriptedEngine(tokenizer, lambda ids: "Sure."), tokenizer, env, [item], 2,
                           SamplingParams(max_new_tokens=16))
    for c in group.completions:
        assert [m["role"] for m in c.trajectory.messages] == ["assistant", "user", "assistant"]
        assert c.trajectory.messages[1]["content"] == "Tell me more." and c.finish_reason == "stop"


def test_sampling_logprobs_equal_training_logprobs_and_observations_get_no_gradient():
    """The training forward over a multi-turn trajectory gives the log-probs its tokens were sampled with."""
    from rftkit.algorithms.grpo import AGGREGATIONS, StepCounts, clipped_policy_loss
    from rftkit.models import load_model, load_tokenizer
    from rftkit.models.packed import policy_logprobs
    from rftkit.rollout.hf import HFEngine

    torch.manual_seed(0)
    # trained: it ends its turns, so episodes reach several turns; float64, so rounding cannot hide an off-by-one
    # (in float32 the two forwards differ by up to ~2e-5 on unlikely tokens, from the kernels' summation order)
    model = load_model("bundled:tiny-arith").double()
    tokenizer = load_tokenizer("bundled:tiny-arith")
    tokenizer.chat_template = TOOLS_CHAT_TEMPLATE
    engine = HFEngine(model, tokenizer, return_logprobs=True)
    env = build_environment({"type": "user_simulator", "script_field": "user_turns", "max_turns": 3,
                             "max_length": 200})
    item = Item(id="u", messages=[{"role": "user", "content": "What is 12 + 5 - 3?"}],
                metadata={"user_turns": ["What is 31 + 4 - 8?", "What is 5 - 6 + 70?"]})
    [group] = run_episodes(engine, tokenizer, env, [item], 3, SamplingParams(temperature=0.8, max_new_tokens=40))
    rows = group.completions
    assert all(c.trajectory.counts["turns"] >= 2 for c in rows), [c.finish_reason for c in rows]
    logp, present = policy_logprobs(model, [group.prompt_ids] * len(rows), [c.token_ids for c in rows], 0.8,
                                    tokenizer.pad_token_id)
    for i, c in enumerate(rows):
        sampled = torch.tensor(c.logprobs)
        mask = torch.tensor(c.loss_mask, dtype=torch.bool)
        assert mask.sum() < len(c.token_ids)  # observations are inside
        assert torch.allclose(logp[i, : len(c.token_ids)][mask].detach(), sampled.to(logp.dtype)[mask], atol=1e-8)
    # the loss's gradient reaches the sampled tokens' log-probs only
    leaf = logp.detach().requires_grad_(True)
    from rftkit.models.batching import pad_right

    mask = present * pad_right([c.loss_mask for c in rows], 0).to(present)
    counts = StepCounts(tokens=float(mask.sum()), rows=float(len(rows)), max_new_tokens=40)
    aggregate = lambda v, m: AGGREGATIONS["token_mean"](v, m, counts=counts)  # noqa: E731
    loss = clipped_policy_loss(leaf, leaf.detach(), torch.tensor([1.0, -0.5, 0.25]), mask, 0.2, aggregate).loss
    (grad,) = torch.autograd.grad(loss, leaf)
    assert (grad[mask == 0] == 0).all() and (grad[mask == 1] != 0).all()

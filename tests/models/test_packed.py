"""The shared-prefix training forward computes what the padded forward computes: log-probs and gradients."""

import random

import pytest
import torch
from torch.testing import assert_close

from rftkit.algorithms.common import pack_prompt_completion, token_logprobs
from rftkit.algorithms.grpo_update import grpo_update
from rftkit.algorithms.shared_prefix import Layout, completion_logprobs, usable
from rftkit.models import apply_lora, load_model
from rftkit.types import Completion, Group, Item, Score


def _qwen2(vocab: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg)  # q/k/v biases and grouped-query attention


def _model(arch: str, toy_model_dir):
    if arch == "qwen2":
        return _qwen2(300).train()
    model = load_model(str(toy_model_dir))
    if arch == "llama-lora":
        model = apply_lora(model, 4, 8.0, 0.0, "all-linear")
        with torch.no_grad():  # a fresh adapter is zero: make it matter
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    return model.train()


def _batch(seed: int = 0, groups: int = 3, per_group: int = 4):
    """Prompts of different lengths, each repeated per_group times, completions from 1 token to 17."""
    rng = random.Random(seed)
    prompts, completions = [], []
    for _ in range(groups):
        prompt = [rng.randrange(3, 300) for _ in range(rng.randint(3, 9))]
        for _ in range(per_group):
            prompts.append(prompt)
            completions.append([rng.randrange(3, 300) for _ in range(rng.choice([1, 2, 6, 17]))])
    return prompts, completions


def _padded_logprobs(model, prompts, completions, temperature=1.0):
    ids, attention, mask = pack_prompt_completion(prompts, completions, 0)
    logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
    return token_logprobs(logits / temperature, ids)[mask.bool()]  # [sum of completion lengths]


def _relative_difference(grads, reference) -> float:
    """|grads - reference| / |reference| over all parameters together."""
    diff = sum(((a - b) ** 2).sum() for a, b in zip(grads, reference)) ** 0.5
    return float(diff / sum((b**2).sum() for b in reference) ** 0.5)


def _grads(model):
    out = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("arch", ["llama", "llama-lora", "qwen2"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prefix_logprobs_and_gradients_equal_the_padded_forward(toy_model_dir, arch, temperature):
    model = _model(arch, toy_model_dir)
    assert usable(model)
    prompts, completions = _batch()
    expected = _padded_logprobs(model, prompts, completions, temperature)
    logp, mask = completion_logprobs(model, prompts, completions, temperature)
    assert logp.shape == mask.shape == (len(completions), max(len(c) for c in completions))
    assert mask.sum(-1).tolist() == [len(c) for c in completions]
    got = logp[mask.bool()]
    assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (logp[~mask.bool()] == 0).all()
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    (expected * weights).sum().backward()
    padded = _grads(model)
    (got * weights).sum().backward()
    shared = _grads(model)
    assert any(g.abs().sum() > 0 for g in padded)
    # the prompts' gradient is summed over the rows that share them; only the summation order differs
    assert _relative_difference(shared, padded) < 1e-5


def test_layout_forwards_each_prompt_once_and_no_completion_padding():
    prompts, completions = _batch(groups=3, per_group=4)
    at = Layout(prompts, completions, "cpu")
    assert at.prompt_ids.shape[0] == 3  # 12 rows, 3 distinct prompts
    assert at.group.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert at.flat_ids.shape[0] == sum(len(c) - 1 for c in completions)  # the last token is never an input
    row, col = at.flat_row.tolist(), at.flat_col.tolist()
    assert [completions[r][j] for r, j in zip(row, col)] == at.flat_ids.tolist()
    assert at.flat_pos.tolist() == [len(prompts[r]) + j for r, j in zip(row, col)]
    # a completion query sees its own prompt's real tokens and its own earlier tokens, nothing else
    first = at.completion_attn[0, 0]  # row 0, [L, P + L]
    width = at.prompt_ids.shape[1]
    assert first[0, :width].sum() == len(prompts[0]) and first[0, width] and not first[0, width + 1]


def test_a_single_token_completion_batch_has_no_flat_tokens(toy_model_dir):
    model = _model("llama", toy_model_dir)
    prompts, completions = [[5, 6, 7], [5, 6, 7], [9, 8]], [[11], [12], [13]]
    logp, mask = completion_logprobs(model, prompts, completions)
    assert_close(logp[mask.bool()], _padded_logprobs(model, prompts, completions), atol=1e-5, rtol=1e-5)


def _groups(prompts, completions, per_group, advantages):
    out = []
    for g in range(0, len(prompts), per_group):
        comps = [Completion("", c, [0.0] * len(c), "stop", score=Score(1.0), advantage=a)
                 for c, a in zip(completions[g:g + per_group], advantages[g:g + per_group])]
        out.append(Group(Item(f"q{g}", [{"role": "user", "content": "?"}]), prompts[g], comps))
    return out


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant"])
def test_grpo_update_gradient_is_the_same_with_and_without_the_shared_prefix(toy_model_dir, aggregation):
    model = _model("llama", toy_model_dir)
    prompts, completions = _batch(seed=3)
    advantages = [random.Random(i).uniform(-1, 1) for i in range(len(prompts))]
    advantages[4:8] = [0.0] * 4  # a group with no spread is skipped by both paths
    groups = _groups(prompts, completions, 4, advantages)
    results = {}
    for shared in (False, True):
        sums = grpo_update(model, groups, 0, 5, 0.2, aggregation=aggregation, max_new_tokens=17, shared_prefix=shared)
        results[shared] = (_grads(model), sums)
    (plain, plain_sums), (fast, fast_sums) = results[False], results[True]
    assert _relative_difference(fast, plain) < 1e-5
    assert fast_sums["pg_loss"] == pytest.approx(plain_sums["pg_loss"], abs=1e-5)
    assert fast_sums["tokens"] == plain_sums["tokens"] and fast_sums["rows"] == plain_sums["rows"] == 8

"""The shared-prefix training forward (models/packed.py) computes what the padded forward computes: log-probs and gradients."""

import random

import pytest
import torch
from torch.testing import assert_close

import rftkit.policy.local
from rftkit.models import apply_lora, load_model
from rftkit.models.batching import pack_prompt_completion, token_logprobs
from rftkit.models.layout import packed_forward_usable
from rftkit.models.packed import Layout, packed_logprobs, policy_logprobs
from rftkit.policy import LocalPolicy, LossSpec, Row


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
    assert packed_forward_usable(model)
    prompts, completions = _batch()
    expected = _padded_logprobs(model, prompts, completions, temperature)
    logp, mask = packed_logprobs(model, prompts, completions, temperature)
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
    logp, mask = packed_logprobs(model, prompts, completions)
    assert_close(logp[mask.bool()], _padded_logprobs(model, prompts, completions), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_policy_logprobs_gives_the_same_values_and_layout_packed_or_padded(toy_model_dir, arch):
    model = _model(arch, toy_model_dir)
    prompts, completions = _batch(seed=2)
    auto, auto_mask = policy_logprobs(model, prompts, completions, 0.7, 0)  # packed: the model allows it
    packed, packed_mask = packed_logprobs(model, prompts, completions, 0.7)
    padded, padded_mask = policy_logprobs(model, prompts, completions, 0.7, 0, packed=False)
    logits_fn = lambda i, a: model(input_ids=i, attention_mask=a, use_cache=False).logits  # noqa: E731
    via_fn, fn_mask = policy_logprobs(model, prompts, completions, 0.7, 0, logits_fn=logits_fn)  # always padded
    shape = (len(completions), max(len(c) for c in completions))
    for logp, mask in ((auto, auto_mask), (padded, padded_mask), (via_fn, fn_mask)):
        assert logp.shape == mask.shape == shape
        assert_close(mask, packed_mask)
        assert (logp[~mask.bool()] == 0).all()
    assert_close(auto, packed, atol=0, rtol=0)
    assert_close(padded, packed, atol=1e-5, rtol=1e-5)
    assert_close(via_fn, padded, atol=0, rtol=0)
    assert_close(padded[padded_mask.bool()], _padded_logprobs(model, prompts, completions, 0.7), atol=1e-6, rtol=1e-6)


def _rows(prompts, completions, advantages):
    return [Row(p, c, advantage=a) for p, c, a in zip(prompts, completions, advantages)]


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant"])
def test_grpo_update_gradient_is_the_same_with_and_without_the_shared_prefix(toy_model_dir, aggregation, monkeypatch):
    model = _model("llama", toy_model_dir)
    assert packed_forward_usable(model)  # so the unpatched run below takes the shared-prefix forward
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    policy = LocalPolicy(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                         micro_batch_size=5, pad_id=0)
    prompts, completions = _batch(seed=3)
    advantages = [random.Random(i).uniform(-1, 1) for i in range(len(prompts))]
    advantages[4:8] = [0.0] * 4  # a group with no spread is skipped by both paths
    rows = _rows(prompts, completions, advantages)
    spec = LossSpec(epsilon=0.2, aggregation=aggregation, max_new_tokens=17)
    results = {}
    for shared in (False, True):
        with monkeypatch.context() as m:
            if not shared:  # the update as for a model the shared-prefix forward cannot run: the padded forward
                m.setattr(rftkit.policy.local, "packed_forward_usable", lambda module: False)
            # update() would step the optimizer and clear the gradients: read them off the accumulation it runs
            sums = policy.accumulate_grpo(rows, spec)
        results[shared] = (_grads(model), sums)
    (plain, plain_sums), (fast, fast_sums) = results[False], results[True]
    assert _relative_difference(fast, plain) < 1e-5
    assert fast_sums["pg_loss"] == pytest.approx(plain_sums["pg_loss"], abs=1e-5)
    assert fast_sums["tokens"] == plain_sums["tokens"] and fast_sums["rows"] == plain_sums["rows"] == 8

"""The GRPO update (rftkit/algorithms/grpo_update.py) on the toy model: stored old log-probs (mu > 1) give the
gradient the ratio says. The variants end to end are in tests/train/test_grpo_variants.py."""

import math

import pytest
import torch
from torch.testing import assert_close

from rftkit.algorithms.grpo_update import completion_logprobs, grpo_update
from rftkit.models import load_model
from rftkit.types import Completion, Group, Item, Score


def _hand_made_groups(vocab: int) -> list[Group]:
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=gen).tolist()  # noqa: E731
    groups = []
    for g, advantages in enumerate(([1.0, -0.5, 0.0], [-1.0, 2.0, 0.25])):
        completions = [Completion("", ids(3 + 2 * i), [], "length", Score(reward=a), advantage=a) for i, a in enumerate(advantages)]
        groups.append(Group(Item(f"q{g}", [{"role": "user", "content": "?"}]), ids(4 + g), completions))
    return groups


def test_grpo_update_with_stored_logprobs_at_ratio_1_matches_no_stored_logprobs(toy_model_dir):
    # Stored old log-probs equal to the current ones: ratio 1, so the gradient is the mu = 1 gradient.
    # Stored ones lower by log 1.1 everywhere: ratio 1.1 on every token (inside the clip range [0.8, 1.2]),
    # so every token's gradient, and the sum, is 1.1 times as large.
    torch.manual_seed(0)
    model = load_model(str(toy_model_dir)).train()
    groups = _hand_made_groups(model.config.vocab_size)
    completions = [c for g in groups for c in g.completions]
    params = [p for p in model.parameters() if p.requires_grad]
    temperature = 0.7

    def grads() -> tuple[list[torch.Tensor], dict]:
        sums = grpo_update(model, groups, 0, 2, 0.2, temperature=temperature)
        out = [p.grad.clone() for p in params]
        model.zero_grad(set_to_none=True)
        return out, sums

    plain, plain_sums = grads()
    assert any(g.abs().sum() > 0 for g in plain)
    logps = completion_logprobs(lambda i, a: model(input_ids=i, attention_mask=a, use_cache=False).logits,
                                [(g.prompt_ids, c.token_ids) for g in groups for c in g.completions], 0, 4, temperature)
    for c, lp in zip(completions, logps):
        assert lp.shape == (len(c.token_ids),)
        c.old_logp = lp
    stored, stored_sums = grads()
    for a, b in zip(stored, plain):
        assert_close(a, b)
    assert stored_sums["clipped"] == plain_sums["clipped"] == 0.0
    assert stored_sums["pg_loss"] == pytest.approx(plain_sums["pg_loss"], abs=1e-6)
    for c, lp in zip(completions, logps):
        c.old_logp = lp - math.log(1.1)
    scaled, scaled_sums = grads()
    for a, b in zip(scaled, plain):
        assert_close(a, 1.1 * b)
    assert scaled_sums["pg_loss"] == pytest.approx(1.1 * plain_sums["pg_loss"], abs=1e-6)

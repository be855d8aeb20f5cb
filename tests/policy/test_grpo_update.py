"""The GRPO update (rftkit/policy/local.py, LocalPolicy) on the toy model: stored old log-probs (mu > 1) give the
gradient the ratio says. The variants end to end are in tests/train/test_grpo_variants.py."""

import math

import pytest
import torch
from torch.testing import assert_close

from rftkit.models import load_model
from rftkit.policy import LocalPolicy, LossSpec, Row


def frozen_lr_policy(model, micro_batch_size: int = 64, **kwargs) -> LocalPolicy:
    """A LocalPolicy whose optimizer steps change nothing (lr 0), for tests that read gradients or losses."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return LocalPolicy(model, optimizer, scheduler, micro_batch_size=micro_batch_size, pad_id=0, **kwargs)


def _hand_made_rows(vocab: int) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=gen).tolist()  # noqa: E731
    rows = []
    for g, advantages in enumerate(([1.0, -0.5, 0.0], [-1.0, 2.0, 0.25])):
        completions = [ids(3 + 2 * i) for i in range(len(advantages))]
        prompt = ids(4 + g)
        rows += [Row(prompt, c, advantage=a) for c, a in zip(completions, advantages)]
    return rows


def test_grpo_update_with_stored_logprobs_at_ratio_1_matches_no_stored_logprobs(toy_model_dir):
    # Stored old log-probs equal to the current ones: ratio 1, so the gradient is the mu = 1 gradient.
    # Stored ones lower by log 1.1 everywhere: ratio 1.1 on every token (inside the clip range [0.8, 1.2]),
    # so every token's gradient, and the sum, is 1.1 times as large.
    torch.manual_seed(0)
    model = load_model(str(toy_model_dir)).train()
    policy = frozen_lr_policy(model, micro_batch_size=2)
    rows = _hand_made_rows(model.config.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]
    temperature = 0.7
    spec = LossSpec(epsilon=0.2, temperature=temperature)

    def grads(rows) -> tuple[list[torch.Tensor], dict]:
        # LocalPolicy.update ends with optimizer_step(), which clears the gradients: read them off the
        # accumulation step (the same one update() runs) instead.
        sums = policy.accumulate_grpo(rows, spec)
        out = [p.grad.clone() for p in params]
        model.zero_grad(set_to_none=True)
        return out, sums

    plain, plain_sums = grads(rows)
    assert any(g.abs().sum() > 0 for g in plain)
    logps = policy.logprobs(rows, temperature)
    assert len(logps) == len(rows)
    for r, lp in zip(rows, logps):
        assert lp.shape == (len(r.completion_ids),)
        assert not lp.requires_grad
    with_old = lambda shift: [Row(r.prompt_ids, r.completion_ids, r.advantage, r.loss_mask, lp - shift)  # noqa: E731
                              for r, lp in zip(rows, logps)]
    stored, stored_sums = grads(with_old(0.0))
    for a, b in zip(stored, plain):
        assert_close(a, b)
    assert stored_sums["clipped"] == plain_sums["clipped"] == 0.0
    assert stored_sums["pg_loss"] == pytest.approx(plain_sums["pg_loss"], abs=1e-6)
    scaled, scaled_sums = grads(with_old(math.log(1.1)))
    for a, b in zip(scaled, plain):
        assert_close(a, 1.1 * b)
    assert scaled_sums["pg_loss"] == pytest.approx(1.1 * plain_sums["pg_loss"], abs=1e-6)


def test_update_takes_one_optimizer_step_on_the_accumulated_loss(toy_model_dir):
    # update() = the accumulated GRPO gradient, then one optimizer step: with plain SGD at lr 0.1 the
    # weights move by exactly -0.1 * the (unclipped) gradient, and the gradients are cleared afterwards.
    torch.manual_seed(0)
    model = load_model(str(toy_model_dir)).train()
    rows = _hand_made_rows(model.config.vocab_size)
    spec = LossSpec(epsilon=0.2)
    params = [p for p in model.parameters() if p.requires_grad]
    probe = frozen_lr_policy(model)
    probe.accumulate_grpo(rows, spec)  # the gradient update() will apply (optimizer_step zeroes it after)
    grads = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.1)
    policy = LocalPolicy(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                         max_grad_norm=1e9, pad_id=0)
    metrics = policy.update(rows, spec)
    assert {"pg_loss", "kl", "clipped", "tokens", "rows", "grad_norm"} <= set(metrics)
    assert metrics["rows"] == 5  # the advantage-0 row is not forwarded ...
    assert metrics["tokens"] == sum(len(r.completion_ids) for r in rows)  # ... but its tokens are counted
    assert metrics["grad_norm"] > 0
    assert policy.version == 1
    for p, b, g in zip(params, before, grads):
        assert_close(p.detach(), b - 0.1 * g)
        assert p.grad is None

"""LocalPolicy (rftkit/policy/local.py) on the toy model: versions, state round trip, loss masks, reference, eval mode."""

import io

import pytest
import torch
from torch.testing import assert_close

from rftkit.models import load_model
from rftkit.models.batching import pad_right
from rftkit.models.packed import policy_logprobs
from rftkit.policy import LocalPolicy, LossSpec, Row


def make_policy(model, optimizer: str = "adamw", lr: float = 1e-2, warmup: int = 0, **kwargs) -> LocalPolicy:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr) if optimizer == "adamw" else torch.optim.SGD(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return LocalPolicy(model, opt, schedule, pad_id=0, **kwargs)


def rows(vocab: int, seed: int = 0) -> list[Row]:
    """Two prompts x three completions of different lengths, with advantages of both signs (one 0)."""
    gen = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=gen).tolist()  # noqa: E731
    out = []
    for g, advantages in enumerate(([1.0, -0.5, 0.0], [-1.0, 2.0, 0.25])):
        prompt = ids(4 + g)
        out += [Row(prompt, ids(4 + 2 * i), advantage=a) for i, a in enumerate(advantages)]
    return out


@pytest.fixture
def model(toy_model_dir):
    return load_model(str(toy_model_dir)).train()


def sft_like(module) -> dict:
    """An update_with loss: the mean log-likelihood of a fixed sequence."""
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    loss = -torch.log_softmax(module(input_ids=ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None]).mean()
    loss.backward()
    return {"loss": float(loss.detach())}


def grads_of(model) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return out


# ---- versions -------------------------------------------------------------------------------------
def test_version_counts_updates_and_update_with_steps(model):
    policy = make_policy(model)
    assert policy.version == 0
    batch, spec = rows(model.config.vocab_size), LossSpec()
    before = [p.detach().clone() for p in model.parameters()]
    metrics = policy.update(batch, spec)
    assert policy.version == 1 and metrics["grad_norm"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), "update() took no optimizer step"
    metrics = policy.update_with(sft_like)
    assert policy.version == 2 and metrics["loss"] > 0 and metrics["grad_norm"] > 0
    policy.update(batch, spec)
    assert policy.version == 3
    assert all(p.grad is None for p in model.parameters())  # each step clears what it applied


# ---- state ----------------------------------------------------------------------------------------
def test_state_dict_round_trips_weights_optimizer_schedule_and_version(toy_model_dir):
    first = make_policy(load_model(str(toy_model_dir)).train(), warmup=5)
    batch, spec = rows(first.module.config.vocab_size), LossSpec()
    first.update(batch, spec)
    first.update_with(sft_like)
    state = first.state_dict()

    second = make_policy(load_model(str(toy_model_dir)).train(), warmup=5)  # a fresh copy of the model
    assert any(not torch.equal(a, b) for a, b in zip(first.module.parameters(), second.module.parameters()))
    second.load_state_dict(state)
    assert second.version == first.version == 2
    assert second.lr == pytest.approx(first.lr) and first.lr == pytest.approx(1e-2 * 3 / 5)  # warm-up step 3 of 5
    for (name, a), b in zip(first.module.named_parameters(), second.module.parameters()):
        assert torch.equal(a, b), name
    opt_a, opt_b = first.optimizer.state_dict(), second.optimizer.state_dict()
    assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]
    for key, value in opt_a["state"].items():
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(value[field], opt_b["state"][key][field]), (key, field)
    # The same next update lands on the same weights: moments, step counts and schedule all carried over,
    # for a policy loaded in this process (state_dict() is a copy: the two share no Adam moments) and for
    # one loaded from bytes, as a checkpoint is.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    third = make_policy(load_model(str(toy_model_dir)).train(), warmup=5)
    third.load_state_dict(torch.load(buffer, weights_only=True))
    first.update(batch, spec)
    second.update(batch, spec)
    third.update(batch, spec)
    assert third.version == second.version == first.version == 3
    for (name, a), b, c in zip(first.module.named_parameters(), second.module.parameters(), third.module.parameters()):
        assert_close(a, b, atol=0, rtol=0, msg=name)
        assert_close(a, c, atol=0, rtol=0, msg=name)


def test_load_state_dict_refuses_weights_of_another_model(model, toy_model_dir):
    policy = make_policy(model)
    state = policy.state_dict()
    state["model"] = {**state["model"], "no.such.weight": torch.zeros(1)}
    with pytest.raises(RuntimeError, match="does not match the model"):
        make_policy(load_model(str(toy_model_dir))).load_state_dict(state)


# ---- loss masks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_masked_tail_tokens_update_as_if_they_were_absent(toy_model_dir, aggregation):
    # Tokens after the last trained one cannot change the earlier ones' log-probs (causal attention), so a row
    # whose tail is masked out must update exactly like the row cut before that tail: same loss, same token
    # count, same normaliser, same step.
    spec = LossSpec(aggregation=aggregation)
    full = rows(300, seed=1)
    masked = [Row(r.prompt_ids, r.completion_ids, r.advantage, [1] * 2 + [0] * (len(r.completion_ids) - 2)) for r in full]
    cut = [Row(r.prompt_ids, r.completion_ids[:2], r.advantage) for r in full]
    results = {}
    for name, batch in (("masked", masked), ("cut", cut), ("full", full)):
        policy = make_policy(load_model(str(toy_model_dir)).train(), optimizer="sgd", lr=1.0, max_grad_norm=1e9)
        metrics = policy.update(batch, spec)
        results[name] = (metrics, [p.detach().clone() for p in policy.module.parameters()])
    (m_masked, w_masked), (m_cut, w_cut), (m_full, w_full) = results["masked"], results["cut"], results["full"]
    assert m_masked["tokens"] == m_cut["tokens"] == 2 * len(full) < m_full["tokens"]
    assert m_masked["pg_loss"] == pytest.approx(m_cut["pg_loss"], abs=1e-6)
    assert m_masked["grad_norm"] == pytest.approx(m_cut["grad_norm"], rel=1e-5)
    for a, b in zip(w_masked, w_cut):
        assert_close(a, b, atol=1e-6, rtol=1e-5)
    # and the mask mattered: training on every token moves the weights elsewhere
    assert m_full["grad_norm"] != pytest.approx(m_cut["grad_norm"], rel=1e-3)


def test_masked_middle_tokens_are_left_out_of_the_sum_and_the_normaliser(model):
    # A mask of 0 inside a completion (a tool's output in a multi-turn trajectory): the token stays context but
    # is no target. With mu = 1 the ratio is 1, so the token-mean loss's gradient is
    # -sum(A * grad log p over trained tokens) / (number of trained tokens), and its value -sum(A * 1) / that number.
    policy = make_policy(model, optimizer="sgd", lr=0.0)
    batch = []
    for i, r in enumerate(rows(model.config.vocab_size, seed=2)):
        mask = [1] * len(r.completion_ids)
        mask[1 + i % 2] = 0
        mask[-2] = 0
        batch.append(Row(r.prompt_ids, r.completion_ids, r.advantage, mask))
    # update() ends with optimizer_step(), which clears the gradients: read them off the accumulation it runs
    sums = policy.accumulate_grpo(batch, LossSpec())
    got = grads_of(model)

    logp, present = policy_logprobs(model, [r.prompt_ids for r in batch], [r.completion_ids for r in batch], 1.0, 0)
    mask = present * pad_right([r.loss_mask for r in batch], 0).float()  # [R, C]
    advantages = torch.tensor([r.advantage for r in batch])[:, None]
    n_trained = mask.sum()
    assert n_trained < present.sum()  # some tokens really are masked
    (-(advantages * logp * mask).sum() / n_trained).backward()
    want = grads_of(model)
    assert sums["tokens"] == float(n_trained)
    assert sums["pg_loss"] == pytest.approx(float(-(advantages * mask).sum() / n_trained), abs=1e-6)
    assert any(g.abs().sum() > 0 for g in want)
    for a, b in zip(got, want):
        assert_close(a, b, atol=1e-7, rtol=1e-5)


# ---- log-probs, reference, eval mode ---------------------------------------------------------------
def test_logprobs_and_reference_logprobs(toy_model_dir, model):
    reference = load_model(str(toy_model_dir)).eval().requires_grad_(False)
    policy = make_policy(model, reference=reference, micro_batch_size=4)  # two micro-batches of rows
    batch = rows(model.config.vocab_size)
    now, ref = policy.logprobs(batch, 0.7), policy.reference_logprobs(batch, 0.7)
    assert [t.shape for t in now] == [(len(r.completion_ids),) for r in batch]
    assert all(not t.requires_grad for t in now + ref)
    logp, mask = policy_logprobs(model, [r.prompt_ids for r in batch], [r.completion_ids for r in batch], 0.7, 0)
    for row, (t, lp, m) in enumerate(zip(now, logp, mask)):
        assert_close(t, lp[m.bool()].detach(), msg=f"row {row}")
    for a, b in zip(now, ref):  # policy == reference before any update
        assert_close(a, b, atol=1e-5, rtol=1e-5)
    policy.update(batch, LossSpec())
    moved, still = policy.logprobs(batch, 0.7), policy.reference_logprobs(batch, 0.7)
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(moved, now))
    for a, b in zip(still, ref):  # the reference is frozen
        assert_close(a, b, atol=0, rtol=0)


def test_evaluating_is_eval_mode_without_gradients_and_restores_the_mode(model):
    policy = make_policy(model)
    assert model.training
    with policy.evaluating() as module:
        assert module is model and not module.training and not torch.is_grad_enabled()
        assert not module(input_ids=torch.tensor([[5, 6, 7]])).logits.requires_grad
    assert model.training and torch.is_grad_enabled()
    model.eval()
    with policy.evaluating():
        pass
    assert not model.training  # the mode it had, not train()

"""Checkpoints: a round trip restores weights, optimizer, version and RNG state; `keep` prunes old ones."""

import random

import numpy as np
import torch

from rftkit.models import load_model
from rftkit.policy import LocalPolicy
from rftkit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def _policy(model) -> LocalPolicy:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return LocalPolicy(model, opt, sched)


def test_checkpoint_round_trip_restores_weights_optimizer_and_rngs(toy_model_dir, tmp_path):
    model = load_model(str(toy_model_dir))
    policy = _policy(model)
    policy.update_with(lambda m: (m(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward(), {})[1])
    random.seed(5)
    torch.manual_seed(5)
    np.random.seed(5)
    save_checkpoint(tmp_path, 3, policy.state_dict(), {"sampler": {"epoch": 1, "pos": 2}}, keep=1)
    expected = (random.random(), torch.rand(3), np.random.rand(3))
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    random.random(), torch.rand(3), np.random.rand(3)  # move the RNGs on: loading must put them back
    fresh = _policy(model)
    policy_state, state = load_checkpoint(latest_checkpoint(tmp_path))
    fresh.load_state_dict(policy_state)
    assert state["step"] == 3 and state["sampler"] == {"epoch": 1, "pos": 2}
    assert policy_state["version"] == fresh.version == policy.version == 1
    for n, p in model.named_parameters():
        assert torch.equal(p, saved[n]), n
    got = (random.random(), torch.rand(3), np.random.rand(3))
    assert got[0] == expected[0] and torch.equal(got[1], expected[1]) and np.array_equal(got[2], expected[2])
    before, after = policy.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys() and before["state"]
    for k, v in before["state"].items():  # every value: exp_avg, exp_avg_sq and step
        assert after["state"][k].keys() == v.keys()
        for name, tensor in v.items():
            assert torch.equal(after["state"][k][name], tensor), (k, name)
    assert fresh.scheduler.state_dict() == policy.scheduler.state_dict()
    save_checkpoint(tmp_path, 4, policy.state_dict(), {"sampler": {"epoch": 0, "pos": 0}}, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000004"]  # keep=1 pruned step 3

"""Checkpoints: a round trip restores weights, optimizer and RNG state; `keep` prunes old ones."""

import random

import torch

from rftkit.models import load_model
from rftkit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def test_checkpoint_round_trip_restores_weights_optimizer_and_rngs(toy_model_dir, tmp_path):
    model = load_model(str(toy_model_dir))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    random.seed(5)
    torch.manual_seed(5)
    save_checkpoint(tmp_path, 3, model, opt, sched, {"sampler": {"epoch": 1, "pos": 2}}, keep=1)
    expected = (random.random(), torch.rand(3))
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    fresh_opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    state = load_checkpoint(latest_checkpoint(tmp_path), model, fresh_opt, sched)
    assert state["step"] == 3 and state["sampler"] == {"epoch": 1, "pos": 2}
    for n, p in model.named_parameters():
        assert torch.equal(p, saved[n]), n
    assert (random.random(), torch.rand(3))[0] == expected[0]
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    save_checkpoint(tmp_path, 4, model, opt, sched, {"sampler": {"epoch": 0, "pos": 0}}, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000004"]  # keep=1 pruned step 3

"""Two data-parallel learners (Ray actors, gloo) compute the gradient one learner computes on the whole batch."""

from __future__ import annotations

import random

import pytest
import torch

from rftkit.models import load_model, load_tokenizer
from rftkit.policy import LocalPolicy, LossSpec, Row

from tests.conftest import BUNDLED

ray = pytest.importorskip("ray")



def policy() -> LocalPolicy:
    torch.manual_seed(0)
    model = load_model(str(BUNDLED)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return LocalPolicy(model, optimizer, scheduler, micro_batch_size=4, pad_id=load_tokenizer(str(BUNDLED)).pad_token_id)


def batch() -> list[Row]:
    rng = random.Random(0)
    rows = []
    for g in range(4):  # 4 groups of 4, prompts and completions of different lengths, some tokens masked
        prompt = [rng.randrange(3, 60) for _ in range(rng.randrange(5, 12))]
        for _ in range(4):
            n = rng.randrange(3, 15)
            mask = [1] * n if g % 2 else [1 if rng.random() > 0.3 else 0 for _ in range(n)]
            rows.append(Row(prompt, [rng.randrange(3, 60) for _ in range(n)], rng.uniform(-1, 1), mask))
    return rows


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant"])
def test_two_learners_give_one_learners_gradient(local_ray, aggregation):
    from rftkit.distributed import LearnerGroup

    spec, rows = LossSpec(aggregation=aggregation), batch()
    one = policy()
    one.accumulate_grpo(rows, spec)
    expected = torch.cat([p.grad.reshape(-1) for p in one.module.parameters() if p.requires_grad])
    group = LearnerGroup(local_ray, policy(), learners=2, cpus=1, gpus=0, timeout_s=120, threads=1)
    try:
        got = group.gradient(rows, spec)
        relative = float((got - expected).norm() / expected.norm())
        assert relative <= 1e-5, relative
        # and an update: the learners' copies stay equal, and the step is one learner's on the whole batch, up to
        # Adam's first step turning a gradient entry of ~1e-12 (float noise in a sum) into +-lr like any other
        single = policy()
        single.update(rows, spec)
        group.update(rows, spec)
        ranks = local_ray.get([w.weights.remote() for w in group.workers])
        assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
        lr, differ, total = 1e-3, 0, 0
        for (name, a), b in zip(single.module.named_parameters(), group.module.parameters()):
            gap = (a - b).abs()
            assert float(gap.max()) < lr, name
            differ, total = differ + int((gap > 1e-6).sum()), total + gap.numel()
        assert differ / total < 1e-3, f"{differ} of {total} weights differ by more than 1e-6"
        assert group.version == 1
    finally:
        group.close()

"""Token-efficiency shaping (algorithms/reasoning.py), worked by hand."""

from __future__ import annotations

import math

import torch

from rftkit.algorithms.reasoning import linear_efficiency, rank_efficiency


def test_linear_scales_correct_rewards_by_the_share_of_the_budget_thought():
    rewards = torch.tensor([[1.0, 1.0, 0.0, 1.0, float("nan")]])
    thinking = torch.tensor([[0, 32, 10, 100, 5]])
    out = linear_efficiency(rewards, thinking, budget=64, alpha=0.5)
    # 1 * (1 - 0.5 * 0) = 1; 1 * (1 - 0.5 * 32/64) = 0.75; wrong stays 0; 100 > budget: capped at 1 - 0.5
    assert out[0, :4].tolist() == [1.0, 0.75, 0.0, 0.5]
    assert math.isnan(out[0, 4])


def test_rank_takes_alpha_from_the_longest_correct_thinking_and_leaves_the_rest():
    rewards = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, float("nan")]])
    thinking = torch.tensor([[30, 10, 20, 5], [50, 1, 2, 3], [8, 8, 16, 1]])
    out = rank_efficiency(rewards, thinking, alpha=0.4)
    # group 0: correct lengths 30, 10, 20 -> ranks 2, 0, 1 of 2 -> minus 0.4, 0, 0.2; the wrong one untouched
    assert torch.allclose(out[0], torch.tensor([0.6, 1.0, 0.8, 0.0]))
    assert out[1].tolist() == rewards[1].tolist()  # one correct answer: nothing to rank
    # group 2: 8, 8 tie at ranks 0 and 1 -> both 0.5; 16 is rank 2 -> 0.4 * 0.5/2 = 0.1 and 0.4 * 2/2 = 0.4
    assert torch.allclose(out[2, :3], torch.tensor([0.9, 0.9, 0.6]))
    assert math.isnan(out[2, 3])


def test_no_shaping_ever_makes_a_correct_answer_worth_less_than_a_wrong_one():
    torch.manual_seed(0)
    rewards = (torch.rand(50, 8) > 0.5).float()
    thinking = torch.randint(0, 200, (50, 8))
    for out in (linear_efficiency(rewards, thinking, 64, 1.0), rank_efficiency(rewards, thinking, 1.0)):
        assert torch.all(out[rewards == 1] >= out[rewards == 0].max())

"""Per-turn credit (`algorithm.credit: turn`): values worked by hand."""

import math

import torch

from rftkit.algorithms.grpo import turn_advantages


def close(tensors, expected, tol=1e-3):
    return all(len(t) == len(e) and all(math.isclose(a, b, abs_tol=tol) for a, b in zip(t.tolist(), e))
               for t, e in zip(tensors, expected))


def test_normalised_over_the_groups_turns_then_discounted_to_go():
    # turn rewards: A [0, 1], B [0.5]; all three: mean 0.5, std 0.5 -> A [-1, 1], B [0]
    # gamma 0.5: A's first turn -1 + 0.5 * 1 = -0.5, its second 1
    out = turn_advantages([torch.tensor([0.0, 1.0]), torch.tensor([0.5])], gamma=0.5)
    assert close(out, [[-0.5, 1.0], [0.0]])


def test_gamma_one_sums_all_later_turns():
    # A [1, 0, 1], B [0, 0]: mean 0.4, std sqrt(0.3) = 0.5477; normalised A [1.0954, -0.7303, 1.0954], B [-0.7303, -0.7303]
    out = turn_advantages([torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0])], gamma=1.0)
    a = [1.0954 - 0.7303 + 1.0954, -0.7303 + 1.0954, 1.0954]
    b = [-1.4606, -0.7303]
    assert close(out, [a, b])


def test_failed_trajectory_gets_zero_and_is_left_out_of_the_statistics():
    out = turn_advantages([torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([float("nan"), 5.0])], gamma=1.0)
    # only 1 and 0 count: mean 0.5, std 0.7071
    assert close(out, [[0.7071], [-0.7071], [0.0, 0.0]])


def test_equal_rewards_and_single_values_give_zero():
    assert close(turn_advantages([torch.tensor([1.0, 1.0]), torch.tensor([1.0])]), [[0.0, 0.0], [0.0]])
    assert close(turn_advantages([torch.tensor([3.0])]), [[0.0]])


def test_one_turn_each_is_group_mean_std():
    from rftkit.algorithms.grpo import group_mean_std

    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    per_turn = turn_advantages([r.reshape(1) for r in rewards[0]], gamma=0.9)
    assert close(per_turn, [[v] for v in group_mean_std(rewards)[0].tolist()])

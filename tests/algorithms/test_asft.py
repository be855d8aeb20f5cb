"""A-SFT (advantage-weighted SFT): weights and loss against values worked by hand (comments show the work)."""

import math

import pytest
import torch
from torch.testing import assert_close

from rftkit.algorithms.asft import BASELINES, WEIGHT_NORMALIZATIONS, asft_loss, asft_weights, prompt_groups
from rftkit.algorithms.sft import sft_loss

NAN = float("nan")
LOG_HALF = math.log(0.5)

# prompts a, a, b, b with rewards 1, 0, 3, 1
ASFT_REWARDS = torch.tensor([1.0, 0.0, 3.0, 1.0])
ASFT_GROUPS = prompt_groups(["a", "a", "b", "b"])


def test_prompt_groups_index_equal_prompts_together():
    assert prompt_groups(["x", "y", "x", "z"]).tolist() == [0, 1, 0, 2]


def test_asft_prompt_mean_baseline_by_hand():
    # baselines [0.5, 0.5, 2, 2] -> centred [0.5, -0.5, 1, -1]; unbiased std = sqrt(2.5 / 3) = 0.912871
    # advantages [0.547723, -0.547723, 1.095445, -1.095445]
    # exp: [1.729310, 0.578265, 2.990514 -> clipped to max_weight 2.5, 0.334391]
    w = asft_weights(ASFT_REWARDS, ASFT_GROUPS, "prompt_mean", temperature=1.0, max_weight=2.5, eps=0.0)
    assert_close(w, torch.tensor([1.729310, 0.578265, 2.5, 0.334391]))
    # mean_one: sum 5.141966, mean 1.285492 -> [1.345252, 0.449840, 1.944781, 0.260127]
    w1 = asft_weights(ASFT_REWARDS, ASFT_GROUPS, "prompt_mean", 1.0, 2.5, "mean_one", eps=0.0)
    assert_close(w1, torch.tensor([1.345252, 0.449840, 1.944781, 0.260127]))
    assert_close(w1.mean(), torch.tensor(1.0))


def test_asft_global_mean_baseline_and_temperature_by_hand():
    # global mean 1.25 -> centred [-0.25, -1.25, 1.75, -0.25]; unbiased std = sqrt(4.75 / 3) = 1.258306
    # advantages [-0.198680, -0.993399, 1.390759, -0.198680]; temperature 2 halves them:
    # exp: [0.905435, 0.608536, 2.004470, 0.905435] (none above max_weight 20)
    w = asft_weights(ASFT_REWARDS, ASFT_GROUPS, "global_mean", temperature=2.0, eps=0.0)
    assert_close(w, torch.tensor([0.905435, 0.608536, 2.004470, 0.905435]))


def test_asft_failed_rows_get_weight_zero_and_stay_out_of_the_statistics():
    # one prompt, rewards [1, NaN, 0]: mean of valid 0.5 -> centred [0.5, -, -0.5]; std of [0.5, -0.5] = 0.707107
    # advantages [0.707107, -, -0.707107] -> weights [e^0.707107, 0, e^-0.707107] = [2.028115, 0, 0.493069]
    w = asft_weights(torch.tensor([1.0, NAN, 0.0]), torch.tensor([0, 0, 0]), eps=0.0)
    assert_close(w, torch.tensor([2.028115, 0.0, 0.493069]))
    # mean_one averages over the two valid rows only: mean 1.260592 -> [1.608858, 0, 0.391142]
    w1 = asft_weights(torch.tensor([1.0, NAN, 0.0]), torch.tensor([0, 0, 0]), normalization="mean_one", eps=0.0)
    assert_close(w1, torch.tensor([2.028115, 0.0, 0.493069]) / 1.260592)


def test_asft_single_response_prompt_gets_weight_one():
    # prompt b logged once: its own mean is its baseline -> advantage 0 -> weight e^0 = 1
    w = asft_weights(torch.tensor([1.0, 0.0, 5.0]), torch.tensor([0, 0, 1]))
    assert_close(w[2], torch.tensor(1.0))


def test_asft_loss_by_hand():
    # weights [2, 0.5]; row 0 tokens log 0.5, log 0.25; row 1 token log 0.5 (its -9 is masked)
    # -(2 * (-0.693147 - 1.386294) + 0.5 * (-0.693147)) / 3 = (4.158883 + 0.346574) / 3 = 1.501819
    logp = torch.tensor([[LOG_HALF, math.log(0.25)], [LOG_HALF, -9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert_close(asft_loss(logp, mask, torch.tensor([2.0, 0.5])), torch.tensor(1.501819))
    # weights of 1 are plain SFT; a step-wide token count makes micro-batches add up
    assert_close(asft_loss(logp, mask, torch.ones(2)), sft_loss(logp, mask))
    halves = asft_loss(logp[:1], mask[:1], torch.tensor([2.0]), 3.0) + asft_loss(logp[1:], mask[1:], torch.tensor([0.5]), 3.0)
    assert_close(halves, torch.tensor(1.501819))


def test_asft_tables_refuse_unknown_names():
    assert set(BASELINES) == {"prompt_mean", "global_mean"} and set(WEIGHT_NORMALIZATIONS) == {"none", "mean_one"}
    with pytest.raises(ValueError, match="prompt_mean"):
        asft_weights(ASFT_REWARDS, ASFT_GROUPS, baseline="median")

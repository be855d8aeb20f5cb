"""GRPO advantages, loss, KL and pass@k against values worked by hand (comments show the work)."""

import math

import pytest
import torch
from torch.testing import assert_close

from rftkit.algorithms.grpo import clipped_policy_loss, group_mean, group_mean_std, kl_k3
from rftkit.algorithms.sft import sft_loss
from rftkit.eval.passk import pass_at_k

NAN = float("nan")


def over(n):
    """Token sum / n: the token-mean aggregation of a step with n completion tokens."""
    return lambda values, mask: (values * mask).sum() / n


def test_group_mean_std_by_hand():
    # [1, 0, 0, 1]: mean 0.5; unbiased var = 4 * 0.25 / 3 = 1/3; std = 0.57735; 0.5 / 0.57735 = 0.866025
    # [1, 1, 1, 1]: no spread -> every advantage 0 (no learning signal, not a division by zero)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    s3 = math.sqrt(3) / 2
    assert_close(group_mean_std(rewards, eps=0.0)[0], torch.tensor([s3, -s3, -s3, s3]))
    assert_close(group_mean_std(rewards)[1], torch.zeros(4))


def test_group_mean_std_eps_in_denominator():
    # [2, 0]: mean 1, std = sqrt((1 + 1) / 1) = 1.41421; (2 - 1) / (1.414214 + 0.1) = 0.660409
    assert_close(group_mean_std(torch.tensor([[2.0, 0.0]]), eps=0.1), torch.tensor([[0.660409, -0.660409]]))


def test_failed_gradings_are_left_out_and_get_zero_advantage():
    # valid [1, 0] -> mean 0.5, std sqrt(0.5) = 0.707107 -> +-0.707107; the NaN gets 0
    adv = group_mean_std(torch.tensor([[1.0, NAN, 0.0]]), eps=0.0)
    assert_close(adv, torch.tensor([[0.707107, 0.0, -0.707107]]))
    # group_mean (Dr. GRPO): [3, NaN, 1] -> mean 2 -> [1, 0, -1]
    assert_close(group_mean(torch.tensor([[3.0, NAN, 1.0]])), torch.tensor([[1.0, 0.0, -1.0]]))


def test_loss_at_ratio_one_is_minus_advantage_token_mean():
    # rows: A = 2 on 2 completion tokens, A = -1 on 1 token; normaliser 3 tokens
    # loss = (-2 - 2 + 1) / 3 = -1; d loss / d logp = -A / 3 on each masked token
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    parts = clipped_policy_loss(logp, logp.detach(), torch.tensor([2.0, -1.0]), mask, epsilon=0.2, aggregate=over(3.0))
    assert_close(parts.loss, torch.tensor(-1.0))
    parts.loss.backward()
    assert_close(logp.grad, torch.tensor([[-2 / 3, -2 / 3, 0.0], [1 / 3, 0.0, 0.0]]))
    assert parts.clipped.item() == 0


def test_clipping_by_hand():
    # one token per row, eps 0.2:
    # ratio 1.5, A=+1: min(1.5, 1.2) = 1.2 -> -1.2 (clipped)
    # ratio 1.5, A=-1: min(-1.5, -1.2) = -1.5 -> +1.5 (not clipped: the pessimistic side)
    # ratio 0.5, A=-1: min(-0.5, -0.8) = -0.8 -> +0.8 (clipped)
    # total = (-1.2 + 1.5 + 0.8) / 3 = 0.366667; clipped tokens: 2
    ratio = torch.tensor([[1.5], [1.5], [0.5]])
    logp = torch.log(ratio)
    old = torch.zeros(3, 1)
    parts = clipped_policy_loss(logp, old, torch.tensor([1.0, -1.0, -1.0]), torch.ones(3, 1), 0.2, aggregate=over(3.0))
    assert_close(parts.loss, torch.tensor(1.1 / 3))
    assert parts.clipped.item() == 2


def test_clipped_token_has_no_gradient():
    logp = torch.log(torch.tensor([[1.5]])).requires_grad_()
    clipped_policy_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), 0.2, over(1.0)).loss.backward()
    assert logp.grad.item() == 0.0


def test_kl_k3_by_hand_and_as_loss_term():
    # d = ref - logp = log 0.5 = -0.693147; exp(d) - d - 1 = 0.5 + 0.693147 - 1 = 0.193147
    logp, ref = torch.zeros(1, 2), torch.full((1, 2), math.log(0.5))
    assert_close(kl_k3(logp, ref), torch.full((1, 2), 0.193147))
    assert_close(kl_k3(ref, ref), torch.zeros(1, 2))
    # A = 0 leaves only beta * KL: 0.1 * (0.193147 * 2) / 2 tokens = 0.0193147
    parts = clipped_policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), 0.2, over(2.0), ref_logp=ref, beta=0.1)
    assert_close(parts.loss, torch.tensor(0.0193147))


def test_micro_batches_add_up_to_the_full_batch():
    torch.manual_seed(0)
    logp = torch.randn(4, 5, requires_grad=True)
    mask = (torch.rand(4, 5) > 0.3).float()
    adv = torch.randn(4)
    full = clipped_policy_loss(logp, logp.detach() + 0.1, adv, mask, 0.2, over(mask.sum().item())).loss
    halves = sum(
        clipped_policy_loss(logp[i : i + 2], logp[i : i + 2].detach() + 0.1, adv[i : i + 2], mask[i : i + 2], 0.2, over(mask.sum().item())).loss
        for i in (0, 2)
    )
    assert_close(full, halves)


def test_sft_loss_counts_only_masked_tokens():
    # -(log 0.5 + log 0.25) / 2 = (0.693147 + 1.386294) / 2 = 1.039721; the unmasked -9 is ignored
    logp = torch.tensor([[math.log(0.5), math.log(0.25), -9.0]])
    assert_close(sft_loss(logp, torch.tensor([[1.0, 1.0, 0.0]])), torch.tensor(1.039721))


@pytest.mark.parametrize(
    "n,c,k,expected",
    [(8, 2, 1, 0.25), (4, 1, 2, 0.5), (8, 0, 8, 0.0), (8, 1, 8, 1.0), (5, 2, 3, 0.9)],
    # (4,1,2): 1 - C(3,2)/C(4,2) = 1 - 3/6; (5,2,3): 1 - C(3,3)/C(5,3) = 1 - 1/10
)
def test_pass_at_k_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_rloo_by_hand():
    # [1, 0, 0, 1]: r_0 - mean(0, 0, 1) = 1 - 1/3 = 2/3; r_1 - mean(1, 0, 1) = -2/3
    # [1, NaN, 0]: valid n = 2: 1 - 0 = 1, 0 - 1 = -1, NaN -> 0;  [5, NaN]: one valid, no baseline -> 0
    from rftkit.algorithms.grpo import rloo

    assert_close(rloo(torch.tensor([[1.0, 0.0, 0.0, 1.0]])), torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3]]))
    assert_close(rloo(torch.tensor([[1.0, NAN, 0.0]])), torch.tensor([[1.0, 0.0, -1.0]]))
    assert_close(rloo(torch.tensor([[5.0, NAN]])), torch.tensor([[0.0, 0.0]]))


def test_batch_normalized_by_hand():
    # centred: group A [1, 0] -> [0.5, -0.5]; group B [4, 0] -> [2, -2]
    # batch std (unbiased) of [0.5, -0.5, 2, -2] = sqrt((0.25 * 2 + 4 * 2) / 3) = sqrt(8.5 / 3) = 1.683251
    from rftkit.algorithms.grpo import batch_normalized

    s = (8.5 / 3) ** 0.5
    out = batch_normalized(torch.tensor([[1.0, 0.0], [4.0, 0.0]]), eps=0.0)
    assert_close(out, torch.tensor([[0.5 / s, -0.5 / s], [2 / s, -2 / s]]))


def test_unknown_advantage_name_is_refused_with_the_valid_ones():
    from rftkit.config import load_config
    from rftkit.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(None, ["algorithm.advantage=ppo_gae"])
    assert "algorithm.advantage" in str(err.value) and "rloo" in str(err.value) and "group_mean_std" in str(err.value)


def test_config_choices_and_the_advantage_table_agree():
    from rftkit.algorithms.grpo import ADVANTAGES
    from rftkit.config import load_config

    for name in ADVANTAGES:  # every table entry is a valid config value (unknown ones: tests/test_grpo_variants.py)
        assert load_config(None, [f"algorithm.advantage={name}"]).algorithm.advantage == name


def test_loss_aggregations_by_hand():
    # per-token values, row 0: [1, 3] (2 tokens), row 1: [4] (1 token); 2 rows, 3 tokens, max_new_tokens 4
    # token_mean = (1 + 3 + 4) / 3 = 2.666667; sequence_mean = (2 + 4) / 2 = 3; constant = 8 / (2 * 4) = 1
    from rftkit.algorithms.grpo import StepCounts, constant_normalizer, sequence_mean, token_mean

    values = torch.tensor([[1.0, 3.0, 9.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    counts = StepCounts(tokens=3, rows=2, max_new_tokens=4)
    assert_close(token_mean(values, mask, counts), torch.tensor(8 / 3))
    assert_close(sequence_mean(values, mask, counts), torch.tensor(3.0))
    assert_close(constant_normalizer(values, mask, counts), torch.tensor(1.0))


@pytest.mark.parametrize("name", ["token_mean", "sequence_mean", "constant"])
def test_every_aggregation_adds_up_over_micro_batches(name):
    from rftkit.algorithms.grpo import AGGREGATIONS, StepCounts

    torch.manual_seed(1)
    logp = torch.randn(4, 5, requires_grad=True)
    mask = (torch.rand(4, 5) > 0.3).float()
    mask[:, 0] = 1.0
    adv = torch.randn(4)
    counts = StepCounts(tokens=mask.sum().item(), rows=4, max_new_tokens=5)
    agg = lambda v, m: AGGREGATIONS[name](v, m, counts)  # noqa: E731
    full = clipped_policy_loss(logp, logp.detach() + 0.1, adv, mask, 0.2, agg).loss
    halves = sum(clipped_policy_loss(logp[i : i + 2], logp[i : i + 2].detach() + 0.1, adv[i : i + 2], mask[i : i + 2], 0.2,
                                     agg).loss for i in (0, 2))
    assert_close(full, halves)


def test_config_choices_and_the_aggregation_table_agree():
    from rftkit.algorithms.grpo import AGGREGATIONS
    from rftkit.config import load_config

    for name in AGGREGATIONS:
        assert load_config(None, [f"algorithm.loss_aggregation={name}"]).algorithm.loss_aggregation == name

"""GRPO maths against values worked by hand (comments show the work).

Advantages (group mean/std, Dr. GRPO's group mean, RLOO, batch-normalised), the clipped policy
loss and its aggregations, clip-higher, mu = 2, the KL estimators (as a loss term or a reward
penalty), DAPO's overlong penalty and dynamic sampling's group filter. TRL cross-checks on
random inputs live in test_trl_parity.py; the variants end to end in tests/train/test_grpo_variants.py.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from rftkit.algorithms.grpo import (
    KL_ESTIMATORS,
    clipped_policy_loss,
    group_mean,
    group_mean_std,
    keep_informative_groups,
    kl_k1,
    kl_k3,
    kl_reward_penalty,
    overlong_penalty,
)

NAN = float("nan")
LOG_HALF = math.log(0.5)


def over(n):
    """Token sum / n: the token-mean aggregation of a step with n completion tokens."""
    return lambda values, mask: (values * mask).sum() / n


# --- advantages, the clipped loss and its aggregations ---------------------------------------------


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

    for name in ADVANTAGES:  # every table entry is a valid config value (unknown ones: tests/train/test_grpo_variants.py)
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


# --- two-sided clipping (clip-higher) and mu = 2 -----------------------------------------------------


def test_clip_higher_by_hand():
    # one token per row, epsilon 0.2, epsilon_high 0.28: ratio clipped to [0.8, 1.28]
    # ratio 1.25, A=+1: min(1.25, 1.25) = 1.25 -> -1.25 (inside the higher bound: not clipped)
    # ratio 1.35, A=+1: min(1.35, 1.28) = 1.28 -> -1.28 (clipped)
    # ratio 0.70, A=-1: min(-0.70, -0.80) = -0.80 -> +0.80 (clipped at the unchanged lower bound)
    # loss = (-1.25 - 1.28 + 0.80) / 3 = -1.73 / 3 = -0.576667; clipped tokens: 2
    logp = torch.log(torch.tensor([[1.25], [1.35], [0.7]]))
    adv, mask, old = torch.tensor([1.0, 1.0, -1.0]), torch.ones(3, 1), torch.zeros(3, 1)
    parts = clipped_policy_loss(logp, old, adv, mask, 0.2, over(3.0), epsilon_high=0.28)
    assert_close(parts.loss, torch.tensor(-1.73 / 3))
    assert parts.clipped.item() == 2
    # symmetric clip (epsilon_high None = 0.2): (-1.2 - 1.2 + 0.8) / 3 = -0.533333, all 3 clipped
    sym = clipped_policy_loss(logp, old, adv, mask, 0.2, over(3.0))
    assert_close(sym.loss, torch.tensor(-1.6 / 3))
    assert sym.clipped.item() == 3
    assert_close(clipped_policy_loss(logp, old, adv, mask, 0.2, over(3.0), epsilon_high=0.2).loss, sym.loss)


def test_mu_2_second_pass_uses_stored_logprobs_and_clips():
    # The "policy" is its own per-token log-probs (leaf tensor), one token per row, A = [+1, -1],
    # token mean over 2 tokens. Pass 1: old = logp (stored), ratio 1, loss = -(1 - 1) / 2 = 0,
    # d loss / d logp = -A / 2 = [-0.5, +0.5]. SGD with lr 1 moves logp by [+0.5, -0.5].
    # Pass 2 with the stored old log-probs: ratio = [e^0.5, e^-0.5] = [1.648721, 0.606531]
    # row 0, A=+1: min(1.648721, 1.2) = 1.2 -> -1.2 (clipped); row 1, A=-1: min(-0.606531, -0.8) -> +0.8 (clipped)
    # loss = (-1.2 + 0.8) / 2 = -0.2; both clipped, so no gradient flows on pass 2.
    logp = torch.tensor([[-1.0], [-2.0]], requires_grad=True)
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 1)
    stored = logp.detach().clone()
    first = clipped_policy_loss(logp, stored, adv, mask, 0.2, over(2.0))
    assert_close(first.loss, torch.tensor(0.0))
    first.loss.backward()
    assert_close(logp.grad, torch.tensor([[-0.5], [0.5]]))
    with torch.no_grad():
        logp -= 1.0 * logp.grad
    logp.grad = None
    assert_close(torch.exp(logp - stored).detach(), torch.tensor([[1.648721], [0.606531]]))
    second = clipped_policy_loss(logp, stored, adv, mask, 0.2, over(2.0))
    assert_close(second.loss, torch.tensor(-0.2))
    assert second.clipped.item() == 2
    second.loss.backward()
    assert_close(logp.grad, torch.zeros(2, 1))
    # with clip-higher 0.28 the upper bound moves: (-1.28 + 0.8) / 2 = -0.24
    assert_close(clipped_policy_loss(logp, stored, adv, mask, 0.2, over(2.0), epsilon_high=0.28).loss, torch.tensor(-0.24))


# --- KL estimators -----------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    # logp 0, ref log 0.5: k1 = 0 - (-0.693147) = 0.693147; k3 = 0.5 + 0.693147 - 1 = 0.193147
    # logp log 0.5, ref 0: k1 = -0.693147 (negative: k1 is only unbiased on average); k3 = 2 - 0.693147 - 1 = 0.306853
    logp, ref = torch.tensor([0.0, LOG_HALF]), torch.tensor([LOG_HALF, 0.0])
    assert_close(kl_k1(logp, ref), torch.tensor([0.693147, -0.693147]))
    assert_close(kl_k3(logp, ref), torch.tensor([0.193147, 0.306853]))
    assert_close(kl_k3(ref, ref), torch.zeros(2))  # no divergence from itself
    assert KL_ESTIMATORS == {"k1": kl_k1, "k3": kl_k3}


def test_kl_k1_and_k3_as_loss_terms():
    # A = 0 leaves only beta * KL: k1: 0.1 * (0.693147 * 2) / 2 tokens = 0.0693147
    # k3 (the default estimator): 0.1 * (0.193147 * 2) / 2 tokens = 0.0193147
    logp, ref = torch.zeros(1, 2), torch.full((1, 2), LOG_HALF)
    parts = clipped_policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), 0.2, over(2.0), ref, 0.1, kl_estimator=kl_k1)
    assert_close(parts.loss, torch.tensor(0.0693147))
    assert_close(parts.kl, torch.tensor(2 * 0.693147))
    parts = clipped_policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), 0.2, over(2.0), ref_logp=ref, beta=0.1)
    assert_close(parts.loss, torch.tensor(0.0193147))


def test_kl_reward_penalty_by_hand():
    # row 0: logp [-1, -2], ref [-1.5, -3]: k1 = [0.5, 1.0], sum 1.5; row 1: logp [-1, -1], ref [-0.5, -1]: k1 [-0.5, 0], sum -0.5
    # the third token is masked out (its junk -7 must not count)
    # k1, beta 0.1: [1 - 0.15, 0 + 0.05] = [0.85, 0.05]
    # k3: row 0, d = ref - logp = [-0.5, -1]: (e^-0.5 + 0.5 - 1) + (e^-1 + 1 - 1) = 0.106531 + 0.367879 = 0.474410
    #     row 1, d = [0.5, 0]: e^0.5 - 0.5 - 1 = 0.148721;  rewards [1 - 0.047441, 0 - 0.014872]
    rewards = torch.tensor([1.0, 0.0])
    logp = torch.tensor([[-1.0, -2.0, -7.0], [-1.0, -1.0, -7.0]])
    ref = torch.tensor([[-1.5, -3.0, 0.0], [-0.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert_close(kl_reward_penalty(rewards, logp, ref, mask, 0.1), torch.tensor([0.85, 0.05]))
    assert_close(kl_reward_penalty(rewards, logp, ref, mask, 0.1, kl_k3), torch.tensor([0.952559, -0.0148721]))
    # grouped rewards [G=1, N=2] with log-probs [1, 2, T] give the same numbers; a failed grading stays NaN
    grouped = kl_reward_penalty(torch.tensor([[1.0, NAN]]), logp[None], ref[None], mask[None], 0.1)
    assert_close(grouped, torch.tensor([[0.85, NAN]]), equal_nan=True)


# --- DAPO's overlong penalty and dynamic sampling ----------------------------------------------------


def test_overlong_penalty_by_hand():
    # max_len 20, cache 4: free up to 16 tokens; (16 - L) / 4 between 16 and 20; -1 beyond
    # 10 -> 0; 16 -> 0; 17 -> -0.25; 18 -> -0.5; 20 -> -1; 21 -> -1; 40 -> -1
    lengths = torch.tensor([10, 16, 17, 18, 20, 21, 40])
    assert_close(overlong_penalty(lengths, 20, 4), torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]))
    # cache 0 is a hard step at max_len
    assert_close(overlong_penalty(torch.tensor([20, 21]), 20, 0), torch.tensor([0.0, -1.0]))


def test_keep_informative_groups_by_hand():
    # spread -> keep; all equal (all right / all wrong) -> drop; NaN (failed) entries ignored;
    # fewer than two valid rewards -> drop; small but real spread -> keep
    rewards = torch.tensor(
        [[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, NAN, 0.0], [1.0, NAN, NAN], [1.0, NAN, 1.0], [0.5, 0.5, 0.25]]
    )
    assert keep_informative_groups(rewards).tolist() == [True, False, False, True, False, False, True]

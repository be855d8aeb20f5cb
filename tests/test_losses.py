"""Post-training losses and weights against values worked by hand (comments show the work).

GRPO variants (clip-higher, KL estimators, KL as a reward penalty, overlong penalty, dynamic
sampling, mu = 2), DPO (sigmoid, cDPO, IPO), the Bradley-Terry reward-model loss and A-SFT.
TRL cross-checks on random inputs live in test_trl_parity.py.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from rftkit.algorithms.asft import BASELINES, WEIGHT_NORMALIZATIONS, asft_loss, asft_weights, prompt_groups
from rftkit.algorithms.dpo import LOSSES, dpo_loss, sequence_logps
from rftkit.algorithms.grpo import (
    KL_ESTIMATORS,
    clipped_policy_loss,
    keep_informative_groups,
    kl_k1,
    kl_k3,
    kl_reward_penalty,
    overlong_penalty,
)
from rftkit.algorithms.reward_model import bradley_terry_loss, preference_accuracy
from rftkit.algorithms.sft import sft_loss

NAN = float("nan")
LOG_HALF = math.log(0.5)


def over(n):
    """Token sum / n: the token-mean aggregation of a step with n completion tokens."""
    return lambda values, mask: (values * mask).sum() / n


# --- GRPO: two-sided clipping ---------------------------------------------------------------


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


# --- GRPO: KL estimators ------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    # logp 0, ref log 0.5: k1 = 0 - (-0.693147) = 0.693147; k3 = 0.5 + 0.693147 - 1 = 0.193147
    # logp log 0.5, ref 0: k1 = -0.693147 (negative: k1 is only unbiased on average); k3 = 2 - 0.693147 - 1 = 0.306853
    logp, ref = torch.tensor([0.0, LOG_HALF]), torch.tensor([LOG_HALF, 0.0])
    assert_close(kl_k1(logp, ref), torch.tensor([0.693147, -0.693147]))
    assert_close(kl_k3(logp, ref), torch.tensor([0.193147, 0.306853]))
    assert KL_ESTIMATORS == {"k1": kl_k1, "k3": kl_k3}


def test_k1_as_a_loss_term():
    # A = 0 leaves only beta * KL: 0.1 * (0.693147 * 2) / 2 tokens = 0.0693147 (k3 gives 0.0193147)
    logp, ref = torch.zeros(1, 2), torch.full((1, 2), LOG_HALF)
    parts = clipped_policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), 0.2, over(2.0), ref, 0.1, kl_estimator=kl_k1)
    assert_close(parts.loss, torch.tensor(0.0693147))
    assert_close(parts.kl, torch.tensor(2 * 0.693147))


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


# --- GRPO: DAPO's overlong penalty and dynamic sampling -------------------------------------------------


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


# --- DPO -------------------------------------------------------------------------------------


def test_sequence_logps_sum_and_average_over_the_answer_mask():
    # row 0: answer tokens -1, -2 (the -9 is masked): sum -3, mean -1.5; row 1: three -0.5: sum -1.5, mean -0.5
    token_logps = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert_close(sequence_logps(token_logps, mask), torch.tensor([-3.0, -1.5]))
    assert_close(sequence_logps(token_logps, mask, average=True), torch.tensor([-1.5, -0.5]))
    assert not LOSSES["sigmoid"].average_logps and LOSSES["ipo"].average_logps


# pair 0: chosen -1 vs ref -1.5 -> log-ratio +0.5; rejected -2 vs ref -1.5 -> -0.5; h = 1
# pair 1: chosen -3 vs ref -2 -> -1; rejected -1 vs ref -2 -> +1; h = -2
PAIRS = dict(
    policy_chosen_logps=torch.tensor([-1.0, -3.0]),
    policy_rejected_logps=torch.tensor([-2.0, -1.0]),
    ref_chosen_logps=torch.tensor([-1.5, -2.0]),
    ref_rejected_logps=torch.tensor([-1.5, -2.0]),
)


def test_dpo_sigmoid_by_hand():
    # beta 0.5: beta h = [0.5, -1]; -logsigmoid(0.5) = log(1 + e^-0.5) = 0.474077; -logsigmoid(-1) = log(1 + e) = 1.313262
    # mean = 0.893670; rewards = beta * log-ratios: chosen [0.25, -0.5], rejected [-0.25, 0.5]
    # d loss / d chosen = -beta * sigmoid(-beta h) / 2 = [-0.5 * 0.377541 / 2, -0.5 * 0.731059 / 2] = [-0.094385, -0.182765]
    chosen = PAIRS["policy_chosen_logps"].clone().requires_grad_()
    loss, r_chosen, r_rejected = dpo_loss(**{**PAIRS, "policy_chosen_logps": chosen}, beta=0.5)
    assert_close(loss, torch.tensor(0.893670))
    assert_close(r_chosen, torch.tensor([0.25, -0.5]))
    assert_close(r_rejected, torch.tensor([-0.25, 0.5]))
    loss.backward()
    assert_close(chosen.grad, torch.tensor([-0.094385, -0.182765]))
    assert not r_chosen.requires_grad


def test_dpo_label_smoothing_is_conservative_dpo():
    # e = 0.1: -(0.9) logsigmoid(beta h) - 0.1 logsigmoid(-beta h), and -logsigmoid(-x) = -logsigmoid(x) + x:
    # pair 0 (beta h = 0.5): 0.474077 + 0.1 * 0.5 = 0.524077; pair 1 (beta h = -1): 1.313262 - 0.1 = 1.213262
    # mean = 0.868670
    loss, _, _ = dpo_loss(**PAIRS, beta=0.5, label_smoothing=0.1)
    assert_close(loss, torch.tensor(0.868670))


def test_dpo_ipo_by_hand():
    # beta 0.25: target gap 1 / (2 * 0.25) = 2; (1 - 2)^2 = 1, (-2 - 2)^2 = 16; mean 8.5
    loss, r_chosen, _ = dpo_loss(**PAIRS, beta=0.25, loss_type="ipo")
    assert_close(loss, torch.tensor(8.5))
    assert_close(r_chosen, torch.tensor([0.125, -0.25]))
    with pytest.raises(AssertionError, match="label_smoothing"):
        dpo_loss(**PAIRS, beta=0.25, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(AssertionError, match="sigmoid"):
        dpo_loss(**PAIRS, beta=0.25, loss_type="hinge")


def test_dpo_ipo_uses_per_token_averages():
    # chosen answer 2 tokens: policy [-1, -2], ref [-2, -2]: average log-ratio (-1.5) - (-2) = 0.5
    # rejected answer 4 tokens: policy all -1, ref all -0.5: average log-ratio -0.5; h = 1
    # beta 0.5: (1 - 1)^2 = 0. Summed log-probs would give h = 1 - (-2) = 3 and loss (3 - 1)^2 = 4.
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    policy = torch.tensor([[-1.0, -2.0, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-2.0, -2.0, 0.0, 0.0], [-0.5, -0.5, -0.5, -0.5]])
    avg = LOSSES["ipo"].average_logps
    pol, rf = sequence_logps(policy, mask, avg), sequence_logps(ref, mask, avg)
    assert_close(dpo_loss(pol[:1], pol[1:], rf[:1], rf[1:], beta=0.5, loss_type="ipo")[0], torch.tensor(0.0))
    pol, rf = sequence_logps(policy, mask), sequence_logps(ref, mask)
    assert_close(dpo_loss(pol[:1], pol[1:], rf[:1], rf[1:], beta=0.5, loss_type="ipo")[0], torch.tensor(4.0))


# --- reward model ------------------------------------------------------------------------------


def test_bradley_terry_by_hand():
    # differences [1, -1]: -logsigmoid(1) = 0.313262, -logsigmoid(-1) = 1.313262; mean 0.813262
    # margin [0.5, 0]: differences [0.5, -1]: 0.474077, 1.313262; mean 0.893670
    r_chosen, r_rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    assert_close(bradley_terry_loss(r_chosen, r_rejected), torch.tensor(0.813262))
    assert_close(bradley_terry_loss(r_chosen, r_rejected, margin=torch.tensor([0.5, 0.0])), torch.tensor(0.893670))
    # a scalar margin of 0 changes nothing
    assert_close(bradley_terry_loss(r_chosen, r_rejected, margin=0.0), torch.tensor(0.813262))


def test_preference_accuracy_counts_ties_as_wrong():
    # 2 > 1 right, 0 > 1 wrong, 1 > 1 a tie (wrong), 3 > -1 right: 2 / 4
    assert_close(preference_accuracy(torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, -1.0])), torch.tensor(0.5))


# --- A-SFT -------------------------------------------------------------------------------------

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
    with pytest.raises(AssertionError, match="prompt_mean"):
        asft_weights(ASFT_REWARDS, ASFT_GROUPS, baseline="median")

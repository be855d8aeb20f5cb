"""DPO losses (sigmoid, cDPO, IPO) against values worked by hand (comments show the work).

TRL cross-checks on random inputs live in test_trl_parity.py.
"""

import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

from rftkit.algorithms.dpo import LOSSES, dpo_loss, sequence_logps


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
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(**PAIRS, beta=0.25, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="sigmoid"):
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


def test_loss_arguments_are_checked_under_python_O_too():
    """`assert` vanishes under -O; the losses raise ValueError instead."""
    script = ("import torch\nfrom rftkit.algorithms.dpo import dpo_loss\nfrom rftkit.algorithms.asft import asft_weights\n"
              "z = torch.zeros(2)\nfor call in (lambda: dpo_loss(z, z, z, z, beta=0.0), "
              "lambda: dpo_loss(z, z, z, z, beta=0.1, loss_type='hinge'), "
              "lambda: asft_weights(z, torch.tensor([0, 0]), baseline='median')):\n"
              "    try:\n        call()\n    except ValueError:\n        continue\n    raise SystemExit('not refused')\n")
    done = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout

"""The Bradley-Terry reward-model loss and preference accuracy against values worked by hand.

TRL cross-checks on random inputs live in test_trl_parity.py.
"""

import torch
from torch.testing import assert_close

from rftkit.algorithms.reward_model import bradley_terry_loss, preference_accuracy


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

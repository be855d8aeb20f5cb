"""The SFT loss against values worked by hand (comments show the work).

SFT on a model (answer tokens only, packing) is tested with the stage in tests/train/test_stages.py.
"""

import math

import torch
from torch.testing import assert_close

from rftkit.algorithms.sft import sft_loss


def test_sft_loss_counts_only_masked_tokens():
    # -(log 0.5 + log 0.25) / 2 = (0.693147 + 1.386294) / 2 = 1.039721; the unmasked -9 is ignored
    logp = torch.tensor([[math.log(0.5), math.log(0.25), -9.0]])
    assert_close(sft_loss(logp, torch.tensor([[1.0, 1.0, 0.0]])), torch.tensor(1.039721))


def test_sft_loss_num_tokens_lets_micro_batches_add_up_to_the_step():
    # two micro-batches of 2 and 1 answer tokens: each divided by the step's 3 tokens, they sum to the whole
    # batch's loss -(log 0.5 + log 0.25 + log 0.125) / 3 = (0.693147 + 1.386294 + 2.079442) / 3 = 1.386294
    logp = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.125), -9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    whole = sft_loss(logp, mask)
    assert_close(whole, torch.tensor(1.386294))
    assert_close(sft_loss(logp[:1], mask[:1], 3.0) + sft_loss(logp[1:], mask[1:], 3.0), whole)
    assert_close(sft_loss(logp[:1], mask[:1]), torch.tensor(1.039721))  # default: this batch's own 2 tokens
    # a weighted mask (A-SFT: each answer's weight on its tokens): -(2 log 0.5 + 2 log 0.25 + 0.5 log 0.125) / 3
    # = (1.386294 + 2.772589 + 1.039721) / 3 = 1.732868
    assert_close(sft_loss(logp, mask * torch.tensor([[2.0], [0.5]]), 3.0), torch.tensor(1.732868))

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

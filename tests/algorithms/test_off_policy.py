"""Asynchronous training's off-policy correction, worked by hand."""

from __future__ import annotations

import math

import torch

from rftkit.algorithms.grpo import mismatch_kl, truncated_is_weights


def test_truncated_importance_weights():
    now = torch.tensor([[math.log(0.5), math.log(0.9), math.log(0.2)]], requires_grad=True)
    behaviour = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.4)]])
    w = truncated_is_weights(now, behaviour, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, 0.5]]))  # 0.9 / 0.3 = 3, truncated at 2
    assert not w.requires_grad  # a weight, not a path for the gradient


def test_mismatch_kl_sums_the_masked_tokens():
    now = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    behaviour = torch.log(torch.tensor([[0.5, 0.5, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert math.isclose(float(mismatch_kl(now, behaviour, mask)), math.log(2), rel_tol=1e-6)  # 0 + log(0.5/0.25)

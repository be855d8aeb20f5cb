"""Expected calibration error and reliability bins, worked by hand."""

from __future__ import annotations

import math

import pytest

from rftkit.metrics.calibration import calibration_summary, expected_calibration_error, reliability_bins
from rftkit.types import Score


def test_ece_by_hand():
    # bin [0.9, 1.0]: confidences 0.9, 0.95, right 1 of 2 -> |0.5 - 0.925| = 0.425, weight 2/4
    # bin [0.2, 0.3): confidences 0.2, 0.2, right 0 of 2 -> |0 - 0.2| = 0.2, weight 2/4
    bins = reliability_bins([0.9, 0.95, 0.2, 0.2], [1, 0, 0, 0])
    assert bins[9]["count"] == 2 and bins[9]["accuracy"] == 0.5 and bins[9]["confidence"] == pytest.approx(0.925)
    assert bins[2]["count"] == 2
    assert expected_calibration_error(bins) == pytest.approx(0.5 * 0.425 + 0.5 * 0.2)


def test_a_calibrated_model_has_ece_zero_and_confidence_one_falls_in_the_last_bin():
    bins = reliability_bins([1.0, 1.0, 0.0, 0.0], [1, 1, 0, 0])
    assert expected_calibration_error(bins) == 0.0 and bins[9]["count"] == 2 and bins[0]["count"] == 2


def test_summary_reads_calibration_breakdowns_only():
    scores = [Score(1.0, {"correct": 1.0, "confidence": 0.8}), Score(0.0, {"correct": 0.0}),
              Score(None, error="x"), Score(1.0, {})]
    out = calibration_summary(scores)
    assert out["confidence_stated"] == 0.5  # 1 of the 2 calibration-graded samples stated one
    assert out["ece"] == pytest.approx(0.2)
    assert calibration_summary([Score(1.0, {})]) == {}
    assert math.isnan(expected_calibration_error(reliability_bins([], [])))

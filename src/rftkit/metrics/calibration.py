"""Expected calibration error and the reliability diagram's bins (`calibration` grader; docs/REASONING.md).

Confidences in [0, 1] are put in `n_bins` equal-width bins ([0, 0.1), ..., [0.9, 1.0]); a bin's
accuracy is the share of its samples that were right. ECE = sum over bins of
(bin count / all) * |accuracy - mean confidence|: 0 for a model whose stated confidence is how
often it is right, up to 1.
"""

from __future__ import annotations


def reliability_bins(confidence: list[float], correct: list[float], n_bins: int = 10) -> list[dict]:
    bins = [{"lo": i / n_bins, "hi": (i + 1) / n_bins, "count": 0, "confidence": 0.0, "accuracy": 0.0}
            for i in range(n_bins)]
    for c, y in zip(confidence, correct):
        b = bins[min(int(c * n_bins), n_bins - 1)]
        b["count"] += 1
        b["confidence"] += c
        b["accuracy"] += y
    for b in bins:
        if b["count"]:
            b["confidence"] /= b["count"]
            b["accuracy"] /= b["count"]
    return bins


def expected_calibration_error(bins: list[dict]) -> float:
    total = sum(b["count"] for b in bins)
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins) if total else float("nan")


def calibration_summary(scores) -> dict:
    """{ece, reliability, confidence_stated} over Scores whose breakdown has `confidence` and `correct`; {} if none."""
    graded = [s for s in scores if s is not None and s.reward is not None and "correct" in s.breakdown]
    stated = [s for s in graded if "confidence" in s.breakdown]
    if not graded:
        return {}
    bins = reliability_bins([s.breakdown["confidence"] for s in stated], [s.breakdown["correct"] for s in stated])
    return {"ece": expected_calibration_error(bins), "confidence_stated": len(stated) / len(graded), "reliability": bins}

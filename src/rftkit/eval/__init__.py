"""Evaluation: pass@k over sampled completions, and the `rft eval` commands' logic."""

from rftkit.metrics.passk import evaluate_groups, pass_at_k

__all__ = ["evaluate_groups", "pass_at_k"]

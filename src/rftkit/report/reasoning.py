"""The report's reasoning-model charts (docs/REASONING.md).

- Thinking and answer lengths, tokens per correct answer and the budget-hit ratio over training
  (`response/*` metrics, logged when reasoning.enabled); none for other runs.
- The reliability diagram of a `calibration` grader's evaluation (eval_base.json /
  eval_tuned.json `reliability`): each point is one confidence bin with samples, x its mean stated
  confidence, y how often those answers were right. A calibrated model lies on the diagonal;
  points below it are overconfident.
"""

from __future__ import annotations

from rftkit.report.svg import PALETTE, Series, line_chart, series


def _points(result: dict) -> list[tuple[float, float]]:
    bins = result.get("reliability") if isinstance(result, dict) else None
    if not isinstance(bins, list):
        return []
    return [(float(b["confidence"]), float(b["accuracy"])) for b in bins
            if isinstance(b, dict) and b.get("count") and isinstance(b.get("confidence"), (int, float))
            and isinstance(b.get("accuracy"), (int, float))]


def reliability_chart(before: dict, after: dict) -> str:
    """The diagram for base and tuned, or "" when neither evaluation has reliability bins."""
    base, tuned = _points(before), _points(after)
    if not base and not tuned:
        return ""
    series = [Series("perfect calibration", [(0.0, 0.0), (1.0, 1.0)], "#64748b", dashed=True, width=1.5),
              Series(f"base (ECE {before.get('ece', float('nan')):.3f})", base, PALETTE[1], markers=True),
              Series(f"tuned (ECE {after.get('ece', float('nan')):.3f})", tuned, PALETTE[0], markers=True)]
    return line_chart("reliability", "Reliability diagram (held-out)", series, x_label="stated confidence",
                      y_label="accuracy", x_integer=False)


def reasoning_charts(rows: list[dict]) -> list[str]:
    """Lengths and cost over training for runs with reasoning.enabled; [] for other runs."""
    if not series(rows, "response/thinking_length_mean"):
        return []

    def lines(*keys: tuple[str, str]) -> list[Series]:
        return [Series(label, series(rows, key), PALETTE[i % len(PALETTE)]) for i, (key, label) in enumerate(keys)]

    return [line_chart("thinking_length", "Thinking and answer length", lines(
                ("response/thinking_length_mean", "thinking (mean)"), ("response/thinking_length_max", "thinking (max)"),
                ("response/answer_length_mean", "answer (mean)")), y_label="tokens"),
            line_chart("token_cost", "Tokens per correct answer", lines(
                ("response/tokens_per_correct", "tokens per correct")), y_label="tokens"),
            line_chart("budget_hits", "Thinking budget hits", lines(
                ("response/budget_hit_ratio", "share of completions cut")), y_label="share")]

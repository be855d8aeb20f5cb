"""The report's per-source panel for a mixture (data.train as a list of sources; docs/DATA.md).

Sources are read from the metric names the step logs for them — `critic/rewards/NAME/mean`,
`data/NAME/prompt_share`, and `val/NAME/pass@1` / `val/NAME/reward_mean` for sources with a
`val` file — so a run of one file draws no panel.
"""

from __future__ import annotations

import re

from rftkit.report.svg import PALETTE, Series, line_chart, series

_SOURCE = re.compile(r"^critic/rewards/(.+)/mean$")


def source_names(rows: list[dict]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            if (m := _SOURCE.match(key)) is not None:
                names.setdefault(m.group(1))
    return list(names)


def source_charts(rows: list[dict]) -> list[str]:
    names = source_names(rows)
    if not names:
        return []

    def lines(key: str, **style) -> list[Series]:
        return [Series(name, series(rows, key.format(name)), PALETTE[i % len(PALETTE)], **style)
                for i, name in enumerate(names) if series(rows, key.format(name))]

    charts = [line_chart("source_rewards", "Training reward per source", lines("critic/rewards/{}/mean"), y_label="reward"),
              line_chart("source_shares", "Share of each step's prompts per source", lines("data/{}/prompt_share"),
                         y_label="share")]
    held_out = [Series(f"{s.label} {metric}", s.points, s.color, dashed=metric == "reward_mean", markers=True)
                for metric in ("pass@1", "reward_mean") for s in lines(f"val/{{}}/{metric}")]
    if held_out:
        charts.append(line_chart("source_val", "Held-out metrics per source", held_out, y_label="score"))
    return charts

"""`write_report(run_dir)`: one self-contained HTML page about a run.

The page reads only what a run leaves behind (metrics.jsonl, samples.jsonl, config.yaml), so
it works on a finished run, a crashed one, or one still training. It contains no URL, no
script and no external resource: CSS is inline, charts are inline SVG (see svg.py), and a
Content-Security-Policy forbids loading anything, so it opens offline and any user text
(prompts, completions, config) is inert even if escaping were ever missed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from rftkit.errors import UserError
from rftkit.report.svg import PALETTE, Band, Bars, Series, bar_chart, fmt, line_chart
from rftkit.metrics.health import check_health

SAMPLE_ROWS = 6  # rollouts shown per table (early, late): enough to see the change, short enough to read
TEXT_LIMIT = 2000  # characters of a prompt/completion shown; the rest is in samples.jsonl


@dataclass
class Run:
    path: Path
    metrics: list[dict]
    samples: list[dict]
    config_text: str | None
    bad_lines: dict[str, int] = field(default_factory=dict)  # file -> lines that were not JSON (a killed write)


def _read_jsonl(path: Path, bad: dict[str, int]) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad[path.name] = bad.get(path.name, 0) + 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            bad[path.name] = bad.get(path.name, 0) + 1
    return rows


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir).resolve()  # "." still gets a name in the title
    if not (run_dir / "metrics.jsonl").exists():
        raise UserError(f"{run_dir}: not a run directory (no metrics.jsonl); pass the directory a training run wrote")
    bad: dict[str, int] = {}
    metrics = sorted(_read_jsonl(run_dir / "metrics.jsonl", bad), key=lambda r: r["step"])
    samples = sorted(_read_jsonl(run_dir / "samples.jsonl", bad), key=lambda r: r["step"])  # stable: keeps row order
    config = run_dir / "config.yaml"
    return Run(run_dir, metrics, samples, config.read_text(errors="replace") if config.exists() else None, bad)


def _number(v) -> float | None:
    """A measured value, or None for null / NaN / anything that is not a number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def series(rows: list[dict], key: str) -> list[tuple[float, float]]:
    return [(r["step"], v) for r in rows if (v := _number(r.get(key))) is not None]


# ---- charts --------------------------------------------------------------------------------

def _line(name: str, title: str, rows: list[dict], keys: list[tuple[str, str]], y_label: str = "", **style) -> str:
    found = [Series(label, series(rows, key), PALETTE[i % len(PALETTE)], **style) for i, (key, label) in enumerate(keys)]
    return line_chart(name, title, found, y_label=y_label)


def reward_chart(rows: list[dict]) -> str:
    mean = series(rows, "critic/rewards/mean")
    std = dict(series(rows, "critic/rewards/std"))
    band = Band("mean ± std", [(x, m - std[x], m + std[x]) for x, m in mean if x in std], PALETTE[0])
    lines = [Series("mean", mean, PALETTE[0], width=2.5),
             Series("min", series(rows, "critic/rewards/min"), "#64748b", dashed=True, width=1.5),
             Series("max", series(rows, "critic/rewards/max"), PALETTE[2], dashed=True, width=1.5)]
    return line_chart("reward", "Training reward per step", lines, band=band, y_label="reward")


def _reward_bins(values: list[float]) -> tuple[list[str], list[tuple[float, float]]]:
    """Bins for a reward histogram: one per value when rewards are discrete (pass/fail, partial
    credit), else ten equal-width bins over the observed range."""
    distinct = sorted(set(values))
    if len(distinct) <= 10:
        return [fmt(v) for v in distinct], [(v, v) for v in distinct]
    lo, hi = distinct[0], distinct[-1]
    width = (hi - lo) / 10
    edges = [(lo + i * width, lo + (i + 1) * width) for i in range(10)]
    return [fmt(a) for a, _ in edges], edges


def _split_steps(samples: list[dict]) -> tuple[list[int], list[int]]:
    """The earliest and latest third of the sampled steps (disjoint once there are two)."""
    steps = sorted({r["step"] for r in samples})
    if not steps:
        return [], []
    k = max(1, len(steps) // 3)
    return steps[:k], (steps[-k:] if len(steps) > 1 else [])


def _span(steps: list[int]) -> str:
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}–{steps[-1]}"


def reward_histogram(samples: list[dict]) -> str:
    title = "Sampled rewards, early vs late"
    parts = [(f"{when} ({_span(steps)})", set(steps), PALETTE[i])
             for i, (when, steps) in enumerate(zip(("early", "late"), _split_steps(samples))) if steps]
    rewards = [[_number(r.get("reward")) for r in samples if r["step"] in steps] for _, steps, _ in parts]
    scored = [v for vals in rewards for v in vals if v is not None]
    if not scored:
        return bar_chart("reward_hist", title, [], [], "reward", "share of samples")
    labels, edges = _reward_bins(scored)
    groups = []
    for (label, _, color), vals in zip(parts, rewards):
        ok = [v for v in vals if v is not None]
        counts = [0] * len(edges)
        for v in ok:  # [a, b) bins, the top edge in the last one; discrete bins are (v, v)
            i = next((j for j, (a, b) in enumerate(edges) if a <= v < b or v == a), len(edges) - 1)
            counts[i] += 1
        failed = len(vals) - len(ok)
        label += f", n={len(ok)}" + (f", {failed} failed" if failed else "")
        groups.append(Bars(label, [c / len(ok) if ok else 0.0 for c in counts], len(ok), color))
    return bar_chart("reward_hist", title, labels, groups, "reward", "share of samples")


OFFLINE_VAL = ("val/loss", "val/unweighted_loss", "val/logp_margin", "val/accuracy", "val/reward_accuracy")


def offline_charts(rows: list[dict]) -> list[str]:
    """The loss and held-out metrics of the algorithms that do not generate (sft, dpo, reward_model, asft); none for GRPO."""
    if not any(series(rows, "train/loss")):
        return []
    held_out = [(k, k) for k in OFFLINE_VAL if series(rows, k)]
    return [_line("train_loss", "Training loss", rows, [("train/loss", "train/loss")], "loss"),
            _line("val_offline", "Held-out metrics", rows, held_out, "value", markers=True)]


def charts(run: Run) -> list[str]:
    rows = run.metrics
    return [
        reward_chart(rows),
        line_chart("val", "Validation", [
            Series("val/reward_mean", series(rows, "val/reward_mean"), PALETTE[0], markers=True),
            Series("val/pass@1", series(rows, "val/pass@1"), PALETTE[1], markers=True)], y_label="score"),
        *offline_charts(rows),
        _line("entropy", "Policy entropy", rows, [("actor/entropy", "entropy")], "nats / token"),
        _line("kl", "KL to reference", rows, [("actor/kl", "KL")], "per token"),
        _line("response_length", "Response length", rows,
              [("response_length/mean", "mean"), ("response_length/max", "max")], "tokens"),
        _line("grader_errors", "Grader errors and timeouts", rows,
              [("grader/errors", "errors"), ("grader/timeouts", "timeouts")], "count per step"),
        _line("grader_latency", "Grader latency", rows,
              [("grader/latency_p50", "p50"), ("grader/latency_p99", "p99")], "seconds"),
        reward_histogram(run.samples),
    ]


# ---- page sections -------------------------------------------------------------------------

def _last(rows: list[dict], key: str) -> tuple[float, float] | None:
    s = series(rows, key)
    return s[-1] if s else None


def header(run: Run) -> str:
    rows = run.metrics
    steps = [r["step"] for r in rows]
    mean = series(rows, "critic/rewards/mean")
    best = max(mean, key=lambda p: p[1]) if mean else None
    last = mean[-1] if mean else None
    val = _last(rows, "val/pass@1") or _last(rows, "val/reward_mean")
    val_key = "pass@1" if _last(rows, "val/pass@1") else "reward"
    errors = sum(v for _, v in series(rows, "grader/errors"))

    def card(label: str, value: str, sub: str = "") -> str:
        return (f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div>'
                f'<div class="sub">{escape(sub)}</div></div>')

    cards = [
        card("steps", str(len(steps)), _span(steps) if steps else "no metrics yet"),
        card("best reward", fmt(best[1]) if best else "–", f"step {best[0]:.0f}" if best else ""),
        card("last reward", fmt(last[1]) if last else "–", f"step {last[0]:.0f}" if last else ""),
        card(f"last val {val_key}", fmt(val[1]) if val else "–", f"step {val[0]:.0f}" if val else "not measured"),
        card("grader errors", f"{errors:.0f}", "total, masked out of the loss"),
    ]
    return (f'<header><h1>RFT run report: {escape(run.path.name)}</h1>'
            f'<div class="path">{escape(str(run.path))}</div><div class="cards">{"".join(cards)}</div></header>')


def health_box(warnings: list) -> str:
    if not warnings:
        return '<section class="health ok" id="health"><h2>Health</h2><p>No health warnings.</p></section>'
    items = "".join(
        f'<li><span class="code">{escape(w.code)}</span> <span class="step">step {escape(str(w.step))}</span>'
        f'<div class="message">{escape(w.message)}</div><div class="advice">What to do: {escape(w.advice)}</div></li>'
        for w in warnings)
    n = len(warnings)
    return (f'<section class="health warn" id="health"><h2>Health: {n} warning{"s" if n > 1 else ""}</h2>'
            f"<ul>{items}</ul></section>")


def _clip(text) -> str:
    text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + f"… [{len(text) - TEXT_LIMIT} more characters]"


def sample_table(title: str, rows: list[dict]) -> str:
    if not rows:
        return f'<h3>{escape(title)}</h3><p class="muted">No samples.</p>'
    body = []
    for r in rows:
        reward = _number(r.get("reward"))
        error = r.get("error")
        score = fmt(reward) if reward is not None else "failed"
        if error:
            score += f'<div class="error">{escape(_clip(str(error)))}</div>'
        body.append(
            f"<tr><td>{escape(str(r.get('step')))}</td><td><pre>{escape(_clip(r.get('prompt', '')))}</pre></td>"
            f"<td><pre>{escape(_clip(r.get('reference_answer', '')))}</pre></td>"
            f"<td><pre>{escape(_clip(r.get('completion', '')))}</pre></td><td class=\"num\">{score}</td></tr>")
    return (f'<h3>{escape(title)}</h3><table class="samples">'
            '<colgroup><col style="width:5em"><col style="width:28%"><col style="width:12%"><col><col style="width:7em">'
            '</colgroup><thead><tr><th>step</th><th>prompt</th>'
            f'<th>reference</th><th>completion</th><th>reward</th></tr></thead><tbody>{"".join(body)}</tbody></table>')


def samples_section(samples: list[dict]) -> str:
    if not samples:
        return '<section id="samples"><h2>Sampled rollouts</h2><p class="muted">No samples.jsonl rows.</p></section>'
    early, late = _split_steps(samples)
    early_rows = [r for r in samples if r["step"] in set(early)][:SAMPLE_ROWS]
    late_rows = [r for r in samples if r["step"] in set(late)][-SAMPLE_ROWS:]
    tables = sample_table(f"Early ({_span(early)})", early_rows)
    if late:
        tables += sample_table(f"Late ({_span(late)})", late_rows)
    return f'<section id="samples"><h2>Sampled rollouts</h2>{tables}</section>'


def last_values(rows: list[dict]) -> str:
    keys = sorted({k for r in rows for k in r if k != "step"})
    cells = []
    for k in keys:
        last = _last(rows, k)
        cells.append(f"<tr><td>{escape(k)}</td><td class=\"num\">{fmt(last[1]) if last else '–'}</td>"
                     f"<td class=\"num\">{f'{last[0]:.0f}' if last else ''}</td></tr>")
    if not cells:
        return ""
    return ('<details><summary>Last value of every metric</summary><table class="metrics"><thead><tr><th>metric</th>'
            f'<th>value</th><th>step</th></tr></thead><tbody>{"".join(cells)}</tbody></table></details>')


def render(run: Run, warnings: list) -> str:
    plots = "".join(f'<div class="chart">{c}</div>' for c in charts(run))
    config = (f'<details><summary>config.yaml</summary><pre class="config">{escape(run.config_text)}</pre></details>'
              if run.config_text is not None else '<p class="muted">No config.yaml in the run directory.</p>')
    notes = "".join(f'<p class="muted">{n} line(s) of {escape(f)} could not be read and were skipped.</p>'
                    for f, n in run.bad_lines.items())
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>RFT report: {escape(run.path.name)}</title>
<style>{CSS}</style>
</head>
<body>
{header(run)}
{health_box(warnings)}
<section id="charts"><h2>Metrics</h2>{notes}<div class="charts">{plots}</div>{last_values(run.metrics)}</section>
{samples_section(run.samples)}
<section id="config"><h2>Configuration</h2>{config}</section>
<footer>Written by rftkit from {escape(run.path.name)}/metrics.jsonl, samples.jsonl and config.yaml.</footer>
</body>
</html>
"""


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write RUN_DIR/report.html (or `out`) and return its path."""
    run = load_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    out.write_text(render(run, check_health(run.metrics)), encoding="utf-8")
    return out


CSS = """
:root { color-scheme: light; --fg: #1e293b; --muted: #64748b; --line: #e2e8f0; --bg: #f8fafc; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1280px; padding: 24px; color: var(--fg); background: #fff;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 2px; } h2 { font-size: 17px; margin: 28px 0 10px; } h3 { font-size: 15px; }
.path, .muted, footer { color: var(--muted); font-size: 13px; }
footer { margin-top: 32px; border-top: 1px solid var(--line); padding-top: 8px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 150px; background: var(--bg); }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; } .card .sub { color: var(--muted); font-size: 12px; }
.health { border-radius: 8px; padding: 4px 16px 8px; margin-top: 20px; border: 1px solid; }
.health h2 { margin: 10px 0 6px; }
.health.ok { background: #f0fdf4; border-color: #86efac; }
.health.warn { background: #fffbeb; border-color: #f59e0b; border-width: 2px; }
.health ul { padding-left: 18px; } .health li { margin: 8px 0; }
.health .code { font-weight: 600; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.health .step { color: var(--muted); } .health .advice { color: #92400e; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 16px; }
.chart { border: 1px solid var(--line); border-radius: 8px; padding: 6px; }
svg.plot { display: block; width: 100%; height: auto; font-family: inherit; }
svg .title { font-size: 15px; font-weight: 600; fill: var(--fg); }
svg .legend { font-size: 12px; fill: var(--fg); } svg .tick { font-size: 11px; fill: var(--muted); }
svg .axis-label { font-size: 12px; fill: var(--muted); } svg .nodata { font-size: 16px; fill: var(--muted); }
svg .frame { fill: none; stroke: #cbd5e1; } svg .grid { stroke: var(--line); } svg .axis { stroke: #94a3b8; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg); } td.num { text-align: right; white-space: nowrap; }
table.samples { table-layout: fixed; }
table.metrics { width: auto; min-width: 360px; margin-top: 8px; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; max-height: 14em; overflow: auto;
  font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre.config { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 10px; max-height: none; }
.error { color: #b91c1c; font-size: 12px; white-space: normal; }
details { margin-top: 12px; } summary { cursor: pointer; color: #334155; }
"""

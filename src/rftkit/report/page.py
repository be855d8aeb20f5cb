"""`write_report(run_dir)`: one self-contained HTML page about a run, headed by "did it work?".

The page reads only what a run leaves behind (metrics.jsonl, samples.jsonl, config.yaml), so
it works on a finished run, a crashed one, or one still training. Its headline is the change
in validation from the first to the last validation row (the smoothed training reward when a
run has no validation), never the best single step, which on a noisy RL curve is mostly noise.
When a held-out base-vs-tuned evaluation sits next to the run (eval_base.json + eval_tuned.json,
as `rft demo` writes them, in the run directory or the one above it) the page shows it too.

It contains no URL, no script and no external resource: CSS is inline, charts are inline SVG
(see svg.py), and a Content-Security-Policy forbids loading anything, so it opens offline and
any user text (prompts, completions, config) is inert even if escaping were ever missed. The one
link is relative, to the run's metrics.jsonl: long series are downsampled on the page, so the raw
values are a click away, and a link loads nothing until it is clicked.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from rftkit.errors import UserError
from rftkit.report.reasoning import reasoning_charts, reliability_chart
from rftkit.report.sources import source_charts
from rftkit.report.svg import (MAX_POINTS, PALETTE, Band, Bars, Series, number, bar_chart, fmt, line_chart,
                               series)
from rftkit.metrics.health import check_health

SAMPLE_ROWS = 6  # rollouts shown per table (early, late): enough to see the change, short enough to read
TEXT_LIMIT = 2000  # characters of a prompt/completion shown; the rest is in samples.jsonl
EVAL_FILES = ("eval_base.json", "eval_tuned.json")  # what `rft demo` (and `rft eval run --out`) writes


@dataclass
class Evaluation:
    """One held-out evaluation of the base model and of the tuned one (each `rft eval run`'s JSON)."""

    before: dict
    after: dict
    source: str = ""  # where it was read from, shown under the table


@dataclass
class Run:
    path: Path
    metrics: list[dict]
    samples: list[dict]
    config_text: str | None
    bad_lines: dict[str, int] = field(default_factory=dict)  # file -> lines that were not JSON (a killed write)
    evaluation: Evaluation | None = None
    notes: list[str] = field(default_factory=list)  # why an evaluation that was found is not shown


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
    evaluation, notes = find_evaluation(run_dir)
    return Run(run_dir, metrics, samples, config.read_text(errors="replace") if config.exists() else None, bad,
               evaluation, notes)


def _read_eval(path: Path) -> dict:
    try:
        result = json.loads(path.read_text(errors="replace"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path.name} is not JSON ({e})") from None
    if not isinstance(result, dict) or number(result.get("pass@1")) is None:
        raise ValueError(f"{path.name} has no pass@1: expected the JSON `rft eval run --out` writes")
    return result


def load_evaluation(base: Path, tuned: Path) -> Evaluation:
    """The base and tuned results of `rft eval run --out` (ValueError if either is unreadable)."""
    return Evaluation(_read_eval(Path(base)), _read_eval(Path(tuned)), f"{Path(base)} and {Path(tuned).name}")


def _evaluates(result: dict, run_dir: Path) -> bool:
    """Whether an eval's model is this run's (RUN_DIR/final or a checkpoint in it). A relative path was
    relative to wherever the eval ran, so only its directory names can be checked."""
    model = Path(str(result.get("model", "")))
    if model.is_absolute():
        return model.resolve().is_relative_to(run_dir)
    return run_dir.name in model.parts


def find_evaluation(run_dir: Path) -> tuple[Evaluation | None, list[str]]:
    """eval_base.json + eval_tuned.json in the run directory, else in its parent (the demo's layout:
    runs/demo/{eval_base,eval_tuned}.json and runs/demo/grpo/). One in the parent is used only if
    its tuned model is this run's, so the other runs of a shared parent do not claim it."""
    notes = []
    for where in (run_dir, run_dir.parent):
        base, tuned = (where / name for name in EVAL_FILES)
        if not (base.exists() and tuned.exists()):
            continue
        try:
            ev = load_evaluation(base, tuned)
        except ValueError as e:
            notes.append(f"Held-out evaluation in {where} not shown: {e}.")
            continue
        if where != run_dir and not _evaluates(ev.after, run_dir):
            notes.append(f"{tuned} evaluates {ev.after.get('model')}, not this run; not shown.")
            continue
        ev.source = os.path.relpath(base, run_dir) + " and " + os.path.relpath(tuned, run_dir)
        return ev, notes
    return None, notes


def smoothing_window(n: int) -> int:
    """An odd window that grows with the run: 5 points up to 125 steps, then n/25 (401 at 10k)."""
    w = max(5, n // 25)
    return w + (w % 2 == 0)


def moving_mean(points: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """Centred moving mean over `window` points (odd), the window shrinking at the ends rather than
    padding: a centred mean does not lag the curve the way a trailing one does.

    >>> moving_mean([(1, 0.0), (2, 3.0), (3, 0.0), (4, 3.0)], 3)
    [(1, 1.5), (2, 1.0), (3, 2.0), (4, 1.5)]
    """
    half, prefix = window // 2, [0.0]
    for _, v in points:
        prefix.append(prefix[-1] + v)
    out = []
    for i, (x, _) in enumerate(points):
        lo, hi = max(0, i - half), min(len(points), i + half + 1)
        out.append((x, (prefix[hi] - prefix[lo]) / (hi - lo)))
    return out


def smoothed(points: list[tuple[float, float]]) -> tuple[list[tuple[float, float]], int] | None:
    """The moving mean of `points` and its window, or None while the run is shorter than two
    windows (then the line would mostly show how the window was cut at the ends)."""
    w = smoothing_window(len(points))
    return (moving_mean(points, w), w) if len(points) >= 2 * w else None


# ---- charts --------------------------------------------------------------------------------

def _line(name: str, title: str, rows: list[dict], keys: list[tuple[str, str]], y_label: str = "", **style) -> str:
    found = [Series(label, series(rows, key), PALETTE[i % len(PALETTE)], **style) for i, (key, label) in enumerate(keys)]
    return line_chart(name, title, found, y_label=y_label)


def reward_chart(rows: list[dict]) -> str:
    mean = series(rows, "critic/rewards/mean")
    std = dict(series(rows, "critic/rewards/std"))
    band = Band("mean ± std", [(x, m - std[x], m + std[x]) for x, m in mean if x in std], PALETTE[0])
    smooth = smoothed(mean)
    lines = [Series("mean", mean, PALETTE[0], width=1.5, opacity=0.4 if smooth else 1.0),
             Series("min", series(rows, "critic/rewards/min"), "#64748b", dashed=True, width=1.5),
             Series("max", series(rows, "critic/rewards/max"), PALETTE[2], dashed=True, width=1.5)]
    if smooth:  # drawn last, so on top of the raw points it summarises
        lines.append(Series(f"smoothed ({smooth[1]}-step mean)", smooth[0], PALETTE[0], width=3))
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
    rewards = [[number(r.get("reward")) for r in samples if r["step"] in steps] for _, steps, _ in parts]
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
        *source_charts(rows),  # a mixture's sources (report/sources.py); none for one file
        *reasoning_charts(rows),  # reasoning.enabled runs: thinking/answer lengths, cost (report/reasoning.py)
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


HEADLINE_KEYS = ("val/pass@1", "val/reward_mean", "val/accuracy", "val/reward_accuracy", "val/loss")


def _fixed(v: float) -> bool:
    return v == 0 or 0.01 <= abs(v) < 1e5


def _num(v: float) -> str:
    """Three decimals, as the demo's summary prints them, unless that would hide the value."""
    return f"{v:.3f}" if _fixed(v) else fmt(v)


def _change(a: float, b: float) -> str:
    """b - a, in the precision a and b are shown in (so 0.275 → 0.275 reads +0.000, not +4e-05)."""
    d = b - a
    return f"{d:+.3f}" if _fixed(a) and _fixed(b) else ("+" if d >= 0 else "") + fmt(d)


def headline(rows: list[dict]) -> tuple[str, float, float, str] | None:
    """(what, start, end, where) answering "did it improve?": the first validation row against the
    last one, or, with fewer than two, the smoothed training reward at the start and at the end."""
    for key in HEADLINE_KEYS:
        val = series(rows, key)
        if len(val) >= 2:
            return key, val[0][1], val[-1][1], f"first → last validation, step {val[0][0]:.0f} → {val[-1][0]:.0f}"
    mean = series(rows, "critic/rewards/mean")
    if len(mean) < 2:
        return None
    smooth = smoothed(mean)
    what = f"train reward, {smooth[1]}-step mean" if smooth else "train reward, raw"
    points = smooth[0] if smooth else mean
    return what, points[0][1], points[-1][1], f"no validation; step {mean[0][0]:.0f} → {mean[-1][0]:.0f}"


def _card(label: str, value: str, sub: str = "", cls: str = "", id_: str = "") -> str:
    attrs = (f' id="{id_}"' if id_ else "") + f' class="card{" " + cls if cls else ""}"'
    return (f'<div{attrs}><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div>'
            f'<div class="sub">{escape(sub)}</div></div>')


def header(run: Run) -> str:
    rows = run.metrics
    steps = [r["step"] for r in rows]
    mean = series(rows, "critic/rewards/mean")
    last = mean[-1] if mean else None
    errors = sum(v for _, v in series(rows, "grader/errors"))
    head = headline(rows)

    cards = [_card("steps", str(len(steps)), _span(steps) if steps else "no metrics yet")]
    if head:
        what, a, b, where = head
        cards.append(_card(what, f"{_num(a)} → {_num(b)} ({_change(a, b)})", where, "headline", "headline"))
    else:
        cards.append(_card("validation", "–", "no validation or reward yet", "headline", "headline"))
    ev = run.evaluation
    before, after = (number(ev.before.get("pass@1")), number(ev.after.get("pass@1"))) if ev else (None, None)
    if before is not None and after is not None:
        cards.append(_card("held-out pass@1", f"{_num(before)} → {_num(after)} ({_change(before, after)})",
                           "base → tuned, see the evaluation below", "headline", "eval-headline"))
    cards.append(_card("last reward", fmt(last[1]) if last else "–", f"step {last[0]:.0f}" if last else ""))
    if not (head and head[0].startswith("val/")):  # else the headline already ends at the last validation
        val = _last(rows, "val/pass@1") or _last(rows, "val/reward_mean")
        val_key = "pass@1" if _last(rows, "val/pass@1") else "reward"
        cards.append(_card(f"last val {val_key}", fmt(val[1]) if val else "–",
                           f"step {val[0]:.0f}" if val else "not measured"))
    cards.append(_card("grader errors", f"{errors:.0f}", "total, masked out of the loss"))
    return (f'<header><h1>RFT run report: {escape(run.path.name)}</h1>'
            f'<div class="path">{escape(str(run.path))}</div><div class="cards">{"".join(cards)}</div></header>')


def _pass_ks(result: dict) -> list[str]:
    return sorted((k for k in result if re.fullmatch(r"pass@\d+", k) and k != "pass@1"), key=lambda k: int(k[5:]))


def evaluation_section(ev: Evaluation | None, notes: list[str]) -> str:
    """The base-vs-tuned table on the held-out set: before, after and change for pass@1, pass@k, reward."""
    notes_html = "".join(f'<p class="muted">{escape(n)}</p>' for n in notes)
    if ev is None:
        return (f'<section id="evaluation"><h2>Held-out evaluation</h2>{notes_html}<p class="muted">None found: '
                f'{" + ".join(EVAL_FILES)} (the output of <code>rft eval run --out</code> for the base and the tuned '
                "model, as <code>rft demo</code> writes them) in the run directory or the one above it.</p></section>")
    before, after = ev.before, ev.after
    keys = ["pass@1", *[k for k in _pass_ks(before) if k in after], "reward_mean", *(["ece"] if "ece" in after else [])]
    if before.get("grader_errors") or after.get("grader_errors"):
        keys.append("grader_errors")
    body = []
    for k in keys:
        a, b = number(before.get(k)), number(after.get(k))
        if a is None or b is None:
            continue
        better = b < a if k in ("grader_errors", "ece") else b > a  # fewer errors, lower calibration error
        trend = "" if a == b else (" up" if better else " down")
        counts = k == "grader_errors"  # a count, not a rate: no decimals
        cells = (f"{a:.0f}", f"{b:.0f}", f"{b - a:+.0f}") if counts else (_num(a), _num(b), _change(a, b))
        body.append(f'<tr><td>{escape(k)}</td><td class="num">{cells[0]}</td><td class="num">{cells[1]}</td>'
                    f'<td class="num change{trend}">{cells[2]}</td></tr>')
    differ = [k for k in ("data", "samples", "temperature", "seed") if before.get(k) != after.get(k)]
    warn = (f'<p class="error">Not the same test: before and after differ in {", ".join(differ)}; the change '
            "mixes the model with the test.</p>") if differ else ""
    test = ", ".join(x for x in (
        f"{before['n_items']} items" if "n_items" in before else "",
        f"{before['samples']} samples each" if "samples" in before else "",
        f"temperature {before['temperature']}" if "temperature" in before else "",
        f"data {before['data']}" if "data" in before else "") if x)
    about = " ".join(x for x in (
        f"{test}." if test else "",
        f"before: {before.get('model', '?')}; after: {after.get('model', '?')}.",
        f"From {ev.source}." if ev.source else "") if x)
    return (f'<section id="evaluation"><h2>Held-out evaluation: base vs tuned</h2>{notes_html}{warn}'
            '<table class="evaluation"><thead><tr><th>metric</th><th>before (base)</th><th>after (tuned)</th>'
            f'<th>change</th></tr></thead><tbody>{"".join(body)}</tbody></table>'
            f'<p class="muted">{escape(about)}</p>{_diagram(reliability_chart(before, after))}</section>')


def _diagram(chart: str) -> str:
    return f'<div class="charts"><div class="chart">{chart}</div></div>' if chart else ""


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


def conversation(messages: list) -> str:
    """A multi-turn episode as its messages: each turn with its role, tool calls and tool results visible."""
    out = []
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict):
            continue
        role = str(m.get("role", "?"))
        text = m.get("content") or ""
        calls = "".join(
            f'<div class="call">&rarr; {escape(str((c.get("function") or {}).get("name")))}'
            f'({escape(_clip(str((c.get("function") or {}).get("arguments"))))})</div>'
            for c in m.get("tool_calls") or [] if isinstance(c, dict))
        out.append(f'<div class="turn {escape(role)}"><span class="role">{escape(role)}</span>'
                   f"<pre>{escape(_clip(text))}</pre>{calls}</div>")
    return f'<div class="conversation">{"".join(out)}</div>'


def sample_table(title: str, rows: list[dict]) -> str:
    if not rows:
        return f'<h3>{escape(title)}</h3><p class="muted">No samples.</p>'
    body = []
    for r in rows:
        reward = number(r.get("reward"))
        error = r.get("error")
        score = fmt(reward) if reward is not None else "failed"
        if error:
            score += f'<div class="error">{escape(_clip(str(error)))}</div>'
        body.append(
            f"<tr><td>{escape(str(r.get('step')))}</td><td><pre>{escape(_clip(r.get('prompt', '')))}</pre></td>"
            f"<td><pre>{escape(_clip(r.get('reference_answer', '')))}</pre></td>"
            f"<td>{completion_cell(r)}</td><td class=\"num\">{score}</td></tr>")
    return (f'<h3>{escape(title)}</h3><table class="samples">'
            '<colgroup><col style="width:5em"><col style="width:28%"><col style="width:12%"><col><col style="width:7em">'
            '</colgroup><thead><tr><th>step</th><th>prompt</th>'
            f'<th>reference</th><th>completion</th><th>reward</th></tr></thead><tbody>{"".join(body)}</tbody></table>')


def completion_cell(row: dict) -> str:
    if isinstance(row.get("messages"), list):  # a multi-turn episode (docs/AGENTS.md)
        return conversation(row["messages"])
    if isinstance(row.get("reasoning"), str) and isinstance(row.get("answer"), str):  # a reasoning model's split
        return (f'<div class="thinking"><div class="label">thinking</div><pre>{escape(_clip(row["reasoning"]))}</pre></div>'
                f'<div class="answer"><div class="label">answer</div><pre>{escape(_clip(row["answer"]))}</pre></div>')
    return f"<pre>{escape(_clip(row.get('completion', '')))}</pre>"


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


def raw_data_note(run: Run, out_dir: Path) -> str:
    """Where every value is: the page draws at most MAX_POINTS points a series, metrics.jsonl has them all."""
    target = run.path / "metrics.jsonl"
    try:
        rel = Path(os.path.relpath(target, out_dir.resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path, so name the file without a link
        rel = None
    link = f'<a href="{escape(rel)}">metrics.jsonl</a>' if rel else escape(str(target))
    n = len(run.metrics)
    thinned = (f" Series longer than {MAX_POINTS} points are drawn as the min and max of each of {MAX_POINTS // 2} "
               "buckets, so spikes stay visible." if n > MAX_POINTS else "")
    return f'<p class="muted" id="raw-data">Raw data: {link} ({n} rows).{escape(thinned)}</p>'


def render(run: Run, warnings: list, out_dir: Path | None = None) -> str:
    """The page; `out_dir` is where it will be written (the run directory by default), for the raw-data link."""
    plots = "".join(f'<div class="chart">{c}</div>' for c in charts(run))
    config = (f'<details><summary>config.yaml</summary><pre class="config">{escape(run.config_text)}</pre></details>'
              if run.config_text is not None else '<p class="muted">No config.yaml in the run directory.</p>')
    notes = "".join(f'<p class="muted">{n} line(s) of {escape(f)} could not be read and were skipped.</p>'
                    for f, n in run.bad_lines.items())
    raw = raw_data_note(run, out_dir or run.path)
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
{evaluation_section(run.evaluation, run.notes)}
{health_box(warnings)}
<section id="charts"><h2>Metrics</h2>{notes}<div class="charts">{plots}</div>{raw}{last_values(run.metrics)}</section>
{samples_section(run.samples)}
<section id="config"><h2>Configuration</h2>{config}</section>
<footer>Written by rftkit from {escape(run.path.name)}/metrics.jsonl, samples.jsonl and config.yaml.</footer>
</body>
</html>
"""


def write_report(run_dir: Path, out: Path | None = None, evaluation: Evaluation | None = None) -> Path:
    """Write RUN_DIR/report.html (or `out`) and return its path. `evaluation` (see `load_evaluation`)
    replaces the one `find_evaluation` looks for next to the run."""
    run = load_run(run_dir)
    if evaluation is not None:
        run.evaluation, run.notes = evaluation, []
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    out.write_text(render(run, check_health(run.metrics), out.parent), encoding="utf-8")
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
.thinking pre { color: #64748b; background: #f8fafc; } .thinking .label, .answer .label { font-size: 11px; color: #64748b; text-transform: uppercase; }
.conversation .turn { border-left: 3px solid var(--line); padding: 2px 8px; margin: 4px 0; }
.conversation .turn.assistant { border-color: #60a5fa; } .conversation .turn.tool { border-color: #f59e0b; }
.conversation .turn.user { border-color: #a3a3a3; }
.conversation .role { font-size: 11px; text-transform: uppercase; color: var(--muted); }
.conversation .call { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; color: #1d4ed8; }
details { margin-top: 12px; } summary { cursor: pointer; color: #334155; }
.card.headline { border-color: #93c5fd; background: #eff6ff; min-width: 240px; }
.card.headline .label { text-transform: none; letter-spacing: 0; }
table.evaluation { width: auto; min-width: 480px; font-size: 14px; }
td.change.up { color: #15803d; font-weight: 600; } td.change.down { color: #b91c1c; font-weight: 600; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
"""

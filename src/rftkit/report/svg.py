"""Tiny inline-SVG charts for the run report: line charts and grouped histograms.

Why our own ~250 lines instead of matplotlib or a JS library: the report must be one file
that opens offline, with nothing to download and nothing to execute, and these two chart
kinds are all it needs. Every chart is an `<svg data-plot=NAME>`; every drawn series
carries `data-points=N` so tests (and a browser check) can see that something was drawn.
An empty chart says "no data" in words (`data-empty="true"`) instead of showing a blank frame.

Long series are downsampled before drawing (`downsample`): a chart is ~520 px wide, so a
10,000-step run would otherwise put ~20 points on every pixel column and make the page
megabytes. Each bucket keeps its min and max, so a one-step spike still shows; `data-points`
stays the number of measured values and `data-drawn` says how many vertices were drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

W, H = 600, 300  # viewBox size; the page scales it to the card width
LEFT, RIGHT, TOP, BOTTOM = 60, 18, 58, 42  # plot-area margins: title + legend on top, axis labels below

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]
MAX_POINTS = 500  # vertices drawn per series at most: about one per pixel column of the plot area
MARKER_LIMIT = 100  # above this many points a series is dense enough to read without a dot per point


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]  # (step, value), already free of missing values
    color: str = PALETTE[0]
    dashed: bool = False
    markers: bool = False  # draw a dot at every point (sparse series such as validation)
    width: float = 2.0
    opacity: float = 1.0  # < 1 for raw values drawn under a smoothed line


@dataclass
class Band:
    """A shaded range between `lower` and `upper` at each x (e.g. mean ± std)."""

    label: str
    points: list[tuple[float, float, float]]  # (x, lower, upper)
    color: str = PALETTE[0]


@dataclass
class Bars:
    label: str
    heights: list[float]  # one per bin
    count: int  # how many values it summarises (the data-points of this series)
    color: str = PALETTE[0]


@dataclass
class Axis:
    lo: float
    hi: float
    ticks: list[float] = field(default_factory=list)


def number(v) -> float | None:
    """A measured value, or None for null / NaN / anything that is not a number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def series(rows: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) points of one metric over metrics.jsonl rows, skipping steps where it was not measured."""
    return [(r["step"], v) for r in rows if (v := number(r.get(key))) is not None]


def fmt(v: float) -> str:
    """Short tick/number label: 0.25, 1.2k, 3e-05."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 1e-3:
        return f"{v:.4g}"
    return f"{v:.1e}"


def nice_axis(lo: float, hi: float, n: int = 5, integer: bool = False) -> Axis:
    """Round limits and about `n` ticks at 1/2/5 × 10^k steps covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:  # a flat series still needs a visible range
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, math.ceil(step))
    start, end = math.floor(lo / step) * step, math.ceil(hi / step) * step
    ticks, k = [], 0
    while start + k * step <= end + step * 1e-9:
        ticks.append(round(start + k * step, 12))
        k += 1
    return Axis(start, end, ticks)


def _buckets(n: int, max_points: int) -> list[range]:
    k = max(1, max_points // 2)  # two kept points (min and max) per bucket
    return [range(b * n // k, (b + 1) * n // k) for b in range(k)]


def downsample(points: list[tuple[float, float]], max_points: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most `max_points` of `points`: the min and the max of each of max_points/2 equal-count
    buckets, in step order. Min/max rather than a bucket mean so that spikes (a reward collapse,
    a grader outage) stay as tall as they were.

    >>> downsample([(1, 0), (2, 5), (3, 1), (4, 1)], max_points=2)
    [(1, 0), (2, 5)]
    """
    if len(points) <= max_points:
        return points
    out = []
    for idx in _buckets(len(points), max_points):
        chunk = points[idx.start:idx.stop]
        lo, hi = min(chunk, key=lambda p: p[1]), max(chunk, key=lambda p: p[1])
        out.extend(sorted({lo, hi}))  # a flat bucket keeps one point
    return out


def downsample_band(points: list[tuple[float, float, float]], max_points: int = MAX_POINTS) -> list[tuple]:
    """A band's envelope per bucket: (middle x, lowest lower, highest upper)."""
    if len(points) <= max_points:
        return points
    out = []
    for idx in _buckets(len(points), max_points * 2):  # one point per bucket, so twice the buckets
        chunk = points[idx.start:idx.stop]
        out.append((chunk[len(chunk) // 2][0], min(p[1] for p in chunk), max(p[2] for p in chunk)))
    return out


class _Frame:
    """Maps data to pixels inside the margins."""

    def __init__(self, x: Axis, y: Axis):
        self.x, self.y = x, y

    def px(self, v: float) -> float:
        return LEFT + (v - self.x.lo) / (self.x.hi - self.x.lo) * (W - LEFT - RIGHT)

    def py(self, v: float) -> float:
        return H - BOTTOM - (v - self.y.lo) / (self.y.hi - self.y.lo) * (H - TOP - BOTTOM)


def _open(name: str, title: str, empty: bool = False) -> list[str]:
    extra = ' data-empty="true"' if empty else ""
    return [
        f'<svg class="plot" data-plot="{escape(name)}"{extra} viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{escape(title)}">',  # inline in HTML: no xmlns (and so no URL at all in the file)
        f"<title>{escape(title)}</title>",
        f'<text class="title" x="{LEFT}" y="20">{escape(title)}</text>',
    ]


def no_data(name: str, title: str, why: str = "no data") -> str:
    parts = _open(name, title, empty=True)
    parts.append(f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}"/>')
    parts.append(f'<text class="nodata" x="{(LEFT + W - RIGHT) / 2}" y="{(TOP + H - BOTTOM) / 2}" '
                 f'text-anchor="middle">{escape(why)}</text>')
    return "\n".join(parts + ["</svg>"])


def _legend(entries: list[tuple]) -> list[str]:
    """One row of swatches under the title; entries are (label, color, kind: line|dash|band|bar[, opacity])."""
    out, x = [], float(LEFT)
    for label, color, kind, *rest in entries:
        if kind in ("band", "bar"):
            opacity = "0.25" if kind == "band" else "0.8"
            out.append(f'<rect x="{x:.1f}" y="31" width="18" height="10" fill="{color}" fill-opacity="{opacity}"/>')
        else:
            dash = ' stroke-dasharray="5 3"' if kind == "dash" else ""
            faint = f' stroke-opacity="{rest[0]}"' if rest and rest[0] < 1 else ""
            out.append(f'<line x1="{x:.1f}" y1="36" x2="{x + 18:.1f}" y2="36" stroke="{color}" '
                       f'stroke-width="2"{dash}{faint}/>')
        out.append(f'<text class="legend" x="{x + 23:.1f}" y="40">{escape(label)}</text>')
        x += 23 + 6.6 * len(label) + 16  # a rough text width: the legend only needs to not overlap
    return out


def _axes(f: _Frame, x_label: str, y_label: str, x_labels: list[tuple[float, str]] | None = None) -> list[str]:
    out = [f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}"/>']
    for t in f.y.ticks:
        y = f.py(t)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    for xv, label in x_labels if x_labels is not None else [(t, fmt(t)) for t in f.x.ticks]:
        x = f.px(xv)
        out.append(f'<line class="axis" x1="{x:.1f}" y1="{H - BOTTOM}" x2="{x:.1f}" y2="{H - BOTTOM + 5}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">{escape(label)}</text>')
    out.append(f'<text class="axis-label" x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" text-anchor="middle">{escape(x_label)}</text>')
    if y_label:
        out.append(f'<text class="axis-label" transform="translate(14 {(TOP + H - BOTTOM) / 2}) rotate(-90)" '
                   f'text-anchor="middle">{escape(y_label)}</text>')
    return out


def line_chart(name: str, title: str, series: list[Series], band: Band | None = None,
               x_label: str = "step", y_label: str = "", x_integer: bool = True) -> str:
    """Lines over steps; missing points were already dropped, so a line bridges unmeasured steps."""
    series = [s for s in series if s.points]
    if band is not None and not band.points:
        band = None
    if not series and band is None:
        return no_data(name, title)
    xs = [p[0] for s in series for p in s.points] + ([p[0] for p in band.points] if band else [])
    ys = [p[1] for s in series for p in s.points] + ([v for p in band.points for v in p[1:]] if band else [])
    f = _Frame(nice_axis(min(xs), max(xs), n=6, integer=x_integer), nice_axis(min(ys), max(ys)))
    parts = _open(name, title) + _axes(f, x_label, y_label)
    legend = []
    if band is not None:
        drawn = downsample_band(band.points)
        top = [f"{f.px(x):.1f},{f.py(hi):.1f}" for x, _, hi in drawn]
        bottom = [f"{f.px(x):.1f},{f.py(lo):.1f}" for x, lo, _ in reversed(drawn)]
        parts.append(f'<polygon class="band" data-series="{escape(band.label)}" data-points="{len(band.points)}" '
                     f'data-drawn="{len(drawn)}" points="{" ".join(top + bottom)}" fill="{band.color}" '
                     'fill-opacity="0.18" stroke="none"/>')
        legend.append((band.label, band.color, "band"))
    for s in series:
        drawn = downsample(s.points)
        d = " ".join(f"{'M' if i == 0 else 'L'}{f.px(x):.1f} {f.py(y):.1f}" for i, (x, y) in enumerate(drawn))
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        faint = f' stroke-opacity="{s.opacity}"' if s.opacity < 1 else ""
        parts.append(f'<g data-series="{escape(s.label)}" data-points="{len(s.points)}" data-drawn="{len(drawn)}">')
        parts.append(f'<path d="{d}" fill="none" stroke="{s.color}" stroke-width="{s.width}"{dash}{faint} '
                     f'stroke-linejoin="round" stroke-linecap="round"/>')
        if (s.markers and len(s.points) <= MARKER_LIMIT) or len(s.points) == 1:  # a single point has no line to show it
            parts.extend(f'<circle cx="{f.px(x):.1f}" cy="{f.py(y):.1f}" r="3.5" fill="{s.color}">'
                         f"<title>{escape(s.label)} step {fmt(x)}: {fmt(y)}</title></circle>" for x, y in s.points)
        parts.append("</g>")
        legend.append((s.label, s.color, "dash" if s.dashed else "line", s.opacity))
    if len(legend) > 1:
        parts.extend(_legend(legend))
    return "\n".join(parts + ["</svg>"])


def bar_chart(name: str, title: str, bins: list[str], groups: list[Bars], x_label: str, y_label: str) -> str:
    """Grouped bars: for each bin, one bar per group side by side (histograms to compare)."""
    groups = [g for g in groups if g.count > 0]
    if not groups or not bins:
        return no_data(name, title)
    top = max(max(g.heights) for g in groups)
    f = _Frame(Axis(0, len(bins)), nice_axis(0, top if top > 0 else 1))
    f.y.lo = 0.0  # bars grow from zero
    f.y.ticks = [t for t in f.y.ticks if t >= 0]
    labels = [(i + 0.5, b) for i, b in enumerate(bins)]
    parts = _open(name, title) + _axes(f, x_label, y_label, x_labels=labels)
    slot = (W - LEFT - RIGHT) / len(bins)
    bar_w = slot * 0.8 / len(groups)
    for gi, g in enumerate(groups):
        parts.append(f'<g data-series="{escape(g.label)}" data-points="{g.count}">')
        for i, h in enumerate(g.heights):
            x = LEFT + i * slot + slot * 0.1 + gi * bar_w
            y = f.py(h)
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{H - BOTTOM - y:.1f}" '
                         f'fill="{g.color}" fill-opacity="0.8"><title>{escape(g.label)} · {escape(bins[i])}: '
                         f"{fmt(h)}</title></rect>")
        parts.append("</g>")
    parts.extend(_legend([(g.label, g.color, "bar") for g in groups]))
    return "\n".join(parts + ["</svg>"])

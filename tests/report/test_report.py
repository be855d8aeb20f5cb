"""The HTML run report: self-contained, escaped, every chart drawn, and it really renders.

Unit tests read the HTML; the browser tests open it in Debian's headless Chromium (driven by
selenium through /usr/bin/chromedriver, so nothing is downloaded) and check what a user would
see: every chart has a size and drawn data, the answer to "did it work?" (the smoothed reward,
the validation change, the held-out table) is on screen, the console is clean, and nothing was fetched.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests.report.report_fixtures import (EVAL_BASE, EVAL_TUNED, SCRIPT, STEPS, make_run_dir, write_evaluation,
                                         write_jsonl)

from rftkit.errors import UserError
from rftkit.report import write_report
from rftkit.report import page as report_page
from rftkit.report.svg import MAX_POINTS, downsample

SMOOTHED = "smoothed (5-step mean)"  # 40 steps: the smallest window, 5
HEADLINE = "0.250 → 0.700 (+0.450)"  # val/pass@1 = 0.1 + 0.6 * step/40 at steps 10 and 40

PLOTS = {"reward", "val", "entropy", "kl", "response_length", "grader_errors", "grader_latency", "reward_hist"}


class _Plots(HTMLParser):
    """plot name -> {"empty": bool, "series": {label: data-points}} from the report's SVGs."""

    def __init__(self):
        super().__init__()
        self.plots: dict[str, dict] = {}
        self.scripts = 0
        self._current: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "svg" and "data-plot" in a:
            self._current = a["data-plot"]
            self.plots[self._current] = {"empty": a.get("data-empty") == "true", "series": {}}
        elif self._current and "data-points" in a:
            self.plots[self._current]["series"][a.get("data-series")] = int(a["data-points"])

    def handle_endtag(self, tag):
        if tag == "svg":
            self._current = None


def parse(html: str) -> _Plots:
    p = _Plots()
    p.feed(html)
    return p


@pytest.fixture
def report(tmp_path) -> Path:
    """The demo's layout: DEMO/eval_base.json, DEMO/eval_tuned.json and the run in DEMO/run-arith/."""
    run = make_run_dir(tmp_path / "demo")
    write_evaluation(tmp_path / "demo", run)
    return write_report(run)


# ---- the HTML itself ------------------------------------------------------------------------

def test_report_is_one_self_contained_file(report):
    assert report.name == "report.html" and report.parent.name == "run-arith"
    html = report.read_text()
    lower = html.lower()
    for external in ("http://", "https://", "file:", "src=", "url(", "@import", "<link", "<script", "<iframe"):
        assert external not in lower, f"report must not reference or run anything external: found {external!r}"
    # The one link: the raw data next to the page, followed only on a click (nothing is loaded).
    assert re.findall(r"href=", lower) == ["href="] and '<a href="metrics.jsonl">' in html
    assert "default-src 'none'" in html  # CSP: even a missed escape could not load or run anything


def test_user_text_is_escaped(report):
    html = report.read_text()
    assert SCRIPT not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the completion, shown as text
    assert "&lt;/pre&gt;&lt;script&gt;alert(&#x27;config&#x27;)" in html  # config.yaml cannot close its <pre>
    assert "&amp; &quot;quotes&quot;" in html
    assert parse(html).scripts == 0


def test_every_plot_is_drawn_with_the_right_number_of_points(report):
    html = report.read_text()
    plots = parse(html).plots
    assert set(plots) == PLOTS
    assert not [name for name, p in plots.items() if p["empty"] or not p["series"]]
    assert plots["reward"]["series"] == {"mean ± std": STEPS, "mean": STEPS, "min": STEPS, "max": STEPS,
                                         SMOOTHED: STEPS}  # the smoothed line summarises every step
    assert plots["val"]["series"] == {"val/reward_mean": 4, "val/pass@1": 4}  # every 10 steps
    assert plots["kl"]["series"] == {"KL": STEPS - 1}  # null on step 1: skipped, not drawn as 0
    assert plots["grader_latency"]["series"] == {"p50": STEPS - 4, "p99": STEPS - 4}  # null on steps 9, 18, 27, 36
    assert plots["response_length"]["series"] == {"mean": STEPS, "max": STEPS}
    # samples at steps 1, 5, 10, ..., 40 (9 steps, 4 rows each): early third = 1, 5, 10 (one grading failed)
    assert plots["reward_hist"]["series"] == {"early (steps 1–10), n=11, 1 failed": 11, "late (steps 30–40), n=12": 12}


def test_header_health_samples_and_config(report):
    html = report.read_text()
    assert "RFT run report: run-arith" in html
    assert '<div class="value">40</div>' in html  # steps
    assert f'<div class="label">val/pass@1</div><div class="value">{HEADLINE}</div>' in html
    assert "first → last validation, step 10 → 40" in html
    assert "best reward" not in html  # the noisiest step is no headline
    assert "entropy_collapse" in html and "What to do:" in html  # the real health checks ran on metrics.jsonl
    assert 'class="health warn"' in html
    assert "Early (steps 1–10)" in html and "Late (steps 30–40)" in html
    assert 'failed<div class="error">timeout after 5.0 s</div>' in html  # a failed grading says why
    assert "<details><summary>config.yaml</summary>" in html and "num_generations: 4" in html


def test_out_path_and_missing_inputs_draw_no_data(tmp_path):
    run = tmp_path / "sparse"
    run.mkdir()
    rows = [{"step": s, "critic/rewards/mean": 0.1 * s, "actor/entropy": None} for s in range(1, 4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "critic/rew')
    out = write_report(run, tmp_path / "elsewhere.html")
    assert out == tmp_path / "elsewhere.html" and not (run / "report.html").exists()
    html = out.read_text()
    plots = parse(html).plots
    assert set(plots) == PLOTS
    assert not plots["reward"]["empty"] and plots["reward"]["series"] == {"mean": 3}
    for name in PLOTS - {"reward"}:
        assert plots[name]["empty"] and not plots[name]["series"], name
    assert html.count(">no data</text>") == len(PLOTS) - 1
    assert "1 line(s) of metrics.jsonl could not be read" in html  # the line a killed run cut short
    assert "No samples.jsonl rows." in html and "No config.yaml" in html and "No health warnings." in html


def test_continuous_rewards_get_ten_bins(tmp_path):
    run = make_run_dir(tmp_path)
    rows = [{"step": s, "reward": (s * 7 + i) % 23 / 22, "prompt": "p", "completion": "c"}
            for s in range(1, 31) for i in range(3)]
    write_jsonl(run / "samples.jsonl", rows)
    html = write_report(run).read_text()
    svg = html[html.index('data-plot="reward_hist"'):]
    svg = svg[: svg.index("</svg>")]
    shares: dict[str, list[float]] = {}  # each bar's tooltip: "<group> · <bin>: <share>"
    for group, share in re.findall(r"<title>(early|late) [^<]*· [^<:]*: ([\d.]+)</title>", svg):
        shares.setdefault(group, []).append(float(share))
    assert {g: len(v) for g, v in shares.items()} == {"early": 10, "late": 10}
    assert all(sum(v) == pytest.approx(1, abs=1e-3) for v in shares.values())  # every reward landed in a bin
    assert parse(html).plots["reward_hist"]["series"] == {"early (steps 1–10), n=30": 30, "late (steps 21–30), n=30": 30}


def test_health_warnings_are_shown_and_escaped(tmp_path, monkeypatch):
    from dataclasses import dataclass

    @dataclass
    class Warning_:
        code: str
        step: int
        message: str
        advice: str

    monkeypatch.setattr(report_page, "check_health", lambda rows: [
        Warning_("kl_blowup", 12, "KL rose to <b>9</b>", "lower the learning rate & retry"),
        Warning_("grader_errors", 30, "40% failed", "fix the grader")])
    html = write_report(make_run_dir(tmp_path)).read_text()
    assert "Health: 2 warnings" in html
    assert "KL rose to &lt;b&gt;9&lt;/b&gt;" in html and "lower the learning rate &amp; retry" in html
    assert "step 12" in html and "step 30" in html


def test_smoothed_line_is_drawn_over_the_faint_raw_mean(report):
    html = report.read_text()
    svg = html[html.index('data-plot="reward"'):]
    svg = svg[: svg.index("</svg>")]
    raw, smooth = svg.index('data-series="mean"'), svg.index(f'data-series="{SMOOTHED}"')
    assert raw < smooth  # later in the SVG is on top
    assert 'stroke-opacity="0.4"' in svg[raw:smooth] and "stroke-opacity" not in svg[smooth:svg.index("</g>", smooth)]
    assert f">{SMOOTHED}</text>" in svg  # the legend names the window


def test_smoothing_window_and_moving_mean_by_hand():
    assert [report_page.smoothing_window(n) for n in (3, 40, 125, 150, 10_000)] == [5, 5, 5, 7, 401]
    # window 3: (0+3)/2, (0+3+0)/3, (3+0+3)/3, (0+3)/2; the ends average what is there
    points = [(1, 0.0), (2, 3.0), (3, 0.0), (4, 3.0)]
    assert report_page.moving_mean(points, 3) == [(1, 1.5), (2, 1.0), (3, 2.0), (4, 1.5)]
    assert report_page.smoothed(points) is None  # shorter than two windows: no smoothed line
    assert report_page.moving_mean(points, 1) == points


def test_headline_without_validation_is_the_smoothed_train_reward(tmp_path):
    rows = [{"step": s, "critic/rewards/mean": 0.01 * s} for s in range(1, 41)]
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    html = write_report(tmp_path).read_text()
    # 5-step centred mean: (0.01 + 0.02 + 0.03) / 3 at step 1, (0.38 + 0.39 + 0.40) / 3 at step 40
    assert ('<div class="label">train reward, 5-step mean</div><div class="value">0.020 → 0.390 (+0.370)</div>'
            '<div class="sub">no validation; step 1 → 40</div>') in html
    assert "last val pass@1" not in html and "last val reward" in html  # the card the headline did not replace


def test_headline_with_one_validation_row_falls_back_and_keeps_it(tmp_path):
    rows = [{"step": s, "critic/rewards/mean": 0.5, **({"val/pass@1": 0.3} if s == 3 else {})} for s in range(1, 4)]
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    html = write_report(tmp_path).read_text()
    assert '<div class="label">train reward, raw</div><div class="value">0.500 → 0.500 (+0.000)</div>' in html
    assert '<div class="label">last val pass@1</div><div class="value">0.3</div>' in html


def _eval_rows(html: str) -> list[list[str]]:
    table = html[html.index('<table class="evaluation">'):]
    table = table[: table.index("</table>")]
    return [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr><td.*?</tr>", table)]


def test_evaluation_table_from_the_demo_layout(report):
    html = report.read_text()
    assert _eval_rows(html) == [["pass@1", "0.200", "0.450", "+0.250"], ["pass@8", "0.500", "0.750", "+0.250"],
                                ["reward_mean", "0.300", "0.500", "+0.200"]]
    assert '<td class="num change up">+0.250</td>' in html
    assert "50 items, 8 samples each, temperature 1.0, data examples/arithmetic/test.jsonl." in html
    assert "From ../eval_base.json and ../eval_tuned.json." in html
    assert '<div class="value">0.200 → 0.450 (+0.250)</div><div class="sub">base → tuned' in html  # its card


def test_evaluation_in_the_run_dir_or_passed_explicitly(tmp_path):
    run = make_run_dir(tmp_path)
    write_evaluation(run, run, model="anything")  # in the run directory itself: no model check
    assert _eval_rows(write_report(run).read_text())[0] == ["pass@1", "0.200", "0.450", "+0.250"]
    ev = report_page.Evaluation({**EVAL_BASE, "pass@1": 0.1}, {**EVAL_TUNED, "pass@1": 0.05, "grader_errors": 3})
    rows = _eval_rows(write_report(run, evaluation=ev).read_text())
    assert rows[0] == ["pass@1", "0.100", "0.050", "-0.050"] and rows[-1] == ["grader_errors", "0", "3", "+3"]
    html = write_report(run, evaluation=ev).read_text()
    assert '<td class="num change down">-0.050</td>' in html and '<td class="num change down">+3</td>' in html
    assert "temperature 1.0, data examples/arithmetic/test.jsonl. before: bundled:tiny-arith; after: bundled" in html


def test_evaluation_of_another_run_or_test_is_flagged(tmp_path):
    other = make_run_dir(tmp_path / "demo", "other-run")
    write_evaluation(tmp_path / "demo", tmp_path / "demo" / "grpo")  # the parent's eval is of demo/grpo
    html = write_report(other).read_text()
    assert 'class="evaluation"' not in html and "held-out pass@1" not in html
    assert "evaluates runs/demo/grpo/final, not this run; not shown." in html
    write_evaluation(tmp_path / "demo", other, model=str(tmp_path / "elsewhere" / "other-run" / "final"))
    assert "not this run; not shown." in write_report(other).read_text()  # an absolute path must be inside the run
    write_evaluation(tmp_path / "demo", other, model=str(other / "checkpoint-40"))
    assert _eval_rows(write_report(other).read_text())[0] == ["pass@1", "0.200", "0.450", "+0.250"]
    run = make_run_dir(tmp_path / "demo", "grpo")
    write_evaluation(tmp_path / "demo", run, data="train.jsonl", temperature=0.7)
    assert "Not the same test: before and after differ in data, temperature" in write_report(run).read_text()


def test_no_evaluation_says_where_it_would_be(tmp_path):
    html = write_report(make_run_dir(tmp_path)).read_text()
    assert 'class="evaluation"' not in html and "held-out pass@1" not in html
    assert "None found: eval_base.json + eval_tuned.json" in html
    (tmp_path / "eval_base.json").write_text("{not json")
    (tmp_path / "eval_tuned.json").write_text("{}")
    assert "not shown: eval_base.json is not JSON" in write_report(tmp_path / "run-arith").read_text()


def test_downsample_keeps_spikes_and_order():
    flat = [(s, 0.0) for s in range(1, 10_001)]
    flat[5002] = (5003, 1.0)
    drawn = downsample(flat)
    assert len(drawn) <= MAX_POINTS and (5003, 1.0) in drawn
    assert [x for x, _ in drawn] == sorted({x for x, _ in drawn})
    assert downsample(flat[:MAX_POINTS]) == flat[:MAX_POINTS]  # short series are drawn as they are


LONG = 10_000
SIZE_LIMIT = 300_000  # bytes; before downsampling every step was drawn (1.9 MB at 10k steps)


@pytest.fixture
def long_report(tmp_path) -> Path:
    return write_report(make_run_dir(tmp_path, "long-run", steps=LONG))


def test_a_10k_step_run_gives_a_small_page(long_report):
    html = long_report.read_text()
    assert long_report.stat().st_size < SIZE_LIMIT, f"{long_report.stat().st_size} bytes"
    plots = parse(html).plots
    assert plots["reward"]["series"]["mean"] == LONG and plots["reward"]["series"]["smoothed (401-step mean)"] == LONG
    assert plots["val"]["series"] == {"val/reward_mean": LONG // 10, "val/pass@1": LONG // 10}
    drawn = [int(n) for n in re.findall(r'data-drawn="(\d+)"', html)]
    assert drawn and max(drawn) <= MAX_POINTS
    assert "<circle" not in html[html.index('data-plot="val"'):html.index('data-plot="entropy"')]  # 1,000 dots: no
    assert '<a href="metrics.jsonl">metrics.jsonl</a> (10000 rows)' in html and "spikes stay visible" in html
    assert '<div class="label">val/pass@1</div><div class="value">0.101 → 0.700 (+0.599)</div>' in html


def test_raw_data_link_is_relative_to_where_the_page_is(tmp_path):
    run = make_run_dir(tmp_path / "runs")
    (tmp_path / "pages").mkdir()
    html = write_report(run, tmp_path / "pages" / "r.html").read_text()
    assert '<a href="../runs/run-arith/metrics.jsonl">metrics.jsonl</a> (40 rows).' in html


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError, match="no metrics.jsonl"):
        write_report(tmp_path)


# ---- in a real browser ----------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # belt and braces: no name resolves, so nothing can leave the machine
]

# Returns the page's answer to "did it work?" as a user sees it: text only from elements that are on screen.
ANSWER = """
const shown = el => {
  if (!el) return false;
  const r = el.getBoundingClientRect(), css = getComputedStyle(el);
  return r.width > 0 && r.height > 0 && css.visibility === 'visible' && css.display !== 'none' && +css.opacity > 0;
};
const text = sel => { const el = document.querySelector(sel); return shown(el) ? el.innerText : null; };
const reward = document.querySelector('svg[data-plot="reward"]');
const raw = reward.querySelector('[data-series="mean"] path');
const smooth = reward.querySelector('[data-series^="smoothed"] path');
const box = smooth && smooth.getBBox();
return {
  headline: text('#headline'),
  eval_headline: text('#eval-headline'),
  eval_table: shown(document.querySelector('#evaluation table')) ?
    [...document.querySelectorAll('#evaluation tbody tr')].map(tr => [...tr.cells].map(td => td.innerText)) : null,
  up_color: (el => el && getComputedStyle(el).color)(document.querySelector('#evaluation td.change.up')),
  smoothed: smooth && shown(smooth) && box.width > 0 ? smooth.parentNode.dataset.series : null,
  smoothed_on_top: !!smooth && !!(raw.compareDocumentPosition(smooth) & Node.DOCUMENT_POSITION_FOLLOWING),
  opacity: smooth && [getComputedStyle(raw).strokeOpacity, getComputedStyle(smooth).strokeOpacity],
  raw_link: shown(document.querySelector('#raw-data a')) ? document.querySelector('#raw-data a').href : null,
};
"""

# Returns a list of problems; [] means every chart has a size and drew its data (or says "no data").
PAGE_CHECKS = """
const problems = [];
const plots = [...document.querySelectorAll('svg[data-plot]')];
if (plots.length === 0) problems.push('no svg[data-plot] at all');
for (const svg of plots) {
  const name = svg.dataset.plot, box = svg.getBoundingClientRect();
  if (!(box.width > 0 && box.height > 0)) problems.push(`${name}: zero-size svg`);
  const series = [...svg.querySelectorAll('[data-points]')];
  if (svg.dataset.empty === 'true') {
    if (!svg.textContent.includes('no data')) problems.push(`${name}: empty plot without a "no data" message`);
    if (series.length) problems.push(`${name}: marked empty but has series`);
    continue;
  }
  if (!series.length) problems.push(`${name}: no data series`);
  for (const s of series) {
    const marks = s.matches('path,polyline,polygon,rect,circle') ? [s] : [...s.querySelectorAll('path,polyline,polygon,rect,circle')];
    const b = s.getBBox();
    if (!(+s.dataset.points > 0)) problems.push(`${name}/${s.dataset.series}: data-points=${s.dataset.points}`);
    if (!marks.length) problems.push(`${name}/${s.dataset.series}: nothing drawn`);
    if (!(b.width > 0 || b.height > 0)) problems.push(`${name}/${s.dataset.series}: drawn with zero size`);
  }
}
return problems;
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def headless_chromium(profile: Path, what: str, flags: list[str] = CHROMIUM_FLAGS):
    """A selenium driver of Debian's headless Chromium (console logs kept); skips, or fails under CI, without it."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [p for p in (chromium, driver_path) if not Path(p).exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium Python package (pip install selenium)")
    if missing:
        msg = (f"the {what} browser test needs Debian's headless Chromium: apt-get install chromium chromium-driver "
               f"(and pip install selenium); missing: {', '.join(missing)}")
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    options = Options()
    options.binary_location = chromium
    for flag in flags + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium then never runs Selenium Manager (no download, works offline).
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-profile"), "report")
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, path: Path) -> dict:
    """Load a file and return what a test needs to judge it: chart problems, console errors, fetches."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.resolve().as_uri())
    return {
        "problems": driver.execute_script(PAGE_CHECKS),
        "errors": [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")],
        "requests": driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"),
    }


def _screenshot(driver, path: Path) -> Path:
    """Full-page PNG via the DevTools protocol (selenium's Chrome driver only shoots the viewport)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def test_report_renders_in_chromium(browser, report, tmp_path):
    seen = _open(browser, report)
    assert seen["problems"] == []
    assert seen["errors"] == [], "the browser console logged errors"
    assert seen["requests"] == [], "the report fetched resources; it must be self-contained"
    assert browser.execute_script("return document.querySelectorAll('svg[data-plot]:not([data-empty])').length") == len(PLOTS)
    assert browser.execute_script("return document.querySelectorAll('script').length") == 0
    # The injected script is on the page as visible text, not as an element.
    assert SCRIPT in browser.execute_script("return document.querySelector('#samples').innerText")
    assert "entropy_collapse" in browser.execute_script("return document.querySelector('#health').innerText")
    answer = browser.execute_script(ANSWER)
    assert answer["headline"] == f"val/pass@1\n{HEADLINE}\nfirst → last validation, step 10 → 40"
    assert answer["eval_headline"].startswith("held-out pass@1\n0.200 → 0.450 (+0.250)")
    assert answer["eval_table"] == [["pass@1", "0.200", "0.450", "+0.250"], ["pass@8", "0.500", "0.750", "+0.250"],
                                    ["reward_mean", "0.300", "0.500", "+0.200"]]
    assert answer["up_color"] == "rgb(21, 128, 61)"  # an improvement is green
    assert answer["smoothed"] == SMOOTHED and answer["smoothed_on_top"] and answer["opacity"] == ["0.4", "1"]
    assert answer["raw_link"] == (report.parent / "metrics.jsonl").resolve().as_uri()
    png = _screenshot(browser, tmp_path / "report.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a page of charts, not a blank image


def test_long_run_renders_in_chromium(browser, long_report, tmp_path):
    seen = _open(browser, long_report)
    assert seen["problems"] == [] and seen["errors"] == [] and seen["requests"] == []
    answer = browser.execute_script(ANSWER)
    assert answer["eval_table"] is None and answer["up_color"] is None  # no evaluation next to this run
    assert answer["smoothed"] == "smoothed (401-step mean)"
    assert answer["headline"].startswith("val/pass@1\n0.101 → 0.700 (+0.599)")
    _screenshot(browser, tmp_path / "long.png")


def test_no_data_plots_render_in_chromium(browser, tmp_path):
    run = tmp_path / "empty-run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "critic/rewards/mean": null}\n')
    seen = _open(browser, write_report(run))
    assert seen["problems"] == [] and seen["errors"] == [] and seen["requests"] == []
    assert browser.execute_script("return document.querySelectorAll('svg[data-empty=\"true\"]').length") == len(PLOTS)
    _screenshot(browser, tmp_path / "empty.png")


def test_browser_checks_catch_a_bad_page(browser, tmp_path):
    """The checks above are not vacuous: a page with an external image, a console error and an
    undrawn chart fails every one of them."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><img src="http://example.invalid/x.png"><script>console.error("boom")</script>'
                   '<svg data-plot="reward" width="300" height="100"><g data-points="3"></g></svg>')
    seen = _open(browser, bad)
    assert seen["problems"] == ["reward/undefined: nothing drawn", "reward/undefined: drawn with zero size"]
    assert any("boom" in e["message"] for e in seen["errors"])
    assert seen["requests"] == ["http://example.invalid/x.png"]


def test_offline_runs_get_loss_and_held_out_charts(tmp_path):
    """An SFT/DPO-style run (no rewards) still gets its loss and held-out metrics plotted."""
    from rftkit.report import write_report

    rows = [{"step": 0, "val/logp_margin": 5.0}] + [
        {"step": s, "train/loss": 0.7 - 0.01 * s, **({"val/logp_margin": 5.0 + 0.1 * s} if s % 5 == 0 else {})} for s in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = write_report(tmp_path).read_text()
    assert "Training loss" in html and "Held-out metrics" in html and "val/logp_margin" in html


def test_episodes_are_shown_as_conversations_with_tool_calls(tmp_path):
    run = make_run_dir(tmp_path)
    messages = [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c0", "type": "function", "function": {
            "name": "calculator", "arguments": "{\"expression\": \"4821 * 37\"}"}}]},
        {"role": "tool", "tool_call_id": "c0", "content": "178377 <script>alert(1)</script>"},
        {"role": "assistant", "content": "ANSWER: 178377"}]
    write_jsonl(run / "samples.jsonl", [{"step": 1, "prompt": "What is 4821 * 37?", "completion": "ANSWER: 178377",
                                         "reward": 1.0, "messages": messages}])
    html = write_report(run).read_text()
    section = html[html.index('id="samples"'):]
    assert section.count('class="turn assistant"') == 2 and section.count('class="turn tool"') == 1
    assert "&rarr; calculator(" in section and "4821 * 37" in section
    assert "178377 &lt;script&gt;" in section and "<script>alert" not in section

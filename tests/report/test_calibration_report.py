"""The reliability diagram: drawn from a `calibration` evaluation's bins, in the page and in Chromium."""

from __future__ import annotations

import json

from tests.report.report_fixtures import EVAL_BASE, make_run_dir
from tests.report.test_report import _open, headless_chromium, parse

from rftkit.metrics.calibration import expected_calibration_error, reliability_bins
from rftkit.report import write_report


def _evaluated_run(root):
    run = make_run_dir(root / "demo")
    base_bins = reliability_bins([0.9] * 10 + [0.5] * 4, [1] * 3 + [0] * 7 + [1, 0, 1, 0])  # overconfident
    tuned_bins = reliability_bins([0.3] * 10 + [0.7] * 4, [1] * 3 + [0] * 7 + [1, 1, 1, 0])
    model = f"runs/{run.parent.name}/{run.name}/final"
    for name, bins, extra in (("eval_base.json", base_bins, {}), ("eval_tuned.json", tuned_bins, {"model": model})):
        result = {**EVAL_BASE, **extra, "ece": expected_calibration_error(bins), "reliability": bins}
        (root / "demo" / name).write_text(json.dumps(result))
    return run


def test_the_diagram_has_the_diagonal_and_one_point_per_filled_bin(tmp_path):
    html = write_report(_evaluated_run(tmp_path)).read_text()
    series = parse(html).plots["reliability"]["series"]
    # base: 10 at 0.9 with 3 right -> |0.3 - 0.9| * 10/14 = 0.429; tuned: 4 at 0.7 with 3 right -> 0.05 * 4/14 = 0.014
    assert series == {"perfect calibration": 2, "base (ECE 0.429)": 2, "tuned (ECE 0.014)": 2}
    row = html[html.index("<td>ece</td>"):].split("</tr>")[0]
    assert 'class="num change up"' in row  # a lower calibration error is the good direction


def test_no_calibration_no_diagram(tmp_path):
    run = make_run_dir(tmp_path / "demo")
    (tmp_path / "demo" / "eval_base.json").write_text(json.dumps(EVAL_BASE))
    (tmp_path / "demo" / "eval_tuned.json").write_text(json.dumps({**EVAL_BASE, "model": f"runs/demo/{run.name}/final"}))
    assert "reliability" not in parse(write_report(run).read_text()).plots


def test_the_diagram_renders_in_chromium(tmp_path):
    driver = headless_chromium(tmp_path / "profile", "report")
    try:
        seen = _open(driver, write_report(_evaluated_run(tmp_path)))
        assert seen["problems"] == [] and seen["errors"] == [] and seen["requests"] == []
        box = driver.execute_script("const r = document.querySelector('svg[data-plot=reliability]')"
                                    ".getBoundingClientRect(); return [r.width, r.height]")
        assert box[0] > 100 and box[1] > 50
        circles = driver.execute_script("return document.querySelectorAll('svg[data-plot=reliability] circle').length")
        assert circles == 4  # two bins each for base and tuned (the diagonal has no markers)
    finally:
        driver.quit()

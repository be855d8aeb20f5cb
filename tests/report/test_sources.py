"""The report's per-source panel: a mixture's rewards, prompt shares and held-out metrics per source."""

from __future__ import annotations

import json

from tests.report.test_report import _open, headless_chromium, parse

from rftkit.report import write_report

STEPS = 12


def _mixture_run(root):
    run = root / "mix"
    run.mkdir()
    rows = []
    for step in range(1, STEPS + 1):
        row = {"step": step, "critic/rewards/mean": 0.5, "critic/rewards/std": 0.1,
               "critic/rewards/arith/mean": 0.3 + 0.02 * step, "critic/rewards/code/mean": 0.1 + 0.01 * step,
               "data/arith/prompt_share": 0.75, "data/code/prompt_share": 0.25}
        if step % 6 == 0:  # validation every 6 steps; only `arith` has a val file
            row.update({"val/pass@1": 0.4, "val/arith/pass@1": 0.3 + 0.01 * step, "val/arith/reward_mean": 0.35})
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_a_mixture_draws_one_line_per_source(tmp_path):
    plots = parse(write_report(_mixture_run(tmp_path)).read_text()).plots
    assert plots["source_rewards"]["series"] == {"arith": STEPS, "code": STEPS}
    assert plots["source_shares"]["series"] == {"arith": STEPS, "code": STEPS}
    assert plots["source_val"]["series"] == {"arith pass@1": 2, "arith reward_mean": 2}


def test_a_run_of_one_file_draws_no_source_panel(tmp_path):
    run = tmp_path / "one"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "critic/rewards/mean": 0.5}\n')
    plots = parse(write_report(run).read_text()).plots
    assert not {"source_rewards", "source_shares", "source_val"} & set(plots)


def test_the_source_panel_renders_in_chromium(tmp_path):
    driver = headless_chromium(tmp_path / "profile", "report")
    try:
        seen = _open(driver, write_report(_mixture_run(tmp_path)))
        assert seen["problems"] == [] and seen["errors"] == [] and seen["requests"] == []
        drawn = driver.execute_script(
            "return ['source_rewards', 'source_shares', 'source_val'].map(n => "
            "document.querySelector(`svg[data-plot=${n}]`).getBoundingClientRect().width)")
        assert all(w > 100 for w in drawn), drawn
    finally:
        driver.quit()

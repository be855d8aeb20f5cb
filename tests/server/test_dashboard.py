"""The dashboard of `rft server`: its three JSON endpoints over a real job, and the page in headless Chromium.

One reinforcement job runs to `succeeded` on a real server (module fixture); the browser test then does what a
user does: enters the key, reads the jobs table, opens the job (curves, events, checkpoints, report, rollouts,
filters, early vs late) and the models page, and checks the console is clean and nothing was fetched from
anywhere but the server. A hostile samples row (HTML in every field) checks that data is shown as text.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import EXAMPLES
from tests.server.test_api import client, free_port, rft, wait_for

from rftkit.server.dashboard import PAGE, filter_samples, read_jsonl, sampled_items

requests = pytest.importorskip("requests")

# test_api.py's exact-match grader scores every completion 0 (the model shows its working before "ANSWER: n"),
# which would leave the reward filters nothing to tell apart; this one rewards a right final answer.
GRADER = {"type": "string_check", "name": "answer", "input": "{{sample.output_text}}",
          "reference": "ANSWER: {{item.reference_answer}}", "operation": "like"}
HOSTILE = {"step": 3, "item_id": "<b>hostile</b>", "prompt": "<img src=http://evil.invalid/p.png>",
           "reference_answer": "</td><script>alert(1)</script>", "completion": "<img src=x onerror=alert(1)>&amp;",
           "reward": None, "advantage": 0.0, "error": "<script>boom()</script>", "finish_reason": "stop"}


# ---- the filters, without a server -----------------------------------------------------------------------------

ROWS = [{"step": 1, "item_id": "a", "reward": 0.0}, {"step": 1, "item_id": "b", "reward": 1.0},
        {"step": 2, "item_id": "a", "reward": 1.0}, {"step": 2, "item_id": "c", "reward": None, "error": "timeout"},
        {"step": 3, "item_id": "a", "reward": 0.5, "error": "partial"}]


def test_filters_pick_rows_by_step_reward_error_and_item():
    steps = lambda **kw: [(r["step"], r["item_id"]) for r in filter_samples(ROWS, **kw)]  # noqa: E731
    assert steps(step=1) == [(1, "a"), (1, "b")]
    assert steps(min_reward=1) == [(1, "b"), (2, "a")]  # a failed grading (None) has no reward to compare
    assert steps(max_reward=0.5) == [(1, "a"), (3, "a")]
    assert steps(min_reward=0.5, max_reward=0.5) == [(3, "a")]
    assert steps(errors_only=True) == [(2, "c"), (3, "a")]
    assert steps(item_id="a", step=2) == [(2, "a")]
    assert steps() == [(r["step"], r["item_id"]) for r in ROWS]
    assert sampled_items(ROWS) == [{"item_id": "a", "steps": [1, 2, 3]}, {"item_id": "b", "steps": [1]},
                                   {"item_id": "c", "steps": [2]}]


def test_jsonl_skips_damaged_lines_and_nulls_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == []  # no run yet
    path.write_text('{"step": 1, "x": NaN}\nnot json\n[1, 2]\n{"step": 2, "x": Infinity}\n{"step": 3, "x"')
    assert read_jsonl(path) == [{"step": 1, "x": None}, {"step": 2, "x": None}]


def test_page_references_nothing_external_and_builds_no_html_from_strings():
    html = PAGE.read_text()
    code = html.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace is a name, never fetched
    for external in ("http://", "https://", "//cdn", "src=", "url(", "@import", "<link rel=\"stylesheet\""):
        assert external not in code, f"the dashboard must not load anything external: found {external!r}"
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in html, f"the dashboard must build the DOM from nodes, not strings: found {sink!r}"


# ---- a real server and one real job ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard-server")
    keys = {p: rft("server", "keys", "create", "--project", p, "--root", str(root)).stdout.strip() for p in ("alpha", "beta")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rftkit", "server", "start", "--root", str(root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
    origin = f"http://127.0.0.1:{port}"
    yield {"origin": origin, "url": f"{origin}/v1", "keys": keys, "root": root}
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def job(server, tmp_path_factory):
    """test_api.py's reinforcement job, sampling every step. Eight training items, four prompts a step: step 3
    starts the second epoch, so every item it samples was sampled before (something to compare early vs late)."""
    c = client(server)
    data = tmp_path_factory.mktemp("dashboard-data")
    train = data / "train.jsonl"
    train.write_text("\n".join((EXAMPLES / "train.jsonl").read_text().splitlines()[:8]) + "\n")
    train_file = c.files.create(file=train.open("rb"), purpose="fine-tune")
    val_file = c.files.create(file=(EXAMPLES / "val.jsonl").open("rb"), purpose="fine-tune")
    created = c.fine_tuning.jobs.create(
        model="bundled:tiny-arith", training_file=train_file.id, validation_file=val_file.id, suffix="dash",
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {"batch_size": 4}}},
        extra_body={"rftkit": {"overrides": ["train.steps=3", "rollout.num_generations=4", "train.micro_batch_size=16",
                                             "run.eval_interval=3", "run.sample_interval=1"]}})
    done = wait_for(c, created.id, timeout=600)
    assert done.status == "succeeded", done.error
    run = Path(server["root"]) / "runs" / created.id
    with (run / "samples.jsonl").open("a") as f:
        f.write(json.dumps(HOSTILE) + "\n" + '{"step": 3, "item_id": "cut off mid-wri')  # and a line being written
    if not (run / "report.html").exists():  # the registry writes it; without the registry, write it here
        from rftkit.report import write_report

        write_report(run)
    # A job that fails at validation never gets a run directory.
    bad = data / "bad.jsonl"
    bad.write_text('{"messages": "not a list"}\n')
    failed = c.fine_tuning.jobs.create(model="bundled:tiny-arith", training_file=c.files.create(
        file=bad.open("rb"), purpose="fine-tune").id, method={"type": "reinforcement", "reinforcement": {"grader": GRADER}})
    assert wait_for(c, failed.id, 120).status == "failed"
    return {"id": created.id, "run": run, "model": done.fine_tuned_model, "no_run": failed.id}


def get(server, path: str, project: str | None = "alpha", **params):
    headers = {"Authorization": f"Bearer {server['keys'][project]}"} if project else {}
    return requests.get(server["origin"] + path, headers=headers, params=params, timeout=30)


def samples(server, job_id: str, **params) -> dict:
    r = get(server, f"/v1/rftkit/jobs/{job_id}/samples", **params)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_page_needs_no_key_and_forbids_everything_external(server):
    r = requests.get(server["origin"] + "/", allow_redirects=False, timeout=30)
    assert r.status_code in (302, 307) and r.headers["location"] == "/dashboard"
    r = requests.get(server["origin"] + "/dashboard", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert not re.search(r"https?:|\*", csp)
    assert "sk-rft" not in r.text.replace("sk-rft-...", "")  # the page itself holds no key and no data


def test_metrics_endpoint_returns_the_runs_rows(server, job):
    r = get(server, f"/v1/rftkit/jobs/{job['id']}/metrics")
    assert r.status_code == 200
    rows = r.json()["data"]
    assert r.json()["object"] == "list" and [m["step"] for m in rows] == [1, 2, 3]
    assert all(isinstance(m["critic/rewards/mean"], (int, float)) for m in rows)
    assert [m["step"] for m in rows if "val/reward_mean" in m] == [3]  # run.eval_interval=3
    slim = get(server, f"/v1/rftkit/jobs/{job['id']}/metrics", keys="critic/rewards/mean").json()["data"]
    assert slim == [{"step": m["step"], "critic/rewards/mean": m["critic/rewards/mean"]} for m in rows]


def test_samples_endpoint_filters(server, job):
    every = samples(server, job["id"], limit=1000)
    rows = every["data"]
    assert every["steps"] == [1, 2, 3] and every["total"] == len(rows) and not every["has_more"]
    assert HOSTILE in rows and {"prompt", "completion", "reward", "advantage", "reference_answer"} <= set(rows[0])
    assert len(rows) == 3 * 4 * 4 + 1  # 3 steps x 4 prompts x 4 completions, the hostile row; not the cut-off line
    at2 = samples(server, job["id"], step=2, limit=1000)["data"]
    assert at2 and len(at2) == 16 and {r["step"] for r in at2} == {2}
    right = samples(server, job["id"], min_reward=1, limit=1000)["data"]
    assert all(r["reward"] >= 1 for r in right) and len(right) == sum(1 for r in rows if (r["reward"] or 0) >= 1)
    wrong = samples(server, job["id"], max_reward=0, limit=1000)["data"]
    assert all(r["reward"] is not None and r["reward"] <= 0 for r in wrong)
    assert len(right) + len(wrong) == len(rows) - 1  # binary rewards: every graded row is one or the other
    assert right and wrong, "the grader should reward some completions and not others"
    errors = samples(server, job["id"], errors_only="true", limit=1000)["data"]
    assert HOSTILE in errors and all(r["error"] or r["reward"] is None for r in errors)
    repeated = [i for i in every["items"] if len(i["steps"]) >= 2]
    assert repeated, "step 3 starts a second epoch: its items were sampled before"
    one = samples(server, job["id"], item_id=repeated[0]["item_id"], limit=1000)["data"]
    assert {r["item_id"] for r in one} == {repeated[0]["item_id"]} and sorted({r["step"] for r in one}) == repeated[0]["steps"]
    two = samples(server, job["id"], limit=2)
    assert len(two["data"]) == 2 and two["has_more"] and two["total"] == len(rows)
    bad = get(server, f"/v1/rftkit/jobs/{job['id']}/samples", step="three")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "step"


def test_report_endpoint_serves_the_runs_page(server, job):
    r = get(server, f"/v1/rftkit/jobs/{job['id']}/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "RFT run report" in r.text and r.text == (job["run"] / "report.html").read_text()
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_a_job_without_a_run_has_no_rows_and_no_report(server, job):
    base = f"/v1/rftkit/jobs/{job['no_run']}"
    assert get(server, base + "/metrics").json() == {"object": "list", "data": []}
    empty = get(server, base + "/samples").json()
    assert empty["data"] == [] and empty["steps"] == [] and empty["total"] == 0
    r = get(server, base + "/report")
    assert r.status_code == 404 and r.json()["error"]["code"] == "report_not_found"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("endpoint", ["metrics", "samples", "report"])
def test_endpoints_are_scoped_to_the_project(server, job, endpoint):
    theirs = get(server, f"/v1/rftkit/jobs/{job['id']}/{endpoint}", project="beta")
    unknown = get(server, f"/v1/rftkit/jobs/ftjob-nope/{endpoint}")
    for r in (theirs, unknown):
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found", r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert theirs.json()["error"]["message"].endswith(job["id"])  # the same answer as for an id that does not exist
    nokey = get(server, f"/v1/rftkit/jobs/{job['id']}/{endpoint}", project=None)
    assert nokey.status_code == 401 and nokey.json()["error"]["code"] == "missing_api_key"


# ---- the page in headless Chromium -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from tests.report.test_report import CHROMIUM_FLAGS, headless_chromium

    # The report test's flags, except that this server's address must resolve: every other name still fails.
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--host-resolver-rules")]
    flags.append("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-dashboard"), "dashboard", flags)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver, script: str, *args, timeout: float = 30):
    """Wait until `script` returns something truthy; return it."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(script, *args),
                                                                   f"timed out waiting for: {script}")


SHOWN = """const rows = [...document.querySelectorAll('#rv-table tr.sample')], none = !!document.querySelector('#rv-none');
const [expected, step] = arguments, n = none ? 0 : rows.length;
if (n !== expected || (n === 0 && !none) || (step !== null && rows.some(r => +r.dataset.step !== step))) return null;
return {n, steps: rows.map(r => +r.dataset.step), rewards: rows.map(r => r.dataset.reward)};"""


def shown_after(driver, expected: int, step: int | None = None) -> dict:
    """The rollout rows once the viewer shows `expected` of them, all at `step` (or says none match)."""
    return until(driver, SHOWN, expected, step)


def test_dashboard_in_chromium(browser, server, job):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d, origin, job_id = browser, server["origin"], job["id"]
    d.get_log("browser")
    d.get(origin + "/dashboard")
    until(d, "return document.querySelector('#login #key')")
    d.find_element(By.ID, "key").send_keys(server["keys"]["alpha"])
    d.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()

    # Jobs: the job, succeeded, with its reward sparkline.
    row = f"#jobs tr[data-job='{job_id}']"
    assert until(d, f"const r = document.querySelector(\"{row}\"); return r && r.querySelector('[data-status]').textContent") \
        == "succeeded"
    assert until(d, f"const p = document.querySelector(\"{row} polyline\"); return p && +p.dataset.points") == 3
    assert d.execute_script(f"return document.querySelector(\"{row}\").textContent").count(job["model"]) == 1

    # The job page: curves with points and labelled axes, events, checkpoints.
    d.find_element(By.CSS_SELECTOR, f"{row} a").click()
    reward = until(d, """const g = document.querySelector("svg[data-plot=reward] g[data-series]"); if (!g) return null;
        const svg = g.closest('svg'), box = svg.getBoundingClientRect();
        return {points: +g.dataset.points, pairs: g.querySelector('polyline').getAttribute('points').trim().split(/\\s+/).length,
                dots: g.querySelectorAll('circle').length, x: svg.querySelector('.xlabel').textContent,
                y: svg.querySelector('.ylabel').textContent, drawn: box.width > 0 && box.height > 0 && g.getBBox().width > 0};""")
    assert reward == {"points": 3, "pairs": 3, "dots": 3, "x": "step", "y": "mean reward", "drawn": True}
    assert d.execute_script("return +document.querySelector(\"svg[data-plot=val] g[data-series='val/reward_mean']\")"
                            ".dataset.points") == 1
    assert d.execute_script("return document.querySelector('#job-status').textContent") == "succeeded"
    events = d.execute_script("return [...document.querySelectorAll('#events-table tbody tr')].map(r => r.textContent)")
    assert any("The job has successfully completed" in e for e in events) and any("Step 3" in e for e in events)
    steps = d.execute_script("return [...document.querySelectorAll('#checkpoints-table tbody tr')].map(r => +r.dataset.step)")
    assert steps and steps == sorted(steps, reverse=True) and steps[0] == 3

    # Rollouts: the last step by default; another step; the filters; the hostile row shown as text.
    every = samples(server, job_id, limit=1000)
    by_step = lambda s: sum(1 for r in every["data"] if r["step"] == s)  # noqa: E731
    shown = shown_after(d, by_step(3), 3)
    assert set(shown["steps"]) == {3} and d.execute_script("return document.querySelector('#rv-step').value") == "3"
    Select(d.find_element(By.ID, "rv-step")).select_by_value("1")
    assert set(shown_after(d, by_step(1), 1)["steps"]) == {1}
    d.find_element(By.ID, "rv-min").send_keys("1")
    d.find_element(By.ID, "rv-show").click()
    right = samples(server, job_id, step=1, min_reward=1)["total"]
    shown = shown_after(d, right, 1)
    assert all(float(r) >= 1 for r in shown["rewards"]), shown
    d.find_element(By.ID, "rv-min").clear()
    Select(d.find_element(By.ID, "rv-step")).select_by_value("3")
    d.find_element(By.ID, "rv-errors").click()
    shown = shown_after(d, samples(server, job_id, step=3, errors_only="true")["total"], 3)
    assert shown["n"] >= 1 and "null" in shown["rewards"]
    hostile = d.execute_script("""const r = [...document.querySelectorAll('#rv-table tr.sample')].find(r => r.dataset.reward === 'null');
        return {text: r.innerText, tags: [...document.querySelectorAll('#rollouts img, #rollouts script, #rollouts b')].length};""")
    assert hostile["tags"] == 0  # no element made from the data
    for field in ("item_id", "prompt", "completion", "error"):
        assert HOSTILE[field] in hostile["text"], field

    # Early vs late for the item sampled at the most steps.
    d.find_element(By.ID, "cmp-go").click()
    cols = until(d, "const c = [...document.querySelectorAll('#compare .col')]; return c.length ? c.map(e => +e.dataset.step) : null")
    first_item = every["items"][0]
    assert cols == [first_item["steps"][0], first_item["steps"][-1]] and cols[0] < cols[1]

    # The run report, fetched with the key and shown sandboxed.
    d.find_element(By.ID, "report-btn").click()
    frame = until(d, "return document.querySelector('#report-frame')")
    assert frame.get_attribute("sandbox") == ""
    d.switch_to.frame(frame)
    try:
        assert until(d, "return document.body && document.body.innerText.includes('RFT run report')")
    finally:
        d.switch_to.default_content()

    # Models: the registry, with the tuned model when the server has one.
    registry = get(server, "/v1/models")
    d.find_element(By.ID, "nav-models").click()
    until(d, "return document.querySelector('#models, #no-models, #no-registry')")
    if registry.status_code == 200 and any(m["id"] == job["model"] for m in registry.json()["data"]):
        text = until(d, "const r = document.querySelector(`#models tr[data-model='${arguments[0]}']`); return r && r.innerText",
                     job["model"])
        assert "bundled:tiny-arith" in text and "GRPO" in text.upper() and job_id in text
        model = next(m for m in registry.json()["data"] if m["id"] == job["model"])
        if (model.get("rftkit") or {}).get("evaluation"):  # the tuned model against its base, on the validation file
            assert d.execute_script("return document.querySelectorAll(`#models tr[data-model='${arguments[0]}'] "
                                    ".eval-metric`).length", job["model"]) > 0
    else:
        assert registry.status_code in (200, 404)

    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    if registry.status_code == 404:  # no registry on this server: the page says so, Chrome logs the 404
        errors = [e for e in errors if "/v1/models" not in e["message"]]
    assert errors == [], "the dashboard logged console errors"
    fetched = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(u.startswith((origin + "/", "blob:", "data:")) for u in fetched), fetched
    assert not d.execute_script("return sessionStorage.getItem('rftkit.apiKey') === null")
    d.find_element(By.ID, "signout").click()
    assert until(d, "return document.querySelector('#login') && sessionStorage.getItem('rftkit.apiKey') === null")

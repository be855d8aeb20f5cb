"""The web dashboard of `rft server`: jobs, one job's curves, events, checkpoints and rollouts, and the model registry.

One page, dashboard.html (its JS and CSS inline), served at /dashboard by the API's own process. The page holds no
data, so it needs no key to load; it asks for an API key, keeps it in sessionStorage (gone with the tab) and reads
everything through the API with `Authorization: Bearer <key>`, so a project sees in the browser exactly what it sees
from the `openai` client. It loads nothing from anywhere else: the Content-Security-Policy below allows no other
origin, so the dashboard works offline, and a missed escape could neither fetch nor send anything.

Beside OpenAI's endpoints the page reads three of rftkit's own, scoped to the caller's project like them (another
project's job is a 404, the same as an unknown one):

    GET /v1/rftkit/jobs/{id}/metrics   RUN_DIR/metrics.jsonl rows
    GET /v1/rftkit/jobs/{id}/samples   RUN_DIR/samples.jsonl rows, filtered, with the steps that have samples
    GET /v1/rftkit/jobs/{id}/report    RUN_DIR/report.html
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse

PAGE = Path(__file__).with_name("dashboard.html")

# The page's scripts and styles are inline; it may talk only to this server (connect-src) and frame only the run
# report, which it shows from memory (srcdoc). No other origin is named, so nothing external can load.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; frame-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# The report is a static page (no script); served with its own policy in case it is ever opened directly.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}

MAX_SAMPLES = 1000  # rows one samples request returns at most
MAX_ITEMS = 500  # item ids listed for the early-vs-late comparison


def read_jsonl(path: Path) -> list[dict]:
    """The JSON-object lines of `path` ([] if it does not exist yet). A line being written as we read, or a damaged
    one, is skipped rather than failing the page; NaN/inf become null, which JSON (and the browser) can carry."""
    if not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line, parse_constant=lambda _: None)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def filter_samples(rows: list[dict], step: int | None = None, min_reward: float | None = None,
                   max_reward: float | None = None, errors_only: bool = False, item_id: str | None = None) -> list[dict]:
    """The samples.jsonl rows that pass every filter given. A failed grading (reward null) has no reward to compare,
    so a reward bound leaves it out; `errors_only` keeps it, and any row whose grader reported an error.

    >>> rows = [{"step": 1, "reward": 1.0}, {"step": 1, "reward": None, "error": "timeout"}, {"step": 2, "reward": 0.0}]
    >>> [r["step"] for r in filter_samples(rows, min_reward=1)], len(filter_samples(rows, errors_only=True))
    ([1], 1)
    """
    def keep(row: dict) -> bool:
        reward = _number(row.get("reward"))
        if step is not None and row.get("step") != step:
            return False
        if item_id is not None and str(row.get("item_id")) != item_id:
            return False
        if errors_only and not (row.get("error") or reward is None):
            return False
        if min_reward is not None and (reward is None or reward < min_reward):
            return False
        return max_reward is None or (reward is not None and reward <= max_reward)

    return [r for r in rows if keep(r)]


def sampled_items(rows: list[dict]) -> list[dict]:
    """Each item id with the steps it was sampled at, those sampled at the most steps first: the ones worth
    comparing early against late."""
    steps: dict[str, set[int]] = {}
    for row in rows:
        if row.get("item_id") is not None and isinstance(row.get("step"), int):
            steps.setdefault(str(row["item_id"]), set()).add(row["step"])
    ranked = sorted(steps.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return [{"item_id": item, "steps": sorted(s)} for item, s in ranked[:MAX_ITEMS]]


def add_dashboard(app: FastAPI, db, project: Callable, owned_job: Callable) -> None:
    """Add /dashboard (and / redirecting to it) and the three /v1/rftkit/jobs/{id}/... endpoints to `app`.
    `project` is the dependency giving the caller's project from its key; `owned_job(job_id, who)` returns the Job
    row or raises the API's 404."""
    page = PAGE.read_text(encoding="utf-8")  # at startup: a package missing the page fails here, not on a visit

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/dashboard", status_code=307)

    @app.get("/dashboard", include_in_schema=False)
    def dashboard():
        return HTMLResponse(page, headers=HEADERS)

    @app.get("/v1/rftkit/jobs/{job_id}/metrics")
    def job_metrics(job_id: str, keys: str | None = None, who: str = Depends(project)):
        """Every metrics.jsonl row; `keys=step,critic/rewards/mean` keeps only those fields (the jobs table's
        sparklines need two of a few dozen)."""
        rows = read_jsonl(Path(owned_job(job_id, who).run_dir) / "metrics.jsonl")
        if keys:
            wanted = {k for k in keys.split(",") if k} | {"step"}
            rows = [{k: v for k, v in r.items() if k in wanted} for r in rows]
        return {"object": "list", "data": rows}

    @app.get("/v1/rftkit/jobs/{job_id}/samples")
    def job_samples(job_id: str, step: int | None = None, min_reward: float | None = None,
                    max_reward: float | None = None, errors_only: bool = False, item_id: str | None = None,
                    limit: int = 100, who: str = Depends(project)):
        rows = read_jsonl(Path(owned_job(job_id, who).run_dir) / "samples.jsonl")
        kept = filter_samples(rows, step, min_reward, max_reward, errors_only, item_id)
        limit = max(1, min(limit, MAX_SAMPLES))
        return {"object": "list", "data": kept[:limit], "has_more": len(kept) > limit, "total": len(kept),
                "steps": sorted({r["step"] for r in rows if isinstance(r.get("step"), int)}),
                "items": sampled_items(rows)}

    @app.get("/v1/rftkit/jobs/{job_id}/report")
    def job_report(job_id: str, who: str = Depends(project)):
        from rftkit.server.app import ApiError  # app.py imports this module: import its error class when called

        path = Path(owned_job(job_id, who).run_dir) / "report.html"
        if not path.is_file():
            raise ApiError(404, f"job {job_id} has no run report yet (rft report RUN_DIR writes RUN_DIR/report.html)",
                           "report_not_found", "job_id")
        return HTMLResponse(path.read_text(encoding="utf-8", errors="replace"),
                            headers={**HEADERS, "Content-Security-Policy": REPORT_CSP})

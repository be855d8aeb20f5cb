"""The model registry: every finished job's model, with its lineage, metrics, evaluation against the base and report.

A job that trains to its end is registered before it is called `succeeded`: its final and best
metrics (from RUN_DIR/metrics.jsonl), its lineage (RUN_DIR/lineage.json: base -> SFT -> RFT),
for a reinforcement job with a validation file `rft eval compare` of the tuned model against the
base on that file (with the job's grader), and `rft report`'s page. The evaluation and the report
run as `rft` subprocesses, as the training does, each bounded by a timeout; a registration that
fails to evaluate still registers the model, and says why in an event. Registering again (a
server killed while registering, then restarted) replaces the row: nothing is doubled.

`rft models list|show|delete` (server/commands.py) and `/v1/models` read the same table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from rftkit.server.db import Database, Job, Model

BEST = {"critic/rewards/mean": max, "val/reward_mean": max, "val/pass@1": max, "train/loss": min, "val/loss": min}
EVAL_SAMPLES = 4  # completions per validation item and model in the registry's comparison
TIMEOUT_S = 900.0


def tuned_name(job: Job) -> str:
    return f"ft:{job.model.removeprefix('bundled:')}:{job.project}:{job.suffix or ''}:{job.id}"


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written
        if isinstance(row, dict):
            rows.append(row)
    return rows


def best_metrics(rows: list[dict]) -> dict:
    """Per BEST metric the run logged: its best value and the step it came at."""
    best = {}
    for name, pick in BEST.items():
        seen = [(r[name], r.get("step")) for r in rows if isinstance(r.get(name), (int, float))]
        if seen:
            value, step = pick(seen, key=lambda vs: vs[0])
            best[name] = {"value": value, "step": step}
    return best


def register(db: Database, job: Job, name: str, val_path: str | None, root: Path) -> Model:
    run = Path(job.run_dir)
    rows = read_metrics(run)
    final = {k: v for k, v in (rows[-1] if rows else {}).items() if isinstance(v, (int, float))}
    lineage = json.loads((run / "lineage.json").read_text()) if (run / "lineage.json").exists() else []
    evaluation = None
    if val_path and job.method.get("type") == "reinforcement":
        evaluation = _evaluate(db, job, run, val_path, root)
    report = _rft(["report", str(run)], root, TIMEOUT_S)
    if report is not None:
        _event(db, job.id, f"Could not write the run report: {report}", "warn")
    row = Model(id=name, project=job.project, job_id=job.id, base=job.model, created_at=int(time.time()),
                path=str(run / "final"), run_dir=str(run), lineage=lineage, final_metrics=final,
                best_metrics=best_metrics(rows), evaluation=evaluation,
                report=str(run / "report.html") if (run / "report.html").exists() else None)
    with db.session.begin() as s:
        s.merge(row)
        db.event(s, job.id, f"Registered the model {name}")
    return row


def _evaluate(db: Database, job: Job, run: Path, val_path: str, root: Path) -> dict | None:
    """`rft eval compare` of the tuned model against the base on the validation file, with the job's grader."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    rollout = cfg.get("rollout") or {}
    grader = run / "registry-grader.json"
    grader.write_text(json.dumps((job.method.get("reinforcement") or {}).get("grader") or {"type": "answer_match"}))
    out = run / "compare.json"
    _event(db, job.id, "Evaluating the tuned model against the base on the validation file")
    failure = _rft(["eval", "compare", "--base", job.model, "--tuned", str(run / "final"), "--data", val_path,
                    "--grader", str(grader), "-n", str(EVAL_SAMPLES), "--out", str(out),
                    "--max-new-tokens", str(rollout.get("max_new_tokens", 48)),
                    "--temperature", str(rollout.get("temperature", 1.0)), "--seed", str(job.seed)], root, TIMEOUT_S)
    if failure is not None or not out.exists():
        _event(db, job.id, f"The evaluation against the base failed: {failure}", "warn")
        return None
    result = json.loads(out.read_text())
    summary = {k: result[k] for k in ("n_items", "samples", "metrics", "items") if k in result}
    pass1 = summary.get("metrics", {}).get("pass@1")
    if pass1:
        _event(db, job.id, f"Validation pass@1: base {pass1['base']:.3f}, tuned {pass1['tuned']:.3f} "
                           f"({pass1['delta']:+.3f}, 95% CI [{pass1['ci95'][0]:+.3f}, {pass1['ci95'][1]:+.3f}])")
    return summary


def _rft(args: list[str], root: Path, timeout_s: float) -> str | None:
    """Run `rft ARGS`; None when it succeeded, else the last line it printed."""
    try:
        done = subprocess.run([sys.executable, "-m", "rftkit", *args], cwd=root, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout_s:g}s"
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return (lines[-1] if lines else f"exit {done.returncode}")[:500]


def _event(db: Database, job_id: str, message: str, level: str = "info") -> None:
    with db.session.begin() as s:
        db.event(s, job_id, message, level)


# ---- reading ---------------------------------------------------------------------------------------------


def models_of(db: Database, project: str | None) -> list[Model]:
    with db.session() as s:
        query = select(Model).order_by(Model.created_at)
        return list(s.scalars(query.where(Model.project == project) if project else query).all())


def model_object(m: Model) -> dict:
    """OpenAI's model object, with the registry's fields under `rftkit`."""
    return {"id": m.id, "object": "model", "created": m.created_at, "owned_by": m.project,
            "rftkit": {"job_id": m.job_id, "base": m.base, "path": m.path, "lineage": m.lineage,
                       "final_metrics": m.final_metrics, "best_metrics": m.best_metrics, "evaluation": m.evaluation,
                       "report": m.report is not None}}


def base_object(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "rftkit", "rftkit": None}


# ---- what /v1/chat/completions may load -------------------------------------------------------------------


def base_model_names(db: Database, project: str) -> list[str]:
    """The bundled models, and the base models the project's jobs trained from."""
    from rftkit.models import ASSETS

    names = {f"bundled:{p.name}" for p in ASSETS.iterdir() if (p / "config.json").exists()} if ASSETS.exists() else set()
    with db.session() as s:
        names |= set(s.scalars(select(Job.model).where(Job.project == project).distinct()).all())
    return sorted(names)


def served_model(db: Database, root: Path, name: str, project: str) -> tuple[str, str] | None:
    """(the pool's key, the folder to load) for a model name the project may use, or None.

    A registered model is its final/ folder; `<tuned name>:ckpt-step-N` is that job's checkpoint
    (base + the checkpoint's weights, described by ROOT/serving/<id>/checkpoint.json); a base model
    is any of `base_model_names`."""
    from rftkit.errors import UserError
    from rftkit.models import resolve_model_path

    with db.session() as s:
        row = s.get(Model, name)
        if row is not None:
            return (name, row.path) if row.project == project and Path(row.path).exists() else None
        head, _, step = name.rpartition(":ckpt-step-")
        job = s.get(Job, head.rsplit(":", 1)[-1]) if head and step.isdigit() else None
        if job is not None and job.project == project and tuned_name(job) == head:
            return _checkpoint_folder(root, job, int(step))
    if name in base_model_names(db, project):
        try:
            return name, resolve_model_path(name)
        except UserError:
            return None
    return None


def _checkpoint_folder(root: Path, job: Job, step: int) -> tuple[str, str] | None:
    import yaml

    run = Path(job.run_dir)
    folder = next((f for f in (run / "checkpoints").glob("step-*") if f.name.removeprefix("step-").isdigit()
                   and int(f.name.removeprefix("step-")) == step and (f / "weights.safetensors").exists()), None)
    if folder is None:
        return None
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    lineage = json.loads((run / "lineage.json").read_text()) if (run / "lineage.json").exists() else []
    lora = cfg.get("lora") or {}
    spec = {"base": lineage[-1]["model_path"] if lineage else job.model, "weights": str(folder / "weights.safetensors"),
            "lora": lora if lora.get("enabled") else None}
    key = f"{job.id}:ckpt-step-{step}"
    marker = Path(root) / "serving" / key.replace(":", "-")
    marker.mkdir(parents=True, exist_ok=True)
    (marker / "checkpoint.json").write_text(json.dumps(spec))
    return key, str(marker)

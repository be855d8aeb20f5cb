"""`rft server`: OpenAI's fine-tuning API over rftkit (FastAPI), so the official `openai` client works with
`base_url="http://HOST:PORT/v1"`.

Every endpoint needs `Authorization: Bearer <key>` (`rft server keys create --project NAME`); a
project sees only its own files, jobs, events and models (another project's id is a 404, as an
unknown one). `/v1/models` and `/v1/chat/completions` serve the bundled models, the registry's
tuned models and their checkpoints (server/serving.py batches concurrent requests).
Errors are OpenAI's JSON shape, `{"error": {"message", "type", "param", "code"}}`, never a
traceback: a handler for every exception turns the unexpected into a 500 with a message.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from fastapi import Depends, FastAPI, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from rftkit.server.dashboard import add_dashboard
from rftkit.server.db import TERMINAL, Database, Event, File, Job, Model, new_id
from rftkit.server.jobs import config_overrides
from rftkit.server.registry import base_model_names, base_object, model_object, models_of, served_model, tuned_name

SAFE_NAME = re.compile(r"^[A-Za-z0-9._ -]{1,255}$")


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def create_app(db: Database, root: Path, max_upload_mb: float = 512.0, max_model_memory_mb: float = 4096.0) -> FastAPI:
    from rftkit.server.serving import Batcher, ModelPool, add_chat_routes

    batcher = Batcher(ModelPool(int(max_model_memory_mb * 2**20)))
    app = FastAPI(title="rftkit fine-tuning service", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=_closing(batcher))
    app.state.batcher = batcher
    files_dir, runs_dir = root / "files", root / "runs"
    files_dir.mkdir(parents=True, exist_ok=True)
    runs_dir.mkdir(parents=True, exist_ok=True)
    limit = int(max_upload_mb * 1024 * 1024)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.message, exc.kind, exc.code, exc.param), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []) if p not in ("body", "query"))
        return JSONResponse(error_body(f"{where}: {first.get('msg', 'invalid request')}", "invalid_request_error",
                                       "invalid_request", where or None), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    def project(authorization: str | None = Header(None)) -> str:
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(401, "missing API key: send `Authorization: Bearer <key>` (rft server keys create)",
                           "missing_api_key", kind="authentication_error")
        name = db.project_of(authorization.removeprefix("Bearer ").strip())
        if name is None:
            raise ApiError(401, "incorrect API key", "invalid_api_key", kind="authentication_error")
        return name

    # ---- files ------------------------------------------------------------------------------------
    @app.post("/v1/files")
    async def upload(file: UploadFile, purpose: str = Form(...), who: str = Depends(project)):
        name = Path(file.filename or "").name
        if not file.filename or file.filename != name or not SAFE_NAME.match(name) or name in (".", ".."):
            raise ApiError(400, f"file name {file.filename!r} is not allowed: a plain name without / or ..",
                           "invalid_file_name", "file")
        if purpose not in ("fine-tune", "fine-tune-results"):
            raise ApiError(400, f"purpose {purpose!r}: use fine-tune", "invalid_purpose", "purpose")
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"the file is larger than the server's limit of {max_upload_mb:g} MB", "file_too_large", "file")
        _check_jsonl(data)
        file_id = new_id("file")
        path = files_dir / file_id
        path.write_bytes(data)
        row = File(id=file_id, project=who, filename=name, purpose=purpose, bytes=len(data), created_at=int(time.time()),
                   path=str(path))
        with db.session.begin() as s:
            s.add(row)
        return file_object(row)

    @app.get("/v1/files")
    def list_files(who: str = Depends(project)):
        with db.session() as s:
            rows = s.scalars(select(File).where(File.project == who).order_by(File.created_at)).all()
        return {"object": "list", "data": [file_object(r) for r in rows], "has_more": False}

    @app.get("/v1/files/{file_id}")
    def get_file(file_id: str, who: str = Depends(project)):
        return file_object(owned_file(file_id, who))

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str, who: str = Depends(project)):
        row = owned_file(file_id, who)
        return FileResponse(row.path, media_type="application/octet-stream", filename=row.filename)

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, who: str = Depends(project)):
        row = owned_file(file_id, who)
        with db.session.begin() as s:
            s.delete(s.get(File, row.id))
        Path(row.path).unlink(missing_ok=True)
        return {"id": row.id, "object": "file", "deleted": True}

    def owned_file(file_id: str, who: str) -> File:
        with db.session() as s:
            row = s.get(File, file_id)
        if row is None or row.project != who:
            raise ApiError(404, f"no such file: {file_id}", "file_not_found", "file_id")
        return row

    # ---- jobs -------------------------------------------------------------------------------------
    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request, who: str = Depends(project)):
        body = await json_body(request)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model: required (e.g. bundled:tiny-arith or a Hugging Face folder)", "missing", "model")
        for param in ("training_file", "validation_file"):
            value = body.get(param)
            if param == "training_file" and not value:
                raise ApiError(400, "training_file: required", "missing", param)
            if value:
                owned_file(value, who) if isinstance(value, str) else None
        method = body.get("method") or {"type": "supervised", "supervised": {}}
        if not isinstance(method, dict) or method.get("type") not in ("reinforcement", "supervised", "dpo"):
            raise ApiError(400, "method.type: one of reinforcement, supervised, dpo", "invalid_method", "method")
        if method["type"] == "reinforcement" and not (method.get("reinforcement") or {}).get("grader"):
            raise ApiError(400, "method.reinforcement.grader: required", "missing", "method.reinforcement.grader")
        grader = (method.get("reinforcement") or {}).get("grader")
        if grader is not None:
            built_grader(grader, "method.reinforcement.grader")
        extension = body.get("rftkit") or {}
        overrides = extension.get("overrides", []) if isinstance(extension, dict) else []
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ApiError(400, "rftkit.overrides: a list of key=value strings", "invalid_overrides", "rftkit.overrides")
        config = extension.get("config") if isinstance(extension, dict) else None
        if config is not None:  # a whole rftkit config (as a YAML file holds it), applied before `overrides`
            if not isinstance(config, dict):
                raise ApiError(400, "rftkit.config: an rftkit config object (rft config show)", "invalid_config",
                               "rftkit.config")
            overrides = config_overrides(config) + overrides
        job_id = new_id("ftjob")
        with db.session.begin() as s:
            # seq: creation order without a read-then-write race between concurrent submissions
            job = Job(id=job_id, project=who, seq=time.time_ns(), model=model, status="validating_files", method=method,
                      training_file=body["training_file"], validation_file=body.get("validation_file"),
                      suffix=body.get("suffix"), seed=int(body.get("seed") or 0), config={"overrides": overrides},
                      hyperparameters=body.get("hyperparameters") or {}, run_dir=str(runs_dir / job_id),
                      created_at=int(time.time()))
            s.add(job)
            db.event(s, job_id, f"Created fine-tuning job: {job_id}")
        return job_object(job)

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(after: str | None = None, limit: int = 20, who: str = Depends(project)):
        limit = max(1, min(limit, 100))
        with db.session() as s:
            query = select(Job).where(Job.project == who).order_by(Job.seq.desc())
            if after:
                anchor = s.get(Job, after)
                if anchor is not None and anchor.project == who:
                    query = query.where(Job.seq < anchor.seq)
            rows = s.scalars(query.limit(limit + 1)).all()
        return {"object": "list", "data": [job_object(j) for j in rows[:limit]], "has_more": len(rows) > limit}

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def get_job(job_id: str, who: str = Depends(project)):
        return job_object(owned_job(job_id, who))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(job_id: str, who: str = Depends(project)):
        job = owned_job(job_id, who)
        with db.session.begin() as s:
            row = s.get(Job, job.id)
            if row.status in TERMINAL:
                raise ApiError(400, f"the job is already {row.status}", "job_not_cancellable", "job_id")
            row.status, row.finished_at = "cancelled", int(time.time())
            db.event(s, job.id, "The job was cancelled")
        return job_object(owned_job(job_id, who))

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    def pause_job(job_id: str, who: str = Depends(project)):
        """A running job checkpoints and stops (its run gets SIGINT); a queued one stays unclaimed."""
        return job_object(move(job_id, who, ("validating_files", "queued", "running"), "paused",
                               "The job was paused", "job_not_pausable"))

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    def resume_job(job_id: str, who: str = Depends(project)):
        """A paused job is queued again and continues from its last checkpoint."""
        return job_object(move(job_id, who, ("paused",), "queued", "The job was resumed", "job_not_resumable"))

    def move(job_id: str, who: str, sources: tuple, target: str, message: str, code: str) -> Job:
        job = owned_job(job_id, who)
        with db.session.begin() as s:
            row = s.get(Job, job.id, with_for_update=True)
            if row.status not in sources:
                raise ApiError(400, f"the job is {row.status}: only a {' or '.join(sources)} job can be "
                                    f"{'paused' if target == 'paused' else 'resumed'}", code, "job_id")
            row.status = target
            db.event(s, job.id, message)
        return owned_job(job_id, who)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def job_events(job_id: str, after: str | None = None, limit: int = 20, who: str = Depends(project)):
        owned_job(job_id, who)
        limit = max(1, min(limit, 1000))
        with db.session() as s:
            query = select(Event).where(Event.job_id == job_id).order_by(Event.seq.desc())
            if after:
                anchor = s.scalar(select(Event).where(Event.id == after))
                if anchor is not None:
                    query = query.where(Event.seq < anchor.seq)
            rows = s.scalars(query.limit(limit + 1)).all()
        return {"object": "list", "data": [event_object(e) for e in rows[:limit]], "has_more": len(rows) > limit}

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def job_checkpoints(job_id: str, limit: int = 10, who: str = Depends(project)):
        """The run's kept checkpoints, newest first, with the metrics of their step (OpenAI's job checkpoint)."""
        job = owned_job(job_id, who)
        run = Path(job.run_dir)
        by_step = {}
        if (run / "metrics.jsonl").exists():
            for line in (run / "metrics.jsonl").read_text().splitlines():
                try:
                    m = json.loads(line)
                except ValueError:
                    continue
                values = {k: v for k, v in m.items() if isinstance(v, (int, float))}
                named = {"train_mean_reward": values.get("critic/rewards/mean"), "train_loss": values.get("train/loss"),
                         "valid_mean_reward": values.get("val/reward_mean"), "valid_loss": values.get("val/loss")}
                by_step[m.get("step")] = {**values, **{k: v for k, v in named.items() if v is not None}}  # OpenAI's names too
        found = []
        for folder in (run / "checkpoints").glob("step-*") if (run / "checkpoints").exists() else []:
            if folder.name.removeprefix("step-").isdigit() and (folder / "manifest.json").exists():
                found.append((int(folder.name.removeprefix("step-")), folder))
        found.sort(reverse=True)
        base = tuned_name(job)
        data = [{"id": f"ftckpt-{job.id.removeprefix('ftjob-')}-{step}", "object": "fine_tuning.job.checkpoint",
                 "created_at": int(folder.stat().st_mtime), "fine_tuned_model_checkpoint": f"{base}:ckpt-step-{step}",
                 "fine_tuning_job_id": job.id, "metrics": by_step.get(step, {}), "step_number": step}
                for step, folder in found[: max(1, min(limit, 100))]]
        return {"object": "list", "data": data, "has_more": len(found) > len(data),
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    # ---- graders (OpenAI's alpha graders API) ------------------------------------------------------
    @app.post("/v1/fine_tuning/alpha/graders/run")
    async def run_grader(request: Request, who: str = Depends(project)):
        body = await json_body(request)
        grader = built_grader(body.get("grader"))
        sample = body.get("model_sample")
        if not isinstance(sample, str):
            raise ApiError(400, "model_sample: the model's output, a string", "invalid_model_sample", "model_sample")
        item = body.get("item", {})
        if not isinstance(item, dict):
            raise ApiError(400, "item: a JSON object (any fields; the grader reads them as item.<field>)", "invalid_item",
                           "item")
        from rftkit.data.items import item_from_row
        from rftkit.errors import UserError
        from rftkit.graders.tool import run_grader as grade

        try:
            result = grade(grader, item_from_row(item, "item", any_object=True), sample, 30.0, "grader")
        except UserError as exc:
            raise ApiError(400, str(exc), "invalid_grader", "grader") from None
        errors = {"other_error": bool(result["errors"])}
        return {"reward": result["reward"], "sub_rewards": result["sub_rewards"],
                "metadata": {"name": getattr(grader, "name", ""), "type": body["grader"].get("type"), "errors": errors,
                             "error_messages": result["errors"], "execution_time": result["latency_s"],
                             "scores": result["sub_rewards"], "token_usage": None, "sampled_model_name": None},
                "model_grader_token_usage_per_model": {}}

    @app.post("/v1/fine_tuning/alpha/graders/validate")
    async def validate_grader(request: Request, who: str = Depends(project)):
        body = await json_body(request)
        built_grader(body.get("grader"))
        return {"grader": body["grader"]}

    async def json_body(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the request body is not JSON", "invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", "invalid_json")
        return body

    def built_grader(spec, where: str = "grader"):
        if not isinstance(spec, dict):
            raise ApiError(400, f"{where}: a grader object with a `type`", "invalid_grader", where)
        from rftkit.errors import UserError
        from rftkit.graders import build_grader

        try:
            return build_grader(spec, where)
        except UserError as exc:
            raise ApiError(400, str(exc), "invalid_grader", where) from None

    # ---- models: the registry, and chat completions for base, tuned and checkpoint models ------------------
    def lookup(name: str, who: str) -> tuple[str, str]:
        found = served_model(db, root, name, who)
        if found is None:
            raise ApiError(404, f"no such model: {name} (GET /v1/models lists them)", "model_not_found", "model")
        return found

    def listing(who: str) -> list[dict]:
        return [base_object(b) for b in base_model_names(db, who)] + [model_object(m) for m in models_of(db, who)]

    add_chat_routes(app, batcher, lookup, listing, project, ApiError)

    @app.get("/v1/models/{model_id}")
    def get_model(model_id: str, who: str = Depends(project)):
        if model_id in base_model_names(db, who):
            return base_object(model_id)
        return model_object(owned_model(model_id, who))

    @app.delete("/v1/models/{model_id}")
    def delete_model(model_id: str, who: str = Depends(project)):
        """Removes the model from the registry (and from memory); its run directory stays on disk."""
        row = owned_model(model_id, who)
        with db.session.begin() as s:
            s.delete(s.get(Model, row.id))
        batcher.pool.drop(row.id)
        return {"id": row.id, "object": "model", "deleted": True}

    def owned_model(model_id: str, who: str) -> Model:
        with db.session() as s:
            row = s.get(Model, model_id)
        if row is None or row.project != who:
            raise ApiError(404, f"no such model: {model_id}", "model_not_found", "model")
        return row

    def owned_job(job_id: str, who: str) -> Job:
        with db.session() as s:
            row = s.get(Job, job_id)
        if row is None or row.project != who:
            raise ApiError(404, f"no such fine-tuning job: {job_id}", "job_not_found", "job_id")
        return row

    add_dashboard(app, db, project, owned_job)
    return app


def _closing(batcher):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    return lifespan


def _check_jsonl(data: bytes) -> None:
    """A fine-tune upload must be JSON Lines: the bad lines of a readable file fail its job at validation (with
    their numbers); a file no line of which is a JSON object is refused here."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the file is not UTF-8 text: upload JSONL (one JSON object per line)", "invalid_file_format",
                       "file") from None
    for line in text.splitlines():
        if line.strip():
            try:
                if isinstance(json.loads(line), dict):
                    return
            except ValueError:
                continue
    raise ApiError(400, "the file is not JSONL: no line is a JSON object", "invalid_file_format", "file")


def file_object(row: File) -> dict:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at, "filename": row.filename,
            "purpose": row.purpose, "status": "processed", "status_details": None}


def job_object(job: Job) -> dict:
    kind = job.method.get("type", "supervised")
    hyper = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto",
             **(job.hyperparameters or {}), **((job.method.get(kind) or {}).get("hyperparameters") or {})}
    return {"id": job.id, "object": "fine_tuning.job", "created_at": job.created_at, "error": job.error,
            "fine_tuned_model": job.fine_tuned_model, "finished_at": job.finished_at, "hyperparameters": hyper,
            "model": job.model, "organization_id": job.project, "result_files": [], "seed": job.seed,
            "status": job.status, "trained_tokens": None, "training_file": job.training_file,
            "validation_file": job.validation_file, "method": job.method, "suffix": job.suffix,
            "estimated_finish": None, "integrations": [], "metadata": None}


def event_object(e: Event) -> dict:
    return {"id": e.id, "object": "fine_tuning.job.event", "created_at": e.created_at, "level": e.level,
            "message": e.message, "type": e.type, "data": e.data}

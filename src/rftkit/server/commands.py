"""`rft server start|keys create`, `rft models list|show|delete` and `rft serve MODEL` (registered by cli.py;
FastAPI is imported only when one of them runs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from rftkit.errors import ConfigError

server_app = typer.Typer(help="The fine-tuning service with OpenAI's API (pip install -e \".\\[server]\").",
                         no_args_is_help=True)
keys_app = typer.Typer(help="API keys: one per project, shown once, stored hashed.", no_args_is_help=True)
server_app.add_typer(keys_app, name="keys")

RootOpt = typer.Option(Path("rft-server"), "--root", help="files, runs and the SQLite database live here")
DbOpt = typer.Option(None, "--db", help="database URL (default sqlite:///ROOT/rftkit.db; postgresql://USER:PW@HOST:PORT/DB for Postgres, with pip install -e '.[postgres]')")


def open_db(root: Path, db: str | None):
    try:
        from rftkit.server.db import Database
    except ImportError:
        raise ConfigError('rft server needs its extra: pip install -e ".[server]"') from None
    root.mkdir(parents=True, exist_ok=True)
    url = db or f"sqlite:///{(root / 'rftkit.db').resolve()}"
    try:
        return Database(url)
    except Exception as exc:  # noqa: BLE001 - a bad URL or an unreachable database: one line
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        shown = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)  # never print a password
        raise ConfigError(f"--db {shown}: cannot open the database ({first})") from None


@keys_app.command("create")
def keys_create(project: str = typer.Option(..., "--project", help="the project the key acts for"),
                root: Path = RootOpt, db: str = DbOpt) -> None:
    """Print a new API key for PROJECT (once: only its hash is stored)."""
    print(open_db(root, db).create_key(project))


@server_app.command("start")
def start(root: Path = RootOpt, db: str = DbOpt, host: str = typer.Option("127.0.0.1", "--host"),
          port: int = typer.Option(8000, "--port"), workers: int = typer.Option(1, "--workers", min=1,
                                                                              help="jobs trained at once"),
          max_upload_mb: float = typer.Option(512.0, "--max-upload-mb", help="largest file upload"),
          max_model_memory_mb: float = typer.Option(4096.0, "--max-model-memory-mb",
                                                    help="weights of the models kept loaded for chat completions")) -> None:
    """Serve OpenAI's files, fine-tuning, models and chat APIs and the dashboard; run queued jobs (and resume
    those a killed server left running)."""
    database = open_db(root, db)
    import uvicorn

    from rftkit.server.app import create_app
    from rftkit.server.jobs import Runner

    runner = Runner(database, root.resolve(), workers)
    runner.start()
    try:
        uvicorn.run(create_app(database, root.resolve(), max_upload_mb, max_model_memory_mb), host=host, port=port,
                    log_level="warning")
    finally:
        runner.shutdown()


# ---- rft models ---------------------------------------------------------------------------------------------
models_app = typer.Typer(help="The model registry of `rft server`: every finished job's model.", no_args_is_help=True)
ProjectOpt = typer.Option(None, "--project", help="only this project's models")


@models_app.command("list")
def models_list(root: Path = RootOpt, db: str = DbOpt, project: str = ProjectOpt,
                as_json: bool = typer.Option(False, "--json", help="one JSON object per model")) -> None:
    """Every registered model: name, base, final reward, validation pass@1 against the base."""
    from rftkit.server.registry import model_object, models_of

    rows = models_of(open_db(root, db), project)
    if as_json:
        for m in rows:
            print(json.dumps(model_object(m)))
        return
    if not rows:
        print(f"no models registered under {root}")
        return
    print(f"{'model':<72} {'base':<20} {'reward':>7} {'pass@1 base -> tuned':>22}")
    for m in rows:
        reward = m.final_metrics.get("critic/rewards/mean")
        pass1 = ((m.evaluation or {}).get("metrics") or {}).get("pass@1")
        shown = f"{pass1['base']:.3f} -> {pass1['tuned']:.3f}" if pass1 else "-"
        print(f"{m.id:<72} {m.base:<20} {reward if reward is None else format(reward, '.3f'):>7} {shown:>22}")


@models_app.command("show")
def models_show(name: str = typer.Argument(..., help="a model name from `rft models list`"), root: Path = RootOpt,
                db: str = DbOpt) -> None:
    """One model in full: lineage, final and best metrics, evaluation against the base, report."""
    from rftkit.server.db import Model
    from rftkit.server.registry import model_object

    database = open_db(root, db)
    with database.session() as s:
        row = s.get(Model, name)
    if row is None:
        raise ConfigError(f"no model {name!r} in the registry under {root} (rft models list)")
    print(json.dumps({**model_object(row), "report_path": row.report}, indent=2))


@models_app.command("delete")
def models_delete(name: str = typer.Argument(...), root: Path = RootOpt, db: str = DbOpt) -> None:
    """Remove a model from the registry (its run directory stays on disk)."""
    from rftkit.server.db import Model

    database = open_db(root, db)
    with database.session.begin() as s:
        row = s.get(Model, name)
        if row is None:
            raise ConfigError(f"no model {name!r} in the registry under {root} (rft models list)")
        s.delete(row)
    print(f"deleted {name} (its run stays in {row.run_dir})")


# ---- rft serve ----------------------------------------------------------------------------------------------
def serve(model: str = typer.Argument(..., help="a model folder (e.g. RUN_DIR/final), bundled:NAME, or a registered "
                                                "model name (with --root)"),
          root: Path = typer.Option(None, "--root", help="the `rft server` root whose registry names MODEL"),
          db: str = DbOpt, host: str = typer.Option("127.0.0.1", "--host"), port: int = typer.Option(8000, "--port"),
          api_key: str = typer.Option(None, "--api-key", envvar="RFT_SERVE_API_KEY",
                                      help="require `Authorization: Bearer KEY` (default: no key)"),
          max_model_memory_mb: float = typer.Option(4096.0, "--max-model-memory-mb")) -> None:
    """Serve one model with OpenAI's /v1/chat/completions (streaming, n, temperature, max_tokens, stop) and /v1/models."""
    try:
        import uvicorn

        from rftkit.server.standalone import create_serve_app
    except ImportError:
        raise ConfigError('rft serve needs its extra: pip install -e ".[server]"') from None
    path = model
    if root is not None and model.startswith("ft:"):
        from rftkit.server.db import Model

        with open_db(root, db).session() as s:
            row = s.get(Model, model)
        if row is None:
            raise ConfigError(f"no model {model!r} in the registry under {root} (rft models list --root {root})")
        path = row.path
    from rftkit.models import resolve_model_path

    app = create_serve_app(model, resolve_model_path(path), api_key, max_model_memory_mb)
    print(f"serving {model} on http://{host}:{port}/v1 (chat.completions)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")

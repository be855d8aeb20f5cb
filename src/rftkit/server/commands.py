"""`rft server start` and `rft server keys create` (registered by cli.py; FastAPI is imported only when used)."""

from __future__ import annotations

from pathlib import Path

import typer

from rftkit.errors import ConfigError

server_app = typer.Typer(help="The fine-tuning service with OpenAI's API (pip install -e \".\\[server]\").",
                         no_args_is_help=True)
keys_app = typer.Typer(help="API keys: one per project, shown once, stored hashed.", no_args_is_help=True)
server_app.add_typer(keys_app, name="keys")

RootOpt = typer.Option(Path("rft-server"), "--root", help="files, runs and the SQLite database live here")
DbOpt = typer.Option(None, "--db", help="database URL (default sqlite:///ROOT/rftkit.db; postgresql://... for Postgres)")


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
        raise ConfigError(f"--db {url}: cannot open the database ({first})") from None


@keys_app.command("create")
def keys_create(project: str = typer.Option(..., "--project", help="the project the key acts for"),
                root: Path = RootOpt, db: str = DbOpt) -> None:
    """Print a new API key for PROJECT (once: only its hash is stored)."""
    print(open_db(root, db).create_key(project))


@server_app.command("start")
def start(root: Path = RootOpt, db: str = DbOpt, host: str = typer.Option("127.0.0.1", "--host"),
          port: int = typer.Option(8000, "--port"), workers: int = typer.Option(1, "--workers", min=1,
                                                                              help="jobs trained at once"),
          max_upload_mb: float = typer.Option(512.0, "--max-upload-mb", help="largest file upload")) -> None:
    """Serve /v1/files and /v1/fine_tuning/jobs; run queued jobs (and resume those a killed server left running)."""
    database = open_db(root, db)
    import uvicorn

    from rftkit.server.app import create_app
    from rftkit.server.jobs import Runner

    runner = Runner(database, root.resolve(), workers)
    runner.start()
    try:
        uvicorn.run(create_app(database, root.resolve(), max_upload_mb), host=host, port=port, log_level="warning")
    finally:
        runner.shutdown()

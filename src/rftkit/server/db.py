"""The service's state in a SQL database (SQLAlchemy; SQLite by default, Postgres by URL).

Everything a restarted server needs is here, nothing only in memory: projects and their
hashed API keys, uploaded files (bytes under ROOT/files), jobs with their status, config and
error, every job's events, and the registry of tuned models. Job status moves validating_files -> queued -> running ->
succeeded | failed | cancelled (and paused); a job is claimed by a worker with a conditional
UPDATE, so two workers never run the same job.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, create_engine, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

TERMINAL = ("succeeded", "failed", "cancelled")


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[int] = mapped_column(Integer)


class ApiKey(Base):
    __tablename__ = "api_keys"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the key: the key itself is never stored
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    created_at: Mapped[int] = mapped_column(Integer)


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(40))
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)  # creation order (pagination): time.time_ns()
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(30), index=True)
    method: Mapped[dict] = mapped_column(JSON)
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict] = mapped_column(JSON)  # the rftkit config overrides the job runs with
    hyperparameters: Mapped[dict] = mapped_column(JSON)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    run_dir: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(Integer)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(100), nullable=True)  # who runs it (host:pid)
    heartbeat: Mapped[float | None] = mapped_column(Float, nullable=True)


class Event(Base):
    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(10))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(10))  # "message" or "metrics"
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Model(Base):
    """The registry: one row per tuned model (a finished job's final/ folder), with where it came from and how it did."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(300), primary_key=True)  # ft:<base>:<project>:<suffix>:<job id>
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    base: Mapped[str] = mapped_column(String(200))  # the job's `model`
    created_at: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # the Hugging Face folder (RUN_DIR/final)
    run_dir: Mapped[str] = mapped_column(Text)
    lineage: Mapped[list] = mapped_column(JSON)  # RUN_DIR/lineage.json: base -> SFT -> RFT
    final_metrics: Mapped[dict] = mapped_column(JSON)  # the last step's metrics
    best_metrics: Mapped[dict] = mapped_column(JSON)  # per metric, its best value and step
    evaluation: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # `rft eval compare` vs the base, on the validation file
    report: Mapped[str | None] = mapped_column(Text, nullable=True)  # RUN_DIR/report.html


class Database:
    def __init__(self, url: str) -> None:
        if url.startswith(("postgresql://", "postgres://")):  # SQLAlchemy's default driver for these is psycopg2
            url = "postgresql+psycopg://" + url.split("://", 1)[1]  # psycopg 3: pip install -e ".[postgres]"
        kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}} if url.startswith("sqlite") else {}
        self.engine = create_engine(url, pool_pre_ping=True, **kwargs)
        if url.startswith("sqlite"):
            with self.engine.connect() as conn:  # readers and one writer at once; survives a SIGKILL
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        Base.metadata.create_all(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    # ---- keys ----------------------------------------------------------------------------------
    def create_key(self, project: str) -> str:
        key = "sk-rft-" + secrets.token_urlsafe(32)
        with self.session.begin() as s:
            if s.get(Project, project) is None:
                s.add(Project(name=project, created_at=int(time.time())))
                s.flush()  # the project's row before its key's: Postgres checks the foreign key (SQLite does not)
            s.add(ApiKey(digest=digest(key), project=project, created_at=int(time.time())))
        return key

    def project_of(self, key: str) -> str | None:
        with self.session() as s:
            row = s.get(ApiKey, digest(key))
            return row.project if row else None

    # ---- events ----------------------------------------------------------------------------------
    def event(self, s: Session, job_id: str, message: str, level: str = "info", data: dict | None = None) -> None:
        s.flush()  # a job added in this session is inserted before its event: Postgres checks the foreign key
        s.add(Event(id=new_id("ftevent"), job_id=job_id, created_at=int(time.time()), level=level, message=message,
                    type="metrics" if data else "message", data=data))

    # ---- the queue ---------------------------------------------------------------------------------
    def claim(self, worker: str, stale_s: float) -> Job | None:
        """The oldest queued job (or a running one whose worker stopped beating), now this worker's; None if none."""
        now = time.time()
        with self.session() as s:
            candidates = s.scalars(select(Job).where(Job.status.in_(("queued", "running"))).order_by(Job.seq)).all()
            for job in candidates:
                if job.status == "running" and job.heartbeat is not None and now - job.heartbeat < stale_s \
                        and not _gone(job.worker):
                    continue  # alive elsewhere
                was = job.status  # the UPDATE below also sets the loaded object's status (synchronize_session)
                taken = s.execute(update(Job).where(Job.id == job.id, Job.status == was,
                                                    Job.worker.is_(job.worker) if job.worker is None else Job.worker == job.worker)
                                  .values(status="running", worker=worker, heartbeat=now))
                if taken.rowcount == 1:
                    resumed = was == "running" or Path(job.run_dir, "config.yaml").exists()
                    self.event(s, job.id, "Fine-tuning job resumed from its last checkpoint" if resumed and was == "queued"
                               else "Fine-tuning job resumed from its last checkpoint after a restart" if resumed
                               else "Fine-tuning job started")
                    s.commit()
                    return s.get(Job, job.id)
                s.rollback()
        return None


def _gone(worker: str | None) -> bool:
    """A worker on this machine whose process no longer exists (a server killed and started again)."""
    import os
    import socket

    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"

"""The server's reliability tests on a real PostgreSQL: a SIGKILL mid-job then a restart loses nothing, and 50
concurrent submissions give 50 jobs that all end.

scripts/test.sh starts a throwaway cluster (scripts/postgres.sh) and exports RFTKIT_TEST_POSTGRES_URL
(postgresql+psycopg://user:pw@127.0.0.1:PORT/db). Each test gets a database of its own, created here and dropped
after, so reruns start clean. Without the variable the tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import EXAMPLES
from tests.server.test_api import GRADER, free_port, rft

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
sqlalchemy = pytest.importorskip("sqlalchemy")

TERMINAL = ("succeeded", "failed", "cancelled")
STEPS = 40  # the killed job's steps (a fraction of a second each here): the kill must land while it trains


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _libpq(url) -> str:
    """A SQLAlchemy URL as the conninfo psycopg takes (no `+psycopg`)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _missing(msg: str):
    if _in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def pg_url():
    """A fresh database on the test cluster for this test (SQLAlchemy URL), dropped afterwards."""
    base = os.environ.get("RFTKIT_TEST_POSTGRES_URL")
    if not base:
        _missing("the Postgres tests need a PostgreSQL server: scripts/test.sh starts one (apt-get install postgresql) "
                 "and sets RFTKIT_TEST_POSTGRES_URL=postgresql+psycopg://user:pw@127.0.0.1:PORT/db")
    try:
        import psycopg
    except ImportError:
        _missing('the Postgres tests need psycopg 3: pip install -e ".[test]" (or ".[postgres]")')
    url = sqlalchemy.engine.make_url(base)
    name = f"rftkit_test_{secrets.token_hex(6)}"
    with psycopg.connect(_libpq(url), autocommit=True, connect_timeout=30) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(url), autocommit=True, connect_timeout=30) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _query(db_url: str, sql: str):
    import psycopg

    with psycopg.connect(_libpq(sqlalchemy.engine.make_url(db_url)), connect_timeout=30) as conn:
        return conn.execute(sql).fetchall()


def start(root, port, db, log):
    """`rft server start --db URL` on PORT; returns once it accepts connections (60 s at most)."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "rftkit", "server", "start", "--root", str(root), "--db", db,
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the server did not start: {log.read_text()[-2000:]}")


def keys_create(root, db, project="alpha") -> str:
    out = rft("server", "keys", "create", "--project", project, "--root", str(root), "--db", db)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_postgres_sigkill_of_the_server_mid_job_then_restart_loses_nothing(tmp_path, pg_url):
    """tests/server/test_restart.py's test on Postgres, and stricter on events: every step's metrics event, once."""
    root = tmp_path / "server"
    log = tmp_path / "server.log"
    key = keys_create(root, pg_url)
    port = free_port()
    proc = start(root, port, pg_url, log)
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=30)
        f = c.files.create(file=(EXAMPLES / "train.jsonl").open("rb"), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(
            model="bundled:tiny-arith", training_file=f.id,
            method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {"batch_size": 4}}},
            extra_body={"rftkit": {"overrides": [f"train.steps={STEPS}", "rollout.num_generations=4",
                                                 "train.micro_batch_size=16", "run.checkpoint_interval=5"]}})
        waiting = c.fine_tuning.jobs.create(  # one worker: this one waits in the queue behind the first
            model="bundled:tiny-arith", training_file=f.id, suffix="second",
            method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {"batch_size": 4}}},
            extra_body={"rftkit": {"overrides": ["train.steps=2", "rollout.num_generations=4",
                                                 "train.micro_batch_size=16"]}})
        # Kill mid-training: the run's own metrics.jsonl says where the trainer is (a step takes a fraction of a
        # second, and events trail it by a 2 s heartbeat or more), and some steps must already be events.
        metrics_file = root / "runs" / job.id / "metrics.jsonl"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            events = c.fine_tuning.jobs.list_events(job.id, limit=1000).data
            trainer_at = len(metrics_file.read_text().splitlines()) if metrics_file.exists() else 0
            if trainer_at >= 8 and any(e.type == "metrics" for e in events):
                break
            time.sleep(0.1)
        assert c.fine_tuning.jobs.retrieve(waiting.id).status == "queued"
        os.kill(proc.pid, signal.SIGKILL)
        before = {e.id for e in events}
        events_to = max(e.data["step"] for e in events if e.type == "metrics")
        assert trainer_at < STEPS - 5, trainer_at  # killed while training, with checkpoints still to come
        t_kill = time.monotonic()
        proc.wait(timeout=30)
    except BaseException:
        proc.kill()
        raise
    time.sleep(1)
    t_restart = time.monotonic()
    proc = start(root, port, pg_url, log)
    t_listening = time.monotonic()
    try:
        assert c.fine_tuning.jobs.retrieve(waiting.id).status == "queued"  # still queued after the restart
        resumed_msg = "Fine-tuning job resumed from its last checkpoint after a restart"
        t_resumed = t_step = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = c.fine_tuning.jobs.retrieve(job.id)
            if done.status in TERMINAL:
                break
            if t_step is None:
                events = c.fine_tuning.jobs.list_events(job.id, limit=1000).data  # newest first
                at = next((i for i, e in enumerate(events) if e.message == resumed_msg), None)
                if at is not None and t_resumed is None:
                    t_resumed = time.monotonic()
                if at is not None and any(e.type == "metrics" for e in events[:at]):
                    t_step = time.monotonic()
            time.sleep(0.5)
        t_done = time.monotonic()
        assert done.status == "succeeded", done.error
        events = c.fine_tuning.jobs.list_events(job.id, limit=1000).data
        assert before <= {e.id for e in events}  # nothing lost
        messages = [e.message for e in events]
        assert messages.count("Fine-tuning job started") == 1
        assert messages.count(resumed_msg) == 1
        assert c.files.retrieve(f.id).bytes == (EXAMPLES / "train.jsonl").stat().st_size
        assert [s.data["step"] for s in events if s.type == "metrics"][0] == STEPS  # newest first: it reached the end
        steps = [e.data["step"] for e in reversed(events) if e.type == "metrics"]  # oldest first
        assert steps == list(range(1, STEPS + 1)), steps  # every step's metrics event, once: none lost to the kill
        resumed_from = re.search(r"resumed from \S+ \(step (\d+)\)", (root / "runs" / f"{job.id}.log").read_text())
        assert resumed_from and int(resumed_from.group(1)) in range(5, STEPS, 5)  # from a checkpoint, not step 0
        assert c.models.retrieve(done.fine_tuned_model).to_dict()["rftkit"]["job_id"] == job.id
        # The state is in Postgres, not in a SQLite file under --root.
        assert not (root / "rftkit.db").exists()
        assert _query(pg_url, f"SELECT status FROM jobs WHERE id = '{job.id}'") == [("succeeded",)]
        assert _query(pg_url, f"SELECT count(*) FROM events WHERE job_id = '{job.id}'") == [(len(events),)]
        second = None
        while time.monotonic() < deadline:
            second = c.fine_tuning.jobs.retrieve(waiting.id)
            if second.status in TERMINAL:
                break
            time.sleep(0.5)
        assert second.status == "succeeded", second.error
        print(f"\n[postgres restart] killed with events to step {events_to} (the trainer at {trainer_at}); "
              f"resumed from checkpoint step {resumed_from.group(1)}; metrics events for steps 1-{STEPS}, once each; "
              f"kill -> restarted server listening {t_listening - t_kill:.1f} s (incl. 1 s pause); "
              f"start -> resume event seen {(t_resumed or t_done) - t_restart:.1f} s; "
              f"start -> first new step {(t_step or t_done) - t_restart:.1f} s; "
              f"start -> succeeded {t_done - t_restart:.1f} s; events {len(before)} before the kill, all kept "
              f"({len(events)} at the end); the queued job stayed queued and then succeeded")
    finally:
        stop(proc)


def test_postgres_fifty_concurrent_submissions_give_fifty_jobs_that_all_end(tmp_path, pg_url):
    root = tmp_path / "server"
    key = keys_create(root, pg_url)
    port = free_port()
    proc = start(root, port, pg_url, tmp_path / "server.log")
    try:
        def client():
            return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=30)

        c = client()
        f = c.files.create(file=(EXAMPLES / "val.jsonl").open("rb"), purpose="fine-tune")

        def submit(i):
            return client().fine_tuning.jobs.create(
                model="bundled:tiny-arith", training_file=f.id, suffix=f"n{i}",
                method={"type": "reinforcement", "reinforcement": {"grader": GRADER}}).id

        t0 = time.monotonic()
        with ThreadPoolExecutor(50) as pool:
            ids = list(pool.map(submit, range(50)))
        t_submitted = time.monotonic()
        assert len(set(ids)) == 50
        with ThreadPoolExecutor(50) as pool:  # end them: cancel what has not ended by itself
            list(pool.map(lambda j: c.fine_tuning.jobs.cancel(j) if c.fine_tuning.jobs.retrieve(j).status not in
                          TERMINAL else None, ids))
        t_ended = time.monotonic()
        listed, after = [], None
        while True:  # paginated, newest first
            page = c.fine_tuning.jobs.list(limit=20, **({"after": after} if after else {}))
            listed += [j for j in page.data if j.id in set(ids)]
            if not page.has_more:
                break
            after = page.data[-1].id
        assert sorted(j.id for j in listed) == sorted(ids)
        assert all(j.status in TERMINAL for j in listed)
        # Exactly 50 rows in Postgres, all terminal: no duplicate and no lost insert.
        rows = _query(pg_url, "SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status")
        assert sum(n for _, n in rows) == 50 and {s for s, _ in rows} <= set(TERMINAL), rows
        print(f"\n[postgres 50 submissions] 50 concurrent creates in {t_submitted - t0:.1f} s; "
              f"all ended (cancel what was not) {t_ended - t_submitted:.1f} s later; "
              f"jobs in Postgres by status: {dict(rows)}")
    finally:
        stop(proc)

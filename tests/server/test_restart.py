"""A server SIGKILLed during a running job and started again: the job resumes from its checkpoint and succeeds,
with no file, event or job lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import EXAMPLES
from tests.server.test_api import GRADER, free_port, rft

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")


def start(root, port):
    proc = subprocess.Popen([sys.executable, "-m", "rftkit", "server", "start", "--root", str(root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.monotonic() + 60
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the server did not start")


def test_sigkill_of_the_server_mid_job_then_restart_loses_nothing(tmp_path):
    root = tmp_path / "server"
    key = rft("server", "keys", "create", "--project", "alpha", "--root", str(root)).stdout.strip()
    port = free_port()
    proc = start(root, port)
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=30)
    f = c.files.create(file=(EXAMPLES / "train.jsonl").open("rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model="bundled:tiny-arith", training_file=f.id,
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {"batch_size": 4}}},
        extra_body={"rftkit": {"overrides": ["train.steps=30", "rollout.num_generations=4", "train.micro_batch_size=16",
                                             "run.checkpoint_interval=5"]}})
    waiting = c.fine_tuning.jobs.create(  # one worker: this one waits in the queue behind the first
        model="bundled:tiny-arith", training_file=f.id, suffix="second",
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {"batch_size": 4}}},
        extra_body={"rftkit": {"overrides": ["train.steps=2", "rollout.num_generations=4", "train.micro_batch_size=16"]}})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        steps = [e for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
        if len(steps) >= 8:
            break
        time.sleep(0.3)
    before = {e.id for e in c.fine_tuning.jobs.list_events(job.id, limit=1000).data}
    assert c.fine_tuning.jobs.retrieve(waiting.id).status == "queued"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1)
    killed_at = time.monotonic()
    proc = start(root, port)
    try:
        assert c.fine_tuning.jobs.retrieve(waiting.id).status == "queued"  # still queued after the restart
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = c.fine_tuning.jobs.retrieve(job.id)
            if done.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
        assert done.status == "succeeded", done.error
        took = time.monotonic() - killed_at
        events = c.fine_tuning.jobs.list_events(job.id, limit=1000).data
        assert before <= {e.id for e in events}  # nothing lost
        messages = [e.message for e in events]
        assert messages.count("Fine-tuning job started") == 1
        assert messages.count("Fine-tuning job resumed from its last checkpoint after a restart") == 1
        assert c.files.retrieve(f.id).bytes == (EXAMPLES / "train.jsonl").stat().st_size
        assert [s.data["step"] for s in events if s.type == "metrics"][0] == 30  # newest first: it reached step 30
        assert c.models.retrieve(done.fine_tuned_model).to_dict()["rftkit"]["job_id"] == job.id
        second = None
        while time.monotonic() < deadline:
            second = c.fine_tuning.jobs.retrieve(waiting.id)
            if second.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
        assert second.status == "succeeded", second.error
        print(f"\nrestart: {len(before)} events before the SIGKILL, all kept ({len(events)} at the end); the job "
              f"succeeded {took:.1f} s after the restart; the queued job ran after it")
    finally:
        proc.terminate()
        proc.wait(timeout=60)

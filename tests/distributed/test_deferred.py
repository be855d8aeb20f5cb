"""Deferred rewards: a grader marked `deferred: true` answers some batches late; training goes on meanwhile,
late rewards inside the staleness bound are trained on, too-late ones are dropped and counted."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rftkit.config import load_config
from rftkit.train.loop import Trainer

from tests.conftest import EXAMPLES

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def slow_reward_server() -> ThreadingHTTPServer:
    """Scores 1 for every sample. A request holding an item with `hold: N` is answered once N later requests have
    come in (rewards that arrive late, in steps rather than seconds, so the test does not race the clock); one with
    `hold: -1` only when the server stops (at most 120 s)."""
    arrived = threading.Condition()
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            samples = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            hold = max(int(s["metadata"].get("hold", 0)) for s in samples)
            with arrived:
                count[0] += 1
                mine = count[0]
                arrived.notify_all()
                if hold:
                    arrived.wait_for(lambda: hold > 0 and count[0] >= mine + hold or stopped.is_set(), timeout=120)
            body = json.dumps([{"id": s["id"], "aggregate_reward_score": 1.0} for s in samples]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    stopped = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.stopped, server.arrived = stopped, arrived
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_late_rewards_are_used_within_the_bound_and_too_late_ones_counted(tmp_path):
    lines = (EXAMPLES / "train.jsonl").read_text().splitlines()[:80]
    holds = {1: 3, 2: -1}  # batch 1 (from 0) is answered after 3 later batches are in; batch 2 never within the run
    rows = []
    for i, line in enumerate(lines):
        row = json.loads(line)
        row["hold"] = holds.get(i // 4, 0)
        rows.append(json.dumps(row))
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n")
    server = slow_reward_server()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    try:
        cfg = load_config(EXAMPLES / "grpo.yaml", [
            f"run.dir={tmp_path / 'run'}", f"data.train={data}", "data.shuffle=false", "train.steps=12",
            "train.prompts_per_step=4", "rollout.num_generations=4", "train.micro_batch_size=16", "run.eval_interval=0",
            "run.checkpoint_interval=0", "run.sample_interval=1", "run.samples_per_write=16",
            f'grader={{"type": "http", "url": "{url}", "batch_size": 4096, "deferred": true}}',
            "grading.timeout_s=300", "runtime.backend=ray", "runtime.rollout_workers=1", "runtime.grader_workers=1",
            "async.max_off_policy_steps=6", "algorithm.dynamic_sampling=false"])
        t0 = time.monotonic()
        Trainer(cfg, quiet=True).train()
        assert time.monotonic() - t0 < 100  # the batch held back never held up a step
    finally:
        server.stopped.set()
        with server.arrived:
            server.arrived.notify_all()
        ray.shutdown()
        server.shutdown()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    trained_at = {}
    for s in samples:
        trained_at.setdefault(s["item_id"], s["step"])
    batch = lambda b: [json.loads(lines[i])["id"] for i in range(4 * b, 4 * b + 4)]  # noqa: E731
    late = [trained_at.get(i) for i in batch(1)]
    on_time = [trained_at.get(i) for i in batch(3)]
    assert all(late) and all(on_time) and min(late) > max(on_time)  # batch 1 trained after batch 3: training went on
    assert not any(i in trained_at for i in batch(2))  # too late: never trained on ...
    assert sum(m["async/dropped_groups"] for m in metrics) >= 4  # ... and counted
    assert max(m["async/staleness_max"] for m in metrics) <= 6

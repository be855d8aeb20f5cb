"""Asynchronous (k = 1) vs synchronous GRPO on Ray, with a slow reward server.

    python bench/async_vs_sync.py [--steps 20] [--seeds 3] [--delay 0.5] [--json]

The arithmetic example on the bundled model, `runtime.backend: ray` with one rollout and one
grader worker in both modes, graded by an `http` grader against a real reward server on
localhost that answers each request (one per step: batch_size holds the whole step) after
`--delay` seconds. Synchronous: every step generates, waits for the server, then trains.
Asynchronous (`async.max_off_policy_steps=1`): the rollout worker samples batch s+1 while the
learner waits for batch s's rewards and trains on it. Reported per mode: the median step time
(step 1 excluded: it has nothing ahead of it), the held-out reward after the last step (the
test set, 4 samples per item) per seed, their mean and standard error, and the ratio of step
times. Runs alone: two torch processes on 2 cores slow each other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ray

from rftkit.config import load_config
from rftkit.graders.answer import extract_answer
from rftkit.train.loop import Trainer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "arithmetic"


def reward_server(delay: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            samples = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(delay)  # a slow judge, a test suite, a simulator: the learner should not wait on it
            out = [{"id": s["id"], "aggregate_reward_score": float(
                extract_answer(s["messages"][-1]["content"]) == float(s["reference_answer"]))} for s in samples]
            body = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(mode: str, seed: int, steps: int, url: str, root: Path) -> dict:
    run_dir = root / f"{mode}-{seed}"
    k = 1 if mode == "async" else 0
    cfg = load_config(EXAMPLES / "grpo.yaml", [
        f"run.dir={run_dir}", f"train.steps={steps}", f"train.seed={seed}", "run.checkpoint_interval=0",
        f"run.eval_interval={steps}", f"data.val={EXAMPLES / 'test.jsonl'}", "run.eval_samples=4",
        "run.sample_interval=0", f'grader={{"type": "http", "url": "{url}", "batch_size": 4096}}',
        "runtime.backend=ray", "runtime.rollout_workers=1", "runtime.grader_workers=1",
        f"async.max_off_policy_steps={k}", "train.threads=1",  # one core for the learner, one for the rollout worker
    ])
    Trainer(cfg, quiet=True).train()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [m["perf/time_per_step"] for m in metrics if "perf/time_per_step" in m][1:]
    held_out = [m["val/reward_mean"] for m in metrics if m.get("val/reward_mean") is not None][-1]
    return {"step_s": statistics.median(times), "held_out": held_out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds the reward server takes per request")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = reward_server(args.delay)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict[str, list[dict]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory() as root:
        for seed in range(args.seeds):
            order = ("sync", "async") if seed % 2 == 0 else ("async", "sync")  # neither always runs first
            for mode in order:
                results[mode].append(run(mode, seed, args.steps, url, Path(root)))
    ray.shutdown()
    server.shutdown()
    report = {"steps": args.steps, "seeds": args.seeds, "delay_s": args.delay}
    for mode, rows in results.items():
        held = [r["held_out"] for r in rows]
        report[mode] = {"step_s_median": round(statistics.median(r["step_s"] for r in rows), 3),
                        "step_s": [round(r["step_s"], 3) for r in rows], "held_out": [round(h, 4) for h in held],
                        "held_out_mean": round(statistics.mean(held), 4),
                        "held_out_se": round(statistics.stdev(held) / len(held) ** 0.5, 4) if len(held) > 1 else None}
    report["speedup"] = round(report["sync"]["step_s_median"] / report["async"]["step_s_median"], 2)
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key}: {value}")
    print(f"asynchronous (k = 1): {report['speedup']:.2f}x the steps per second of synchronous")


if __name__ == "__main__":
    main()

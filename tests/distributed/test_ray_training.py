"""GRPO on Ray workers (a real local Ray instance): the same rewards as the local backend with one
rollout worker, a run with two of each, and workers SIGKILLed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rftkit.config import load_config
from rftkit.train.loop import Trainer

from tests.conftest import EXAMPLES

ray = pytest.importorskip("ray")  # the test extra installs it; the default install has no Ray
pytestmark = pytest.mark.slow



def rewards(run_dir) -> list[float]:
    return [json.loads(line)["critic/rewards/mean"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train(tmp_path, name: str, *overrides: str):
    cfg = load_config(EXAMPLES / "grpo.yaml", [f"run.dir={tmp_path / name}", "train.steps=3", "train.prompts_per_step=4",
                                               "rollout.num_generations=4", "train.micro_batch_size=16",
                                               "run.checkpoint_interval=0", "train.threads=1", *overrides])
    Trainer(cfg, quiet=True).train()
    return tmp_path / name


def test_one_rollout_worker_samples_what_the_local_backend_samples(local_ray, tmp_path):
    local = train(tmp_path, "local")
    remote = train(tmp_path, "ray", "runtime.backend=ray", "runtime.rollout_workers=1", "runtime.grader_workers=1")
    assert rewards(remote) == rewards(local)  # the driver's random stream travels with each call
    local_samples = (local / "samples.jsonl").read_text()
    assert (remote / "samples.jsonl").read_text() == local_samples


def test_two_workers_of_each_train_and_report_their_version(local_ray, tmp_path):
    run = train(tmp_path, "two", "runtime.backend=ray", "runtime.rollout_workers=2", "runtime.grader_workers=2",
                "run.sample_interval=1")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["ray/rollout_worker_restarts"] == 0 and m["ray/grader_worker_restarts"] == 0 for m in metrics)
    assert (run / "final" / "model.safetensors").exists()
    assert train(tmp_path, "two-again", "runtime.backend=ray", "runtime.rollout_workers=2",
                 "runtime.grader_workers=2").joinpath("metrics.jsonl").exists()
    assert rewards(tmp_path / "two-again") == rewards(run)  # seeded per call and worker: reproducible


def worker_pids(kind: str) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith(f"ray::{kind}"):
            found.append(p.pid)
    return found


def test_killed_workers_are_restarted_and_no_prompt_is_lost_or_repeated(tmp_path):
    run = tmp_path / "faults"
    steps, prompts = 8, 4  # 32 prompts: one epoch of the first 32 lines
    data = tmp_path / "train.jsonl"
    data.write_text("".join((EXAMPLES / "train.jsonl").read_text().splitlines(keepends=True)[:32]))
    cmd = [sys.executable, "-m", "rftkit", "train", str(EXAMPLES / "grpo.yaml"), f"run.dir={run}", f"data.train={data}",
           f"train.steps={steps}", f"train.prompts_per_step={prompts}", "rollout.num_generations=4",
           "train.micro_batch_size=16", "run.sample_interval=1", f"run.samples_per_write={prompts}",
           "run.checkpoint_interval=0", "runtime.backend=ray", "runtime.rollout_workers=2", "runtime.grader_workers=2",
           "grading.step_budget_s=60", "runtime.timeout_s=120"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = {}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and len(killed) < 2:
        done = len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0
        if done >= 2:
            for kind in ("RolloutWorker", "GraderWorker"):
                pids = worker_pids(kind)
                if kind not in killed and pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed[kind] = pids[0]
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert set(killed) == {"RolloutWorker", "GraderWorker"}, "the run ended before both kinds could be killed"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))  # every step completed
    last = metrics[-1]
    assert last["ray/rollout_worker_restarts"] >= 1 and last["ray/grader_worker_restarts"] >= 1
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == steps * prompts * 4  # every group whole
    trained = [item for _, item in {(s["step"], s["item_id"]) for s in samples}]
    lines = [json.loads(line)["id"] for line in data.read_text().splitlines()]
    assert sorted(trained) == sorted(lines)  # the epoch's prompts, each once: none lost, none trained twice


def test_two_learners_train_and_checkpoint(local_ray, tmp_path):
    run = train(tmp_path, "dp", "runtime.backend=ray", "runtime.rollout_workers=1", "runtime.grader_workers=1",
                "runtime.learners=2", "runtime.cpus_per_learner=1", "run.checkpoint_interval=3")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["actor/grad_norm"] > 0 for m in metrics)
    assert list((run / "checkpoints").glob("step-*3")) and (run / "final" / "model.safetensors").exists()


def test_a_resumed_ray_run_is_bit_identical_to_an_uninterrupted_one(local_ray, tmp_path):
    import hashlib

    ray_args = ("runtime.backend=ray", "runtime.rollout_workers=2", "runtime.grader_workers=2", "run.checkpoint_interval=2")
    whole = train(tmp_path, "whole", "train.steps=4", *ray_args)
    train(tmp_path, "cut", "train.steps=2", *ray_args)
    cfg = load_config(EXAMPLES / "grpo.yaml", [f"run.dir={tmp_path / 'cut'}", "train.steps=4", "train.prompts_per_step=4",
                                               "rollout.num_generations=4", "train.micro_batch_size=16", "train.threads=1",
                                               *ray_args])
    Trainer(cfg, quiet=True).train(resume=True)
    assert rewards(tmp_path / "cut") == rewards(whole)
    digest = lambda run: hashlib.sha256((run / "final" / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "cut") == digest(whole)


def test_a_killed_learner_stops_the_run_with_a_message_and_resume_finishes_it(tmp_path):
    run = tmp_path / "dp"
    cmd = [sys.executable, "-m", "rftkit", "train", str(EXAMPLES / "grpo.yaml"), f"run.dir={run}", "train.steps=6",
           "train.prompts_per_step=4", "rollout.num_generations=4", "train.micro_batch_size=16",
           "run.checkpoint_interval=2", "runtime.backend=ray", "runtime.rollout_workers=1", "runtime.grader_workers=1",
           "runtime.learners=2", "runtime.timeout_s=60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, killed = time.monotonic() + 180, None
    while time.monotonic() < deadline and proc.poll() is None and killed is None:
        done = len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0
        pids = worker_pids("LearnerWorker")
        if done >= 3 and pids:
            os.kill(pids[-1], signal.SIGKILL)
            killed = pids[-1]
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=120)
    assert killed is not None, out[-2000:]
    assert proc.returncode == 1, out[-3000:]
    assert "a learner died" in out and "--resume" in out and "Traceback" not in out
    resumed = subprocess.run([sys.executable, "-m", "rftkit", "train", "--resume", str(run)], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_tool_episodes_play_on_rollout_workers(local_ray, tmp_path):
    tools = EXAMPLES.parent / "tools"
    cfg = load_config(tools / "grpo.yaml", [f"run.dir={tmp_path / 'tools'}", "train.steps=2", "train.prompts_per_step=4",
                                            "rollout.num_generations=4", "train.micro_batch_size=16",
                                            "run.checkpoint_interval=0", "run.eval_interval=0", "runtime.backend=ray",
                                            "runtime.rollout_workers=2", "runtime.grader_workers=1"])
    Trainer(cfg, quiet=True).train()
    metrics = [json.loads(line) for line in (tmp_path / "tools" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["env/turns_mean"] > 1 and m["env/tool_calls_mean"] > 0 for m in metrics)  # several turns each

"""A run killed with SIGKILL after a checkpoint, then resumed, ends with the same weights as an
uninterrupted run (CPU, same seed); Ctrl-C saves a checkpoint and says how to resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import EXAMPLES, REPO, run_cli

ARGS = [
    str(EXAMPLES / "grpo.yaml"), "train.steps=6", "train.prompts_per_step=4", "rollout.num_generations=4",
    "train.micro_batch_size=8", "train.lr=1e-3", "run.checkpoint_interval=2", "run.eval_interval=0",
    "run.sample_interval=1", "--quiet",
]


def _start(run_dir):
    return subprocess.Popen([sys.executable, "-m", "rftkit", "train", *ARGS, f"run.dir={run_dir}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=300):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path} appeared: {proc.stderr.read()}"
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


def _steps(run_dir, name="metrics.jsonl"):
    return [json.loads(line)["step"] for line in (run_dir / name).read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    full = run_cli("train", *ARGS, f"run.dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr

    killed = tmp_path / "killed"
    proc = _start(killed)
    _wait_for(killed / "checkpoints" / "step-000002" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it was killed; the test proves nothing"

    resumed = run_cli("train", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr

    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    base = load_file(REPO / "src" / "rftkit" / "assets" / "tiny-arith" / "model.safetensors")
    assert any(not torch.equal(a[n], base[n]) for n in a if n in base), "training changed nothing; the test proves nothing"
    # metrics: every step exactly once, same values as the uninterrupted run
    assert _steps(killed) == [1, 2, 3, 4, 5, 6]
    rows_a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["critic/rewards/mean"] for r in rows_a] == [r["critic/rewards/mean"] for r in rows_b]
    assert sorted(set(_steps(killed, "samples.jsonl"))) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "run"
    proc = _start(run)
    t0 = time.monotonic()
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert proc.poll() is None and time.monotonic() - t0 < 300
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "rft train --resume" in stderr
    steps = _steps(run)
    assert steps, "no step was logged"
    assert (run / "checkpoints").is_dir(), stderr
    saved = sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("."))
    assert saved and int(saved[-1].split("-")[1]) == steps[-1], (saved, steps)


@pytest.mark.slow
def test_random_kills_then_resume_give_the_uninterrupted_weights():
    """bench/kill_resume.py in small: one run, SIGKILLed at up to three random moments, resumed each time."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "kill_resume.py"), "--runs", "1", "--kills", "3",
                           "--steps", "12", "--seed", "3", "--json"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["kills"] >= 1, summary  # else the test proved nothing
    assert summary["identical"] == 1, summary

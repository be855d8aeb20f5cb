"""Disk faults and damaged checkpoints: the run stops with a clear message, the last good checkpoint
stays intact, and `--resume` continues from it.

The run directory is a small tmpfs mounted by the test (root only; elsewhere these tests skip,
saying so): it fills up, or is remounted read-only, in the middle of a real `rft train`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rftkit.train.checkpoint import MANIFEST, checkpoint_dir, resumable, save_checkpoint, verify
from tests.conftest import EXAMPLES, REPO, run_cli

ARGS = [str(EXAMPLES / "grpo.yaml"), "train.prompts_per_step=4", "rollout.num_generations=4",
        "train.micro_batch_size=8", "run.eval_interval=0", "run.sample_interval=1", "--quiet"]
can_mount = os.geteuid() == 0 and sys.platform.startswith("linux") and shutil.which("mount") is not None
needs_mount = pytest.mark.skipif(not can_mount, reason="mounting a small tmpfs needs root on Linux")


@pytest.fixture()
def small_disk(tmp_path):
    """A tmpfs of a given size at tmp_path/disk: resizable, and turned read-only by a read-only bind of
    itself laid over it (a plain `remount,ro` is refused while the run holds files open for writing;
    this way every new open fails with EROFS, as after the kernel's emergency remount)."""
    point = tmp_path / "disk"
    point.mkdir()

    def mount(options: str) -> None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)

    def remount(options: str) -> None:
        if options == "ro":
            subprocess.run(["mount", "-o", "bind,ro", str(point), str(point)], check=True)
        elif options == "rw":
            subprocess.run(["umount", str(point)], check=True)  # the read-only layer
        else:
            subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True)

    yield point, mount, remount
    for _ in range(2):
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def _checkpoint_size(tmp_path: Path) -> int:
    """Bytes of one checkpoint of the bundled model, measured by a one-step run."""
    probe = tmp_path / "probe"
    done = run_cli("train", *ARGS, "train.steps=1", "run.checkpoint_interval=1", f"run.dir={probe}")
    assert done.returncode == 0, done.stderr
    step = checkpoint_dir(probe) / "step-000001"
    return sum(f.stat().st_size for f in step.iterdir())


@needs_mount
def test_a_full_disk_stops_the_run_cleanly_and_resume_continues(tmp_path, small_disk):
    point, mount, remount = small_disk
    size = _checkpoint_size(tmp_path)
    mount(f"size={int(size * 1.6)}")  # room for the first checkpoint and the run's files, not for a second one
    run_dir = point / "run"
    done = run_cli("train", *ARGS, "train.steps=4", "run.checkpoint_interval=2", "run.keep_checkpoints=2",
                   f"run.dir={run_dir}")
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "No space left on device" in done.stderr and "last good checkpoint is step 2" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert verify(checkpoint_dir(run_dir) / "step-000002") is None  # intact
    assert not list(checkpoint_dir(run_dir).glob(".tmp-*")), "a partial checkpoint was left behind"
    remount(f"size={size * 4}")
    resumed = run_cli("train", "--resume", str(run_dir), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "step-000002" in resumed.stderr
    assert (run_dir / "final" / "model.safetensors").exists()


@needs_mount
def test_a_run_dir_that_turns_read_only_stops_the_run_and_resume_continues(tmp_path, small_disk):
    point, mount, remount = small_disk
    mount("size=512m")
    run_dir = point / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rftkit", "train", *ARGS, "train.steps=40", "run.checkpoint_interval=2",
                             f"run.dir={run_dir}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = checkpoint_dir(run_dir) / "step-000002" / MANIFEST
    deadline = time.monotonic() + 300
    while not first.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    remount("ro")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, (proc.returncode, stderr[-2000:])
    assert "Read-only file system" in stderr and "rft train --resume" in stderr and "Traceback" not in stderr, stderr
    remount("rw")
    good = resumable(run_dir, lambda message: pytest.fail(message))
    assert good is not None and good[2]["step"] >= 2
    resumed = run_cli("train", "--resume", str(run_dir), "train.steps=40", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"step-{good[2]['step']:06d}" in resumed.stderr


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_for_resume(tmp_path):
    """SIGKILL while checkpoints/.tmp-step-N exists (the write in progress): resume uses step N-1's."""
    for attempt in range(5):
        run_dir = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "rftkit", "train", *ARGS, "train.steps=30",
                                 "run.checkpoint_interval=1", "run.keep_checkpoints=3", f"run.dir={run_dir}"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        root, deadline = checkpoint_dir(run_dir), time.monotonic() + 300
        caught = None
        while caught is None and proc.poll() is None and time.monotonic() < deadline:
            partial = [p for p in root.glob(".tmp-step-*")] if root.exists() else []
            if partial and any(root.glob("step-*")):
                proc.send_signal(signal.SIGKILL)
                caught = partial[0].name
            time.sleep(0.001)
        proc.wait()
        if caught and (root / caught).exists():  # killed mid-write, not just after the rename
            break
    else:
        pytest.fail("never caught a checkpoint write in progress in 5 runs")
    resumed = run_cli("train", "--resume", str(run_dir), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    before = int(caught.rsplit("-", 1)[1]) - 1
    assert f"resumed from {root / f'step-{before:06d}'}" in resumed.stderr.replace("\n", ""), resumed.stderr


# ---------------------------------------------------------------- damaged checkpoints


def _two_checkpoints(tmp_path: Path) -> Path:
    state = {"model": {"w": torch.arange(6.0)}, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {},
             "version": 1}
    save_checkpoint(tmp_path, 1, state, {"stage": {}}, keep=2)
    save_checkpoint(tmp_path, 2, {**state, "model": {"w": torch.arange(6.0) * 2}}, {"stage": {}}, keep=2)
    return checkpoint_dir(tmp_path)


@pytest.mark.parametrize("damage", ["truncate_weights", "flip_a_byte", "delete_optimizer", "garble_state"])
def test_a_damaged_latest_checkpoint_is_reported_and_the_one_before_used(tmp_path, damage):
    root = _two_checkpoints(tmp_path)
    latest = root / "step-000002"
    if damage == "truncate_weights":
        data = (latest / "weights.safetensors").read_bytes()
        (latest / "weights.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "flip_a_byte":
        data = bytearray((latest / "weights.safetensors").read_bytes())
        data[-3] ^= 0x01
        (latest / "weights.safetensors").write_bytes(bytes(data))
    elif damage == "delete_optimizer":
        (latest / "optimizer.pt").unlink()
    else:
        (latest / "trainer_state.json").write_text("{not json")
    assert verify(latest) is not None
    warnings = []
    path, policy_state, state = resumable(tmp_path, warnings.append)
    assert path == root / "step-000001" and state["step"] == 1
    assert torch.equal(policy_state["model"]["w"], torch.arange(6.0))
    assert len(warnings) == 1 and "step-000002 is damaged" in warnings[0], warnings


def test_a_failed_save_leaves_no_partial_folder_and_the_old_checkpoints(tmp_path, monkeypatch):
    root = _two_checkpoints(tmp_path)
    import rftkit.train.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, 3, {"model": {"w": torch.zeros(2)}, "optimizer": {}, "scheduler": {}}, {}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000002"]
    assert all(verify(p) is None for p in root.iterdir())


def test_resume_of_a_run_whose_every_checkpoint_is_damaged_says_so(tmp_path):
    run_dir = tmp_path / "run"
    done = run_cli("train", *ARGS, "train.steps=2", "run.checkpoint_interval=1", "run.keep_checkpoints=1",
                   f"run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    shutil.rmtree(run_dir / "final")
    (checkpoint_dir(run_dir) / "step-000002" / "rng.pt").write_bytes(b"garbage")
    resumed = run_cli("train", "--resume", str(run_dir), "--quiet")
    assert resumed.returncode == 1 and "no intact checkpoint" in resumed.stderr, resumed.stderr[-2000:]
    assert "rng.pt" in resumed.stderr and "Traceback" not in resumed.stderr

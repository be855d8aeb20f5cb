"""Checkpoints that make a killed run resumable to bit-identical weights (CPU, same seed).

A checkpoint holds the policy's state (`Policy.state_dict()`: the trainable weights, all of
them or only the LoRA adapter, the optimizer, the schedule and the version), every RNG the
loop draws from, and the stage's state (the data position). It is written to a temporary
folder, synced to disk and renamed into place, so a run killed mid-write leaves the previous
checkpoint intact and never a half-written one. `manifest.json`, written last, holds each
file's size and SHA-256: a checkpoint damaged later (a truncated copy, a flipped bit) is found
at resume (`verify`) and skipped for the one before (`resumable`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE = "trainer_state.json"
MANIFEST = "manifest.json"
FILES = ("weights.safetensors", "optimizer.pt", "rng.pt", STATE)


def _rng_state() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    py = random.getstate()
    np_state = np.random.get_state()
    plain = {"python": [py[0], list(py[1]), py[2]], "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, plain


def _set_rng_state(tensors: dict, plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    v, internal, gauss = plain["python"]
    random.setstate((v, tuple(internal), gauss))
    n = plain["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_error(exc: BaseException, folder: Path) -> OSError | None:
    """The OSError behind a failed write that torch (RuntimeError) or safetensors reported as their own."""
    text = str(exc)
    for number in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO):
        if f"os error {number})" in text or os.strerror(number) in text:
            return OSError(number, os.strerror(number), str(folder))
    try:
        info = os.statvfs(folder)
    except OSError as probe:
        return probe
    if info.f_flag & os.ST_RDONLY:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
    if info.f_bavail * info.f_frsize < (1 << 20):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return None


def save_checkpoint(run_dir: Path, step: int, policy_state: dict, state: dict, keep: int) -> Path:
    """Write `policy_state` (Policy.state_dict()), the RNGs and the loop's `state` as checkpoints/step-N.

    An OSError (disk full, read-only) leaves no partial folder and the previous checkpoints as they were.
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(policy_state["model"], tmp / "weights.safetensors")
        torch.save({"optimizer": policy_state["optimizer"], "scheduler": policy_state["scheduler"]}, tmp / "optimizer.pt")
        tensors, plain = _rng_state()
        torch.save(tensors, tmp / "rng.pt")
        (tmp / STATE).write_text(json.dumps({"step": step, "rng": plain,
                                             "policy_version": policy_state.get("version", 0), **state}))
        manifest = {name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in FILES}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for name in (*FILES, MANIFEST):
            _fsync(tmp / name)
        _fsync(tmp)
    except BaseException as exc:
        disk = None if isinstance(exc, OSError) else _disk_error(exc, root)
        shutil.rmtree(tmp, ignore_errors=True)
        if disk is not None:
            raise disk from exc
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync(root)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in checkpoint_dir(run_dir).glob("step-*") if (p / STATE).exists())
    return found[-1] if found else None


def verify(path: Path) -> str | None:
    """What is wrong with the checkpoint at `path` (a missing, truncated or altered file), or None.

    A checkpoint without a manifest (written before rftkit kept them) is checked for its files only.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        missing = [name for name in FILES if not (path / name).exists()]
        return f"missing {', '.join(missing)}" if missing else None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return f"{MANIFEST} is unreadable ({exc})"
    for name, want in manifest.items():
        file = path / name
        if not file.exists():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != want.get("size"):
            return f"{name} has {size} bytes, {want.get('size')} were written (truncated?)"
        if _sha256(file) != want.get("sha256"):
            return f"{name} does not match its checksum (altered or corrupted)"
    return None


def resumable(run_dir: Path, warn: Callable[[str], None]) -> tuple[Path, dict, dict] | None:
    """The newest checkpoint that verifies and loads, as (path, policy state, loop state); every newer one
    that does not is reported through `warn` and skipped. None when there is no checkpoint at all."""
    found = sorted((p for p in checkpoint_dir(run_dir).glob("step-*") if p.is_dir()), reverse=True)
    for path in found:
        problem = verify(path)
        if problem is None:
            try:
                return (path, *load_checkpoint(path))
            except Exception as exc:  # noqa: BLE001 - a file that verifies but does not load (older rftkit)
                problem = f"cannot be loaded ({type(exc).__name__}: {exc})"
        warn(f"checkpoint {path} is damaged: {problem}; skipping it")
    return None


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """(the policy's state for Policy.load_state_dict, the loop's state); the RNGs are restored in place."""
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    state = json.loads((path / STATE).read_text())
    policy_state = {"model": load_file(path / "weights.safetensors"), "optimizer": opt["optimizer"],
                    "scheduler": opt["scheduler"], "version": state.pop("policy_version", state["step"])}
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True), state.pop("rng"))
    return policy_state, state

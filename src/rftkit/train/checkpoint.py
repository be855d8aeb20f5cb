"""Checkpoints that make a killed run resumable to bit-identical weights (CPU, same seed).

A checkpoint holds the policy's state (`Policy.state_dict()`: the trainable weights, all of
them or only the LoRA adapter, the optimizer, the schedule and the version), every RNG the
loop draws from, and the stage's state (the data position). It is written to a temporary
folder and renamed into place, so a run killed mid-write leaves the previous checkpoint
intact and never a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE = "trainer_state.json"


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


def save_checkpoint(run_dir: Path, step: int, policy_state: dict, state: dict, keep: int) -> Path:
    """Write `policy_state` (Policy.state_dict()), the RNGs and the loop's `state` as checkpoints/step-N."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(policy_state["model"], tmp / "weights.safetensors")
    torch.save({"optimizer": policy_state["optimizer"], "scheduler": policy_state["scheduler"]}, tmp / "optimizer.pt")
    tensors, plain = _rng_state()
    torch.save(tensors, tmp / "rng.pt")
    (tmp / STATE).write_text(json.dumps({"step": step, "rng": plain, "policy_version": policy_state.get("version", 0), **state}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in checkpoint_dir(run_dir).glob("step-*") if (p / STATE).exists())
    return found[-1] if found else None


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """(the policy's state for Policy.load_state_dict, the loop's state); the RNGs are restored in place."""
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    state = json.loads((path / STATE).read_text())
    policy_state = {"model": load_file(path / "weights.safetensors"), "optimizer": opt["optimizer"],
                    "scheduler": opt["scheduler"], "version": state.pop("policy_version", state["step"])}
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True), state.pop("rng"))
    return policy_state, state

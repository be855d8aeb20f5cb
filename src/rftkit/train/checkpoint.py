"""Checkpoints that make a killed run resumable to bit-identical weights (CPU, same seed).

A checkpoint holds the trainable weights (all of them, or only the LoRA adapter), the
optimizer and scheduler, every RNG the loop draws from, and the data position. It is
written to a temporary folder and renamed into place, so a run killed mid-write leaves
the previous checkpoint intact and never a half-written one.
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


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


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


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict, keep: int) -> Path:
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_trainable(model), tmp / "weights.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    tensors, plain = _rng_state()
    torch.save(tensors, tmp / "rng.pt")
    (tmp / STATE).write_text(json.dumps({"step": step, "rng": plain, **state}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in checkpoint_dir(run_dir).glob("step-*") if (p / STATE).exists())
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNGs in place; return the trainer state."""
    weights = load_file(path / "weights.safetensors")
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights))[:5], sorted(set(weights) - expected)[:5]
        raise RuntimeError(f"checkpoint {path} does not match the model (missing {missing}, unexpected {extra})")
    model.load_state_dict(weights, strict=False)
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    state = json.loads((path / STATE).read_text())
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True), state.pop("rng"))
    return state

"""Chaining runs: `init_from: RUN_DIR` starts a run from another run's model, and records where it came from.

    rft train examples/sft/sft.yaml run.dir=runs/sft
    rft train examples/arithmetic/grpo.yaml init_from=runs/sft run.dir=runs/sft-grpo

`init_from` names a run directory (its `final/` model) or one of its checkpoints
(`RUN_DIR/checkpoints/step-000050`). A checkpoint holds only the trained weights (all of
them, or a LoRA adapter), so it is rebuilt on the parent run's starting model and written
once to `RUN_DIR/init/` as an ordinary Hugging Face folder. Every run writes
`lineage.json`: the chain of runs from the first model to this one, so a model's history
can be read from its run directory alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from rftkit.errors import UserError
from rftkit.train.checkpoint import STATE, checkpoint_dir

LINEAGE = "lineage.json"


@dataclass(frozen=True)
class InitSource:
    run_dir: Path  # the parent run
    checkpoint: str  # "final" or a checkpoint folder name (step-000050)
    path: Path  # the folder named by init_from


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in checkpoint_dir(run).glob("step-*") if (p / STATE).exists())


def resolve_init(init_from: str) -> InitSource:
    """Check `init_from` names a finished run or a checkpoint; raise a UserError saying what is there otherwise."""
    path = Path(init_from).expanduser()
    if (path / "config.yaml").exists():  # a run directory: its final model
        if not (path / "final").exists():
            have = _checkpoints(path)
            hint = f"name a checkpoint, e.g. init_from={path / 'checkpoints' / have[-1]}" if have else "it has no checkpoint either"
            raise UserError(f"init_from={init_from}: the run has no final/ model (not finished?); {hint}")
        return InitSource(path, "final", path / "final")
    if path.name == "final" and (path.parent / "config.yaml").exists():
        return InitSource(path.parent, "final", path)
    if (path / STATE).exists() and path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").exists():
        return InitSource(path.parent.parent, path.name, path)
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").exists():
        have = _checkpoints(path.parent.parent)
        raise UserError(f"init_from={init_from}: no such checkpoint; the run has {', '.join(have) or 'none'}")
    raise UserError(f"init_from={init_from}: not a run directory (no config.yaml) nor a checkpoint "
                    "(RUN_DIR/checkpoints/step-N); to start from a plain model folder set model.path instead")


def check_compatible(src: InitSource, algorithm: str) -> None:
    """A reward model's final model is a scalar scorer: it can seed another reward model, not a policy.
    (A language model can seed a reward model: it gets a new score head.)"""
    parent = _parent_config(src.run_dir).algorithm.name
    if parent == "reward_model" and algorithm != "reward_model":
        raise UserError(f"init_from={src.path}: that run trained a reward model (a scalar score head), which cannot "
                        f"start a {algorithm} run; start from the model the reward model was trained from")


def read_lineage(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / LINEAGE
    return json.loads(path.read_text()) if path.exists() else []


def _parent_config(run: Path):
    from rftkit.config import Config

    return Config.model_validate(yaml.safe_load((run / "config.yaml").read_text()))


def materialize(src: InitSource, run_dir: Path, console: Console) -> Path:
    """A Hugging Face folder holding the model `src` names: final/ itself, or a checkpoint rebuilt into RUN_DIR/init."""
    if src.checkpoint == "final":
        return src.path
    out = Path(run_dir) / "init"
    marker = out / "init_source.json"
    if marker.exists() and json.loads(marker.read_text()).get("checkpoint") == str(src.path.resolve()):
        return out  # a resumed run: already rebuilt
    import torch
    from safetensors.torch import load_file

    from rftkit.models import apply_lora, load_tokenizer
    from rftkit.train.stages import stage_class

    parent = _parent_config(src.run_dir)
    entries = read_lineage(src.run_dir)
    base = entries[-1]["model_path"] if entries else parent.model.path
    stage = stage_class(parent.algorithm.name)
    model = stage.load_model(base, "float32", "cpu")
    if parent.lora.enabled:
        model = apply_lora(model, parent.lora.rank, parent.lora.alpha, parent.lora.dropout, parent.lora.target_modules,
                           **stage.lora_options)
    weights = load_file(src.path / "weights.safetensors")
    missing = set(weights) - {n for n, _ in model.named_parameters()}
    if missing:
        raise UserError(f"init_from={src.path}: checkpoint does not fit its run's model (unexpected {sorted(missing)[:3]})")
    with torch.no_grad():
        model.load_state_dict(weights, strict=False)
    if parent.lora.enabled:
        model = model.merge_and_unload()
    tmp = Path(run_dir) / ".tmp-init"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    load_tokenizer(base).save_pretrained(tmp)
    (tmp / "init_source.json").write_text(json.dumps({"checkpoint": str(src.path.resolve())}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    console.print(f"rebuilt checkpoint {src.path} into {out}")
    return out


def write_lineage(run_dir: Path, cfg, src: InitSource | None, model_path: str) -> list[dict]:
    """RUN_DIR/lineage.json: the parent's chain plus this run (algorithm, what it started from, the model folder loaded)."""
    chain = read_lineage(src.run_dir) if src else []
    chain = chain + [{
        "run_dir": str(Path(run_dir).resolve()),
        "algorithm": cfg.algorithm.name,
        "init_from": str(src.path.resolve()) if src else None,
        "checkpoint": src.checkpoint if src else None,
        "model_path": model_path,
    }]
    (Path(run_dir) / LINEAGE).write_text(json.dumps(chain, indent=2) + "\n")
    return chain

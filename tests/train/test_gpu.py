"""GPU path: the same config on CUDA in bf16. Skips itself on machines without a GPU (CI never has one)."""

import pytest
import torch

from tests.conftest import EXAMPLES

from rftkit.config import load_config
from rftkit.train.loop import Trainer
from rftkit.train.sinks import read_jsonl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_grpo_steps_on_cuda_in_bf16(tmp_path):
    cfg = load_config(EXAMPLES / "grpo.yaml", [
        f"run.dir={tmp_path / 'run'}", "model.device=cuda", "model.dtype=bfloat16", "train.steps=3",
        "train.lr=2e-4", "run.eval_interval=0", "run.checkpoint_interval=2",
    ])
    trainer = Trainer(cfg, quiet=True)
    final = trainer.train()
    assert next(trainer.policy.module.parameters()).is_cuda
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 3 and all(r["actor/grad_norm"] is not None for r in rows)
    assert (final / "model.safetensors").exists()

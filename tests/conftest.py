"""Shared fixtures: toy models that share the bundled tokenizer, and a CLI runner."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rftkit.models import ASSETS
from rftkit.models.tiny import tiny_llama, train_tokenizer
from rftkit.tasks.arithmetic import random_problem

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "arithmetic"
BUNDLED = ASSETS / "tiny-arith"


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with an arithmetic tokenizer (fast unit tests)."""
    rng = random.Random(0)
    texts = [t for p in (random_problem(rng) for _ in range(500)) for t in (p.question, p.solution)]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = tiny_llama(tokenizer, hidden=64, layers=2, heads=2)
    out = tmp_path_factory.mktemp("toy-model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def grpo_run(tmp_path_factory) -> Path:
    """The bundled model after 60 GRPO steps of the example config (shared: trained once per session)."""
    from rftkit.config import load_config
    from rftkit.train.loop import Trainer

    run_dir = tmp_path_factory.mktemp("grpo") / "run"
    cfg = load_config(EXAMPLES / "grpo.yaml", [
        f"run.dir={run_dir}", "train.steps=60", "train.lr=2e-4", "run.eval_interval=0", "run.checkpoint_interval=0",
    ])
    Trainer(cfg, quiet=True).train()
    return run_dir


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`rft ARGS` in a subprocess, as a user would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "rftkit", *args], capture_output=True, text=True, cwd=cwd or REPO,
                          timeout=timeout, env=env)

"""The paths that protect a user's run: a run.dir that is not empty, --resume with a changed config or of a
finished run, a checkpoint of another model, GRPO with LoRA and KL, lora.merge_final, eval_at_start."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from rftkit.config import load_config
from rftkit.models import load_model
from rftkit.train.checkpoint import checkpoint_dir
from rftkit.train.loop import Trainer
from rftkit.train.sinks import read_jsonl
from tests.conftest import EXAMPLES, run_cli

ARGS = [str(EXAMPLES / "grpo.yaml"), "train.steps=2", "train.prompts_per_step=2", "rollout.num_generations=4",
        "train.micro_batch_size=8", "rollout.max_new_tokens=16", "run.eval_interval=0", "run.checkpoint_interval=1",
        "--quiet"]


def _train(*extra):
    done = run_cli("train", *ARGS, *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_run_dir_that_is_not_empty_is_refused_and_left_alone(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    done = run_cli("train", *ARGS, f"run.dir={run}")
    assert done.returncode == 1 and "is not empty" in done.stderr and f"--resume {run}" in done.stderr
    assert [p.name for p in run.iterdir()] == ["notes.txt"] and (run / "notes.txt").read_text() == "mine"


def test_resume_refuses_a_changed_config_but_takes_more_steps(tmp_path):
    run = tmp_path / "run"
    _train(f"run.dir={run}")
    changed = run_cli("train", "--resume", str(run), "train.lr=0.5", "--quiet")
    assert changed.returncode == 1 and "config differs" in changed.stderr and "train.lr" in changed.stderr
    longer = run_cli("train", "--resume", str(run), "train.steps=3", "--quiet")
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_resume_of_a_finished_run(tmp_path):
    run = tmp_path / "run"
    _train(f"run.dir={run}")
    before = load_file(run / "final" / "model.safetensors")
    again = run_cli("train", "--resume", str(run), "--quiet")  # checkpoints kept: nothing left to train
    assert again.returncode == 0 and "(step 2)" in again.stderr, again.stderr[-2000:]
    after = load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    shutil.rmtree(checkpoint_dir(run))  # no checkpoint left: a finished run cannot be resumed
    done = run_cli("train", "--resume", str(run), "--quiet")
    assert done.returncode == 1 and "already finished" in done.stderr


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path, toy_model_dir):
    ours, other = tmp_path / "ours", tmp_path / "other"
    _train(f"run.dir={ours}", "train.steps=1")
    _train(f"run.dir={other}", "train.steps=1", f"model.path={toy_model_dir}")
    shutil.copytree(checkpoint_dir(other) / "step-000001", checkpoint_dir(ours) / "step-000009")
    done = run_cli("train", "--resume", str(ours), "train.steps=12", "--quiet")
    assert done.returncode == 1 and "does not fit this model" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def _trainer(tmp_path, *overrides):
    cfg = load_config(EXAMPLES / "grpo.yaml", [f"run.dir={tmp_path / 'run'}", "train.prompts_per_step=2",
                                               "rollout.num_generations=4", "train.micro_batch_size=8",
                                               "rollout.max_new_tokens=16", "run.eval_interval=0", *overrides])
    return Trainer(cfg, quiet=True)


def test_grpo_with_lora_and_kl_takes_the_adapter_free_model_as_reference(tmp_path):
    trainer = _trainer(tmp_path, "train.steps=3", "lora.enabled=true", "algorithm.beta=0.1", "train.lr=1e-2")
    trainer.train()
    assert trainer.policy.reference is None  # no second copy: the reference is the model with the adapter off
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["actor/kl"] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter changes nothing
    assert rows[-1]["actor/kl"] > 1e-6  # after two updates the adapter moved the policy away from the base


@pytest.mark.parametrize("merge", [True, False])
def test_lora_merge_final(tmp_path, merge):
    trainer = _trainer(tmp_path, "train.steps=3", "train.prompts_per_step=4", "train.lr=1e-2", "lora.enabled=true",
                       "rollout.max_new_tokens=48", f"lora.merge_final={str(merge).lower()}")  # 48: answers finish
    final = trainer.train()
    assert (final / "adapter_config.json").exists() != merge
    if merge:  # a plain model: loads without peft, and its weights are not the base's
        model = load_model(str(final))
        assert not any("lora" in name for name, _ in model.named_parameters())
        base = load_model(str(trainer.model_path))
        assert any(not torch.equal(p, base.state_dict()[n]) for n, p in model.state_dict().items() if n in base.state_dict())


def test_eval_at_start_logs_the_starting_model_as_step_0(tmp_path):
    trainer = _trainer(tmp_path, "train.steps=2", "run.eval_interval=2", "run.eval_at_start=true")
    trainer.train()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "val/pass@1" in rows[0] and "val/pass@1" in rows[2] and "val/pass@1" not in rows[1]

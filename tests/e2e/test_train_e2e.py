"""GRPO on the bundled tiny model learns: every trained parameter changes and mean reward rises.

Also covers LoRA (adapter saved, loadable by `rft eval`) and a KL-regularised run on a toy model.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import BUNDLED, EXAMPLES, run_cli

from rftkit.config import load_config
from rftkit.eval.run import run_eval
from rftkit.models import load_model
from rftkit.train.loop import Trainer
from rftkit.train.sinks import read_jsonl


@pytest.mark.slow
def test_grpo_raises_reward_and_changes_every_parameter(grpo_run):
    final = grpo_run / "final"
    rows = read_jsonl(grpo_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 61))
    first = sum(r["critic/rewards/mean"] for r in rows[:15]) / 15
    last = sum(r["critic/rewards/mean"] for r in rows[-15:]) / 15
    assert last > first, f"training reward did not rise: first 15 steps {first:.3f}, last 15 steps {last:.3f}"
    for name in ("actor/entropy", "actor/grad_norm", "perf/time_per_step", "grader/latency_p50", "response_length/mean"):
        assert all(r.get(name) is not None for r in rows), name
    # held-out: the same seeded evaluation of the bundled and the trained model on val.jsonl
    val = str(EXAMPLES / "val.jsonl")
    before = run_eval(str(BUNDLED), val, "answer_match", samples=4)
    after = run_eval(str(final), val, "answer_match", samples=4)
    # Untrained, `after` would equal `before` exactly (same seeded evaluation). 60 steps gained
    # +0.030, +0.047 and +0.078 in three runs that differ only in float rounding (docs/LOG.md,
    # session 5), so the bar sits below that spread; the 250-step demo gains +0.20.
    assert after["reward_mean"] > before["reward_mean"] + 0.02, (before, after)
    before_w, after_w = load_file(BUNDLED / "model.safetensors"), load_file(final / "model.safetensors")
    unchanged = [n for n in before_w if torch.equal(before_w[n], after_w[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    samples = [json.loads(x) for x in (grpo_run / "samples.jsonl").read_text().splitlines()]
    assert samples and {"completion", "reward", "advantage"} <= samples[0].keys()


@pytest.mark.slow
def test_lora_run_saves_an_adapter_that_eval_loads(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", str(EXAMPLES / "grpo.yaml"), f"run.dir={run}", "train.steps=3", "train.prompts_per_step=4",
                   "lora.enabled=true", "lora.rank=4", "train.lr=1e-3", "run.eval_interval=0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (run / "final" / "adapter_config.json").exists()
    out = tmp_path / "eval.json"
    proc = run_cli("eval", "run", "--model", str(run / "final"), "--data", str(EXAMPLES / "val.jsonl"), "--samples", "2",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert {"pass@1", "pass@2", "reward_mean", "n_items"} <= result.keys() and result["n_items"] == 100


def test_kl_run_on_toy_model_loads_reference_and_logs_kl(tmp_path, toy_model_dir):
    cfg = load_config(EXAMPLES / "grpo.yaml", [
        f"model.path={toy_model_dir}", f"run.dir={tmp_path / 'run'}", "train.steps=2", "train.prompts_per_step=2",
        "rollout.num_generations=4", "train.micro_batch_size=4", "rollout.max_new_tokens=8", "algorithm.beta=0.1",
        "run.eval_interval=0", "train.lr=1e-2", "train.steps=3",
        # the random toy model never answers right: a length reward varies within a group, so step 1 updates
        "grader={type: length_penalty, max_len: 30, buffer: 25, unit: chars}",
    ])
    trainer = Trainer(cfg, quiet=True)
    trainer.train()
    assert trainer.policy.reference is not None
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["actor/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert rows[-1]["actor/kl"] > 1e-5, [(r["actor/kl"], r["critic/rewards/mean"], r.get("actor/grad_norm")) for r in rows]  # after an update at lr 1e-2 they differ (k3 >= 0 always)
    assert load_model(str(tmp_path / "run" / "final")).config.vocab_size > 0


@pytest.mark.parametrize("aggregation", ["sequence_mean", "constant"])
def test_other_loss_aggregations_train(tmp_path, aggregation):
    cfg = load_config(EXAMPLES / "grpo.yaml", [
        f"run.dir={tmp_path / 'run'}", "train.steps=2", "train.prompts_per_step=4", "run.eval_interval=0",
        f"algorithm.loss_aggregation={aggregation}", "algorithm.advantage=rloo",
    ])
    Trainer(cfg, quiet=True).train()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(r["actor/grad_norm"] > 0 for r in rows), rows

"""A two-source mixture trains both sources with their own graders, logs per-source metrics, draws prompts
by weight, and resumes without repeating or skipping a prompt; replay's SFT loss rides in the same update."""

from __future__ import annotations

import json
import re
import statistics

import pytest

from rftkit.config import load_config
from rftkit.graders import build_grader
from rftkit.train.loop import Trainer
from rftkit.types import Item
from tests.conftest import EXAMPLES, REPO, run_cli

FORMAT = {"type": "length_penalty", "name": "brevity", "max_len": 40, "buffer": 12}  # the second task: short answers


def _sources(tmp_path):
    rows = [json.loads(line) for line in (EXAMPLES / "train.jsonl").read_text().splitlines()]
    (tmp_path / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:120]))
    (tmp_path / "fmt.jsonl").write_text("".join(json.dumps({**r, "id": "fmt-" + r["id"]}) + "\n" for r in rows[120:180]))
    return [f"{{path: {tmp_path / 'arith.jsonl'}, weight: 3, name: arith}}",
            f"{{path: {tmp_path / 'fmt.jsonl'}, weight: 1, name: fmt, val: {EXAMPLES / 'val.jsonl'}, "
            f"grader: {json.dumps(FORMAT)}}}"]


def _args(tmp_path, run_dir, steps, *extra):
    return [str(EXAMPLES / "grpo.yaml"), f"data.train=[{', '.join(_sources(tmp_path))}]", f"train.steps={steps}",
            "train.prompts_per_step=8", "rollout.num_generations=4", "train.micro_batch_size=32",
            "run.checkpoint_interval=2", "run.eval_interval=0", "run.sample_interval=1", "run.samples_per_write=8",
            f"run.dir={run_dir}", *extra]


def _rows(run_dir, name):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


@pytest.mark.slow
def test_two_sources_train_with_their_own_graders_and_log_per_source_metrics(tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(None, _args(tmp_path, run_dir, 8, "run.eval_interval=8", f"data.val={EXAMPLES / 'val.jsonl'}")[1:])
    Trainer(cfg, quiet=True).train()
    metrics = _rows(run_dir, "metrics.jsonl")
    for m in metrics:
        assert m["data/arith/prompt_share"] + m["data/fmt/prompt_share"] == pytest.approx(1.0)
        assert "critic/rewards/arith/mean" in m and "critic/rewards/fmt/mean" in m
    assert {"val/pass@1", "val/fmt/pass@1"} <= metrics[-1].keys()
    # over the run's 64 draws the shares follow the 3:1 weights (sd of the share: sqrt(.75 * .25 / 64) = 0.054)
    share = statistics.fmean(m["data/arith/prompt_share"] for m in metrics)
    assert abs(share - 0.75) < 3 * 0.054, share

    answer_match, fmt = build_grader("answer_match"), build_grader(FORMAT)
    samples = _rows(run_dir, "samples.jsonl")
    assert {s["source"] for s in samples} == {"arith", "fmt"}
    for s in samples:  # each source's rewards are its own grader's
        item = Item(id=s["item_id"], messages=[], reference_answer=s["reference_answer"])
        grader = fmt if s["source"] == "fmt" else answer_match
        assert s["reward"] == grader.grade(item, s["completion"]).reward, s
        assert s["item_id"].startswith("fmt-") == (s["source"] == "fmt")
    for source in ("arith", "fmt"):  # both sources' completions were trained on (a non-zero advantage)
        assert any(s["advantage"] != 0 for s in samples if s["source"] == source), source


@pytest.mark.slow
def test_a_resumed_mixture_run_neither_repeats_nor_skips_prompts(tmp_path):
    full = run_cli("train", *_args(tmp_path, tmp_path / "full", 6), "--quiet")
    assert full.returncode == 0, full.stderr[-2000:]
    part = run_cli("train", *_args(tmp_path, tmp_path / "part", 4), "--quiet")
    assert part.returncode == 0, part.stderr[-2000:]
    resumed = run_cli("train", "--resume", str(tmp_path / "part"), "train.steps=6", "--quiet", cwd=REPO)
    assert resumed.returncode == 0 and "step-000004" in resumed.stderr, resumed.stderr[-2000:]

    def prompts(run_dir):
        order = {}
        for s in _rows(run_dir, "samples.jsonl"):
            order.setdefault(s["step"], [])
            if s["item_id"] not in order[s["step"]]:
                order[s["step"]].append(s["item_id"])
        return order

    want, got = prompts(tmp_path / "full"), prompts(tmp_path / "part")
    assert sorted(got) == list(range(1, 7))
    assert got == want  # the same prompts at every step, the resumed steps 5 and 6 included
    drawn = [i for step in sorted(got) for i in got[step]]
    assert len(drawn) == len(set(drawn)) == 48  # 48 draws from 120 + 60 rows: not one repeated


@pytest.mark.slow
def test_replay_adds_its_sft_loss_to_the_update(tmp_path):
    replay = REPO / "examples" / "sft" / "train.jsonl"
    common = [str(EXAMPLES / "grpo.yaml"), "train.steps=6", "train.prompts_per_step=4", "rollout.num_generations=4",
              "train.micro_batch_size=16", "train.lr=1e-3", "run.checkpoint_interval=0", "run.eval_interval=0",
              f"replay.path={replay}", "replay.batch_size=16"]
    losses = {}
    for weight in (0.0, 1.0):
        run_dir = tmp_path / f"w{weight}"
        Trainer(load_config(None, [*common[1:], f"data.train={EXAMPLES / 'train.jsonl'}", f"run.dir={run_dir}",
                                   f"replay.weight={weight}"]), quiet=True).train()
        losses[weight] = [m["replay/loss"] for m in _rows(run_dir, "metrics.jsonl")]
    assert len(losses[0.0]) == len(losses[1.0]) == 6
    # weight 0 measures the replay loss without training on it; weight 1 trains on it: lower by the end
    assert statistics.fmean(losses[1.0][-3:]) < statistics.fmean(losses[0.0][-3:]), losses
    assert re.match(r"^\d", str(losses[0.0][0]))

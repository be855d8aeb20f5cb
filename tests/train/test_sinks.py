"""Metric sinks: what TensorBoard and MLflow readers see equals metrics.jsonl."""

from __future__ import annotations

import math
import sys

import pytest

from rftkit.errors import UserError
from rftkit.train.sinks import JsonlSink, make_sinks, metric_name_from_mlflow_key, mlflow_key, read_jsonl

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

EXPERIMENT = "rftkit-test"


def metrics_for(step: int, offset: float = 0.0) -> dict:
    m = {
        "critic/rewards/mean": 0.1 * step + offset,
        "critic/rewards/min": 0.0,
        "critic/rewards/max": 1.0,
        "critic/rewards/std": 0.25 + 0.01 * step,
        "critic/frac_zero_std_groups": 0.125,
        "actor/entropy": 1.7 - 0.05 * step,
        "actor/kl": 0.001 * step,
        "actor/pg_loss": -0.02 * step + offset,
        "actor/clipfrac": 0.0,
        "actor/grad_norm": float("nan") if step == 2 else 0.5 + 0.1 * step,
        "response_length/mean": 123.5 + step,
        "response_length/max": 256,
        "response/clipped_ratio": 0.0625,
        "grader/errors": 0,
        "grader/timeouts": 1 if step == 4 else 0,
        "grader/latency_p50": 0.012,
        "grader/latency_p99": None if step == 3 else 0.25,
        "perf/time_per_step": 3.3,
        "perf/tokens_per_s": float("inf") if step == 5 else 1234.5,
    }
    if step % 2 == 0:
        m["val/reward_mean"] = 0.3 + 0.01 * step + offset
        m["val/pass@1"] = 0.25 + 0.05 * step + offset
    return m


def expected_from_jsonl(run_dir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} for the values metrics.jsonl holds as numbers (null = not measured)."""
    out: dict[str, dict[int, float]] = {}
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        step = row.pop("step")
        for key, value in row.items():
            if value is not None:
                out.setdefault(key, {})[step] = value
    return out


def tb_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_tensorboard_and_mlflow_match_metrics_jsonl(tmp_path):
    run_dir = tmp_path / "run-a"
    run_dir.mkdir()
    params = {"model": {"path": "tiny", "dtype": "float32"}, "train": {"lr": 1e-6, "steps": 5}, "note": "x" * 9000}
    sinks = make_sinks(run_dir, tensorboard=True, mlflow=True, mlflow_tracking_uri=None, experiment=EXPERIMENT, params=params)
    for step in range(1, 6):
        sinks.log(step, metrics_for(step))
    sinks.close()

    expected = expected_from_jsonl(run_dir)
    # metrics.jsonl keeps NaN/inf/None as null; those are the entries the other sinks must skip
    rows = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}
    assert rows[2]["actor/grad_norm"] is None and rows[3]["grader/latency_p99"] is None
    assert rows[5]["perf/tokens_per_s"] is None and "val/pass@1" not in rows[1]
    assert set(expected["val/pass@1"]) == {2, 4}
    assert 2 not in expected["actor/grad_norm"] and 3 not in expected["grader/latency_p99"]

    # TensorBoard, read back by TensorBoard's own reader
    tb = tb_scalars(run_dir / "tensorboard")
    assert set(tb) == set(expected)
    for tag, by_step in expected.items():
        got = tb[tag]
        assert [s for s, _ in got] == sorted(by_step), tag  # no skipped value written, no duplicate
        for step, value in got:
            assert math.isfinite(value)
            assert value == pytest.approx(by_step[step], rel=1e-6, abs=1e-7), (tag, step)

    # MLflow, read back by MLflow's own client
    uri = (run_dir / "mlruns").resolve().as_uri()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    assert set(run.data.metrics) == {mlflow_key(k) for k in expected}
    assert "val/pass_at_1" in run.data.metrics
    for tag, by_step in expected.items():
        assert mlflow_history(uri, run.info.run_id, mlflow_key(tag)) == sorted(by_step.items()), tag
    assert run.data.params["train.lr"] == "1e-06"
    assert run.data.params["model.dtype"] == "float32"
    assert 0 < len(run.data.params["note"]) < 9000  # cut to MLflow's limit


def test_mlflow_key_is_reversible():
    assert mlflow_key("val/pass@1") == "val/pass_at_1"
    assert mlflow_key("critic/rewards/mean") == "critic/rewards/mean"
    for name in ["val/pass@1", "critic/rewards/mean", "grader/latency_p99", "a|b@c d"]:
        assert metric_name_from_mlflow_key(mlflow_key(name)) == name


def test_two_runs_in_one_process_get_separate_mlflow_runs(tmp_path):
    uri = (tmp_path / "shared-mlruns").as_uri()
    for name in ("r1", "r2"):
        (tmp_path / name).mkdir()
        sinks = make_sinks(tmp_path / name, tensorboard=False, mlflow=True, mlflow_tracking_uri=uri, experiment=EXPERIMENT, params=None)
        sinks.log(1, {"actor/kl": 1.0 if name == "r1" else 2.0})
        sinks.close()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    got = {r.info.run_name: (r.info.status, r.data.metrics["actor/kl"]) for r in runs}
    assert got == {"r1": ("FINISHED", 1.0), "r2": ("FINISHED", 2.0)}


def test_tensorboard_purge_on_resume(tmp_path):
    run_dir = tmp_path / "run-b"
    run_dir.mkdir()
    sinks = make_sinks(run_dir, tensorboard=True, mlflow=False, mlflow_tracking_uri=None, experiment=EXPERIMENT, params=None)
    for step in range(1, 6):
        sinks.log(step, metrics_for(step))
    sinks.close()  # "killed" after step 5, last checkpoint at step 3

    sinks = make_sinks(run_dir, tensorboard=True, mlflow=False, mlflow_tracking_uri=None, experiment=EXPERIMENT, params=None, resume_step=3)
    for step in (4, 5):
        sinks.log(step, metrics_for(step, offset=10.0))
    sinks.close()

    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    tb = tb_scalars(run_dir / "tensorboard")
    mean = dict(tb["critic/rewards/mean"])
    assert [s for s, _ in tb["critic/rewards/mean"]] == [1, 2, 3, 4, 5]  # no duplicates
    for step in (1, 2, 3):
        assert mean[step] == pytest.approx(metrics_for(step)["critic/rewards/mean"], rel=1e-6)
    for step in (4, 5):
        assert mean[step] == pytest.approx(metrics_for(step, 10.0)["critic/rewards/mean"], rel=1e-6)
    assert tb["val/pass@1"] == [(2, pytest.approx(0.35)), (4, pytest.approx(10.45))]


@pytest.mark.parametrize(
    ("module", "kwargs", "message"),
    [
        ("tensorboard", {"tensorboard": True, "mlflow": False}, "TensorBoard logging needs the tensorboard package: pip install tensorboard"),
        ("mlflow", {"tensorboard": False, "mlflow": True}, "MLflow logging needs the mlflow-skinny package: pip install mlflow-skinny"),
    ],
)
def test_missing_package_is_a_user_error(tmp_path, monkeypatch, module, kwargs, message):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(UserError) as err:
        make_sinks(tmp_path, mlflow_tracking_uri=None, experiment=EXPERIMENT, params=None, **kwargs)
    assert str(err.value) == message
    assert not (tmp_path / "metrics.jsonl").exists()  # checked before anything is opened


def test_jsonl_only_needs_no_optional_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    sinks = make_sinks(tmp_path, tensorboard=False, mlflow=False, mlflow_tracking_uri=None, experiment=EXPERIMENT, params=None)
    sinks.log(1, {"actor/kl": float("nan"), "actor/entropy": 1.5})
    sinks.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "actor/kl": None, "actor/entropy": 1.5}]


def test_jsonl_sink_writes_samples_and_events_to_their_own_files(tmp_path):
    sink = JsonlSink(tmp_path / "metrics.jsonl", tmp_path / "samples.jsonl", tmp_path / "events.jsonl")
    sink.log(1, {"actor/kl": 0.5})
    sink.samples(1, [{"step": 1, "completion": "a", "advantage": 0.5}, {"step": 1, "completion": "b", "advantage": -0.5}])
    sink.event(2, "checkpoint", {"path": "p"})
    sink.samples(3, [])  # nothing to write
    sink.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "actor/kl": 0.5}]
    assert [r["completion"] for r in read_jsonl(tmp_path / "samples.jsonl")] == ["a", "b"]
    assert read_jsonl(tmp_path / "events.jsonl") == [{"step": 2, "event": "checkpoint", "path": "p"}]
    quiet = JsonlSink(tmp_path / "only-metrics.jsonl")  # no samples or events paths: those are dropped
    quiet.samples(1, [{"step": 1}])
    quiet.event(1, "checkpoint", {})
    quiet.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "metrics.jsonl", "only-metrics.jsonl", "samples.jsonl"]


def test_a_training_run_writes_the_same_values_to_all_three_sinks(tmp_path, toy_model_dir):
    from tests.conftest import EXAMPLES

    from rftkit.config import load_config
    from rftkit.train.loop import Trainer

    run_dir = tmp_path / "run"
    cfg = load_config(EXAMPLES / "grpo.yaml", [
        f"model.path={toy_model_dir}", f"run.dir={run_dir}", "train.steps=3", "train.prompts_per_step=2",
        "rollout.num_generations=4", "train.micro_batch_size=8", "rollout.max_new_tokens=8", "run.eval_interval=0",
        "run.tensorboard=true", "run.mlflow=true",
    ])
    Trainer(cfg, quiet=True).train()
    expected = expected_from_jsonl(run_dir)
    assert set(expected["critic/rewards/mean"]) == {1, 2, 3}
    tb = tb_scalars(run_dir / "tensorboard")
    uri = (run_dir / "mlruns").resolve().as_uri()
    (run,) = MlflowClient(uri).search_runs(MlflowClient(uri).get_experiment_by_name("rftkit").experiment_id)
    for name, by_step in expected.items():
        assert dict(tb[name]) == pytest.approx(by_step, rel=1e-6), name
        assert dict(mlflow_history(uri, run.info.run_id, mlflow_key(name))) == pytest.approx(by_step), name


def test_a_grpo_run_writes_samples_with_advantages_and_a_checkpoint_event(tmp_path, toy_model_dir):
    import json

    import torch

    from tests.train.test_grpo_variants import COIN, StepResults, grpo_config

    from rftkit.algorithms.grpo import group_mean_std
    from rftkit.train.loop import Trainer

    (tmp_path / "coin_reward.py").write_text(COIN)  # pays 1 for about one completion in five: advantages vary
    run_dir = tmp_path / "run"
    cfg = grpo_config(toy_model_dir, run_dir, "grader.type=reward_function", f"grader.path={tmp_path / 'coin_reward.py'}",
                      "train.steps=3", "run.sample_interval=2", "run.samples_per_write=2", "run.checkpoint_interval=2")
    seen = StepResults()
    Trainer(cfg, quiet=True, callbacks=[seen]).train()

    samples = read_jsonl(run_dir / "samples.jsonl")
    assert sorted({r["step"] for r in samples}) == [1, 2]  # step 1, then every sample_interval steps
    for step in (1, 2):
        rows = [r for r in samples if r["step"] == step]
        result = seen.results[step]
        groups = result.groups[:2]  # samples_per_write groups
        assert len(rows) == sum(len(g.completions) for g in groups) == 8
        assert all({"completion", "reward", "advantage", "item_id"} <= r.keys() for r in rows)
        assert [r["item_id"] for r in rows] == [g.item.id for g in groups for _ in g.completions]
        assert [r["reward"] for r in rows] == [c.score.reward for g in groups for c in g.completions]
        assert [r["advantage"] for r in rows] == [round(a, 4) for per_group in result.advantages[:2] for a in per_group]
        # the advantage is the group's normalised reward (group_mean_std), worked from the logged rewards
        rewards = torch.tensor([[r["reward"] for r in rows[i : i + 4]] for i in (0, 4)])
        want = group_mean_std(rewards).flatten().tolist()
        assert [r["advantage"] for r in rows] == pytest.approx(want, abs=1e-4)
    assert any(r["advantage"] != 0 for r in samples), "every sampled group was all-equal: the test shows nothing"

    events = read_jsonl(run_dir / "events.jsonl")
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    assert [e["step"] for e in checkpoints] == [2]  # checkpoint_interval 2 of 3 steps
    assert checkpoints[0]["path"] == str(run_dir / "checkpoints" / "step-000002")
    assert (run_dir / "checkpoints" / "step-000002" / "trainer_state.json").exists()
    assert json.loads((run_dir / "checkpoints" / "step-000002" / "trainer_state.json").read_text())["step"] == 2

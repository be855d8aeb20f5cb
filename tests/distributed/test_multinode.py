"""Workers on different nodes of Ray's own multi-node simulation (ray.cluster_utils.Cluster), one machine."""

from __future__ import annotations

import json

import pytest

from rftkit.config import load_config
from rftkit.distributed import WorkerRequest, connect
from rftkit.errors import ConfigError
from rftkit.train.loop import Trainer

from tests.conftest import EXAMPLES

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def test_rollout_and_grader_workers_on_two_nodes_train(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)  # each node fits one rollout worker (1.5 CPUs) and one grader worker (0.5)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        cfg = load_config(EXAMPLES / "grpo.yaml", [
            f"run.dir={tmp_path / 'run'}", "train.steps=2", "train.prompts_per_step=4", "rollout.num_generations=4",
            "train.micro_batch_size=16", "run.checkpoint_interval=0", "runtime.backend=ray",
            f"runtime.address={cluster.address}", "runtime.rollout_workers=2", "runtime.grader_workers=2",
            "runtime.cpus_per_rollout_worker=1.5"])
        trainer = Trainer(cfg, quiet=True)
        nodes = {}
        original = trainer.stage.build

        def build(policy, tokenizer):  # the workers exist once the stage is built: ask each where it runs
            original(policy, tokenizer)
            nodes["rollout"] = set(ray.get([w.node_id.remote() for w in trainer.stage.engine.workers]))
            nodes["grader"] = set(ray.get([w.node_id.remote() for w in trainer.stage.executor.workers]))

        trainer.stage.build = build
        trainer.train()
        assert len(nodes["rollout"]) == 2 and len(nodes["grader"]) == 2  # one of each on each node
        metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1, 2]
        with pytest.raises(ConfigError, match=r"need 10 CPUs \(10 rollout x 1\) but the Ray cluster has 4"):
            connect(cluster.address, [WorkerRequest("rollout", 10, 1.0, 0.0)])  # a joined cluster is not stretched
    finally:
        ray.shutdown()
        cluster.shutdown()

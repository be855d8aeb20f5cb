"""Record seeded 10-step CPU runs: per-step rewards and losses and a hash of the final weights.

    python scripts/make_step_fixture.py              # writes tests/e2e/fixtures/step_fixture.json
    python scripts/make_step_fixture.py --check      # reruns and compares with the committed file

The fixture pins the behaviour of the training step so that a refactor of the plumbing can be
checked to change nothing: the same seed must give the same per-step `critic/rewards/mean`
(and losses) and bit-identical final weights. `runs` was written before the architecture
refactor (issue 13) and is never rewritten by hand; a run whose numbers changed for a known,
measured cause gets an entry under `explained` (its new numbers and the cause, also in
docs/LOG.md), which `--check` and `tests/e2e/test_step_fixture.py` compare against instead.

Runs pin one torch thread and the PyTorch decode path (RFTKIT_NATIVE=0) so that the numbers do
not depend on the core count or on the C compiler; they still depend on the CPU's float kernels,
so the fixture records the machine it was made on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "e2e" / "fixtures" / "step_fixture.json"
EXAMPLES = ROOT / "examples"

COMMON = ["train.steps=10", "train.threads=1", "run.eval_interval=0", "run.sample_interval=0",
          "run.checkpoint_interval=0", "train.prompts_per_step=8", "train.micro_batch_size=32"]
# name -> (config file, overrides): the default GRPO step and the variants whose plumbing the refactor moves
RUNS = {
    "grpo": ("arithmetic/grpo.yaml", []),
    "grpo_variants": ("arithmetic/grpo.yaml", [
        "algorithm.beta=0.05", "algorithm.kl_in=reward", "algorithm.updates_per_batch=2",
        "algorithm.dynamic_sampling=true", "algorithm.max_refill_rounds=1", "algorithm.overlong_buffer=8",
        "algorithm.epsilon_high=0.28", "algorithm.loss_aggregation=sequence_mean", "rollout.temperature=0.8"]),
    "grpo_lora_kl_loss": ("arithmetic/grpo.yaml", [
        "lora.enabled=true", "lora.rank=4", "algorithm.beta=0.1", "algorithm.kl_in=loss", "train.lr=1e-3"]),
    "sft": ("sft/sft.yaml", ["sft.packing=true"]),
    "dpo": ("dpo/dpo.yaml", []),
    "asft": ("asft/asft.yaml", []),
    "reward_model": ("reward_model/reward_model.yaml", []),
    "rejection_sampling": ("rejection_sampling/rejection_sampling.yaml", [
        "rejection_sampling.rounds=2", "rejection_sampling.prompts_per_round=16"]),
}
METRICS = ("critic/rewards/mean", "actor/pg_loss", "actor/kl", "actor/grad_norm", "train/loss")


def weights_hash(final: Path) -> str:
    """sha256 over the final folder's tensors, sorted by name (file layout and metadata do not count)."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for file in sorted(final.glob("*.safetensors")):
        tensors = load_file(file)
        for name in sorted(tensors):
            digest.update(name.encode())
            digest.update(tensors[name].contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()


def run_one(name: str) -> dict:
    from rftkit.config import load_config
    from rftkit.train.loop import Trainer
    from rftkit.train.sinks import read_jsonl

    config, overrides = RUNS[name]
    work = Path(tempfile.mkdtemp(prefix=f"fixture-{name}-"))
    cfg = load_config(EXAMPLES / config, COMMON + overrides + [f"run.dir={work / 'run'}"])
    final = Trainer(cfg, quiet=True).train()
    rows = read_jsonl(work / "run" / "metrics.jsonl")
    steps = {key: [r.get(key) for r in rows] for key in METRICS if any(r.get(key) is not None for r in rows)}
    return {"config": config, "overrides": COMMON + overrides, "metrics": steps, "weights_sha256": weights_hash(final)}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    import torch
    import transformers

    return {"cpu": cpu, "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def expected(name: str) -> dict:
    """The committed run: as recorded before the refactor, or the explained replacement (`explained`, with its cause)."""
    fixture = json.loads(FIXTURE.read_text())
    return fixture.get("explained", {}).get(name) or fixture["runs"][name]


def differs(run: dict, want: dict) -> bool:
    return run["metrics"] != want["metrics"] or run["weights_sha256"] != want["weights_sha256"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed fixture instead of writing it")
    parser.add_argument("--only", nargs="*", default=None, help="run only these names: " + ", ".join(RUNS))
    args = parser.parse_args()
    os.environ["RFTKIT_NATIVE"] = "0"
    names = args.only or list(RUNS)
    runs = {}
    for name in names:
        runs[name] = run_one(name)
        print(name, json.dumps(runs[name]["metrics"].get("critic/rewards/mean") or runs[name]["metrics"].get("train/loss")),
              runs[name]["weights_sha256"][:16], flush=True)
    if args.check:
        bad = [n for n in names if differs(runs[n], expected(n))]
        print("identical" if not bad else f"differ: {bad}")
        return 1 if bad else 0
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {FIXTURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The training algorithms, each a Stage the shared loop drives: a table, loaded lazily.

`algorithm.name` picks one; the loop (train/loop.py) owns everything they share: the run
directory, model loading (with `init_from`), LoRA, the Policy (optimizer, schedule, reference),
checkpoints, sinks, health checks, Ctrl-C, and the final model. A stage owns its data, its
step (returning a StepResult) and its held-out metrics, and trains only through its Policy.
"""

from __future__ import annotations

import importlib

STAGES = {
    "grpo": "rftkit.train.stages.grpo:GRPOStage",
    "sft": "rftkit.train.stages.sft:SFTStage",
    "dpo": "rftkit.train.stages.dpo:DPOStage",
    "reward_model": "rftkit.train.stages.reward_model:RewardModelStage",
    "rejection_sampling": "rftkit.train.stages.rejection_sampling:RejectionSamplingStage",
    "asft": "rftkit.train.stages.asft:ASFTStage",
    "kto": "rftkit.train.stages.kto:KTOStage",
}


def stage_class(name: str):
    module, _, cls = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), cls)

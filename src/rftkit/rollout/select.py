"""Which engine samples a run: `rollout.engine` (auto | hf | vllm), decided before any model loads."""

from __future__ import annotations

from rftkit.errors import ConfigError


def choose_engine(name: str, model_path: str, device: str, backend: str = "local") -> str:
    """"hf" or "vllm"; exit 2 (ConfigError) when vllm is asked for and cannot run here."""
    from rftkit.rollout.vllm import check_vllm_model, vllm_available

    if name == "hf":
        return "hf"
    if name == "auto":
        import torch

        gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        return "vllm" if gpu and vllm_available() and backend == "local" else "hf"
    if backend != "local":
        raise ConfigError("rollout.engine=vllm with runtime.backend=ray is not supported yet: the Ray rollout workers "
                          "hold the HF engine (use rollout.engine=hf, or runtime.backend=local)")
    from rftkit.models import resolve_model_path

    check_vllm_model(resolve_model_path(model_path))
    return "vllm"

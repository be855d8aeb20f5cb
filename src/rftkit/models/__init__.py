"""Load Hugging Face models and tokenizers, apply LoRA, and turn conversations into token ids.

The bundled tiny model is an ordinary Hugging Face folder, so it goes through exactly the
code path a user's `Qwen/Qwen2.5-0.5B-Instruct` does; `bundled:NAME` is only a shortcut
for its location inside the installed package.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from rftkit.errors import UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_PREFIX = "bundled:"
DEFAULT_MODEL = "bundled:tiny-arith"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


BUILD_SCRIPTS = {"tiny-arith": "build_tiny_model.py", "tiny-tools": "build_tiny_tools_model.py",
                 "tiny-reason": "build_tiny_reasoning_model.py"}  # scripts/ that build each bundled model


def resolve_model_path(spec: str) -> str:
    """`bundled:NAME` -> the asset folder; an existing folder -> itself; anything else is a hub name."""
    if spec.startswith(BUNDLED_PREFIX):
        path = ASSETS / spec[len(BUNDLED_PREFIX):]
        if not (path / "config.json").exists():
            available = sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").exists()) if ASSETS.exists() else []
            name = spec[len(BUNDLED_PREFIX):]
            script = BUILD_SCRIPTS.get(name, "build_tiny_model.py")
            raise UserError(
                f"bundled model {spec!r} not found in {ASSETS}; available: {available or 'none'} "
                f"(build it with `python scripts/{script}`)"
            )
        return str(path)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise UserError(f"{path} is not a Hugging Face model folder (no config.json or adapter_config.json)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model path not found: {spec}")
    return spec  # a hub id such as Qwen/Qwen2.5-0.5B-Instruct; needs network or a local cache


def quiet_transformers() -> None:
    """transformers' per-file "Loading weights"/"Writing shards" bars would interleave with ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(spec))
    if tok.pad_token_id is None:  # many chat models ship without one; padding is always masked anyway
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise UserError(f"tokenizer of {spec} has no chat template; rftkit needs one to format Items")
    return tok


def load_model(spec: str, dtype: str = "float32", device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    torch_dtype = DTYPES[dtype]
    path = resolve_model_path(spec)
    if (Path(path) / "adapter_config.json").exists():  # a LoRA run's final folder: base + adapter, merged
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch_dtype).merge_and_unload().to(device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    return model.to(device)



def load_checkpoint_model(base: str, weights_file: str | Path, lora: dict | None = None):
    """A policy checkpoint's model: `base` (the run's starting model) with the checkpoint's trained weights
    (RUN_DIR/checkpoints/step-N/weights.safetensors: all weights, or a LoRA adapter's, merged here). `lora`: the
    run's `lora` config (rank, alpha, dropout, target_modules) when it trained an adapter."""
    from safetensors.torch import load_file

    model = load_model(base)
    if lora:
        model = apply_lora(model, lora["rank"], lora["alpha"], lora.get("dropout", 0.0), lora["target_modules"])
    weights = load_file(str(weights_file))
    unknown = set(weights) - {n for n, _ in model.named_parameters()}
    if unknown:
        raise UserError(f"{weights_file}: the checkpoint does not fit {base} (unexpected {sorted(unknown)[:3]})")
    with torch.no_grad():
        model.load_state_dict(weights, strict=False)
    return model.merge_and_unload() if lora else model


def apply_lora(model, rank: int, alpha: float, dropout: float, target_modules: list[str] | str, task_type: str = "CAUSAL_LM",
               modules_to_save: list[str] | None = None):
    """Wrap `model` in a LoRA adapter; `modules_to_save` are trained in full (e.g. a reward model's new score head)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type=task_type,
                     modules_to_save=modules_to_save)
    with warnings.catch_warnings():
        # peft's PeftModel.__init__ reads transformers' deprecated `is_gradient_checkpointing`: its call, not ours,
        # and the user can do nothing about it; only that one message is silenced, and only here
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, cfg)


def stop_token_ids(tokenizer, model) -> list[int]:
    """Every id that ends an assistant turn: the tokenizer's eos and the model's generation eos."""
    ids = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, gen_eos):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return sorted(ids)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the conversation followed by the assistant header (generation prompt)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def sft_example(tokenizer, messages: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids + end-of-turn) for supervised training on the answer only.

    Encoding prompt and answer separately keeps the boundary exact; generation sees the
    same prompt ids, so train and sample agree on tokenisation.
    """
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt_ids(tokenizer, messages), answer_ids

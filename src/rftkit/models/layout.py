"""What rftkit knows about a model's module layout: which models its own forwards may run.

Two of rftkit's forwards walk a model's modules themselves instead of calling `model(...)`:
the decode loop (rollout/decode.py) and the shared-prefix training forward (models/packed.py).
Both need the Llama layout (`model.model.{embed_tokens, layers, norm, rotary_emb}` and
`model.lm_head`, full attention everywhere); every other model goes through its own forward.
"""

from __future__ import annotations

_LAYOUT = ("embed_tokens", "layers", "norm", "rotary_emb")


def decoder_parts(model):
    """(inner model with embed_tokens/layers/norm/rotary_emb, lm_head), or None when the layout differs."""
    if hasattr(model, "get_base_model"):  # peft: the LoRA layers live inside the base model's modules
        model = model.get_base_model()
    inner, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if inner is None or head is None or not all(hasattr(inner, name) for name in _LAYOUT):
        return None
    return inner, head


def supports(model) -> bool:
    """True for full-attention decoders with the Llama layout (no sliding window, no hybrid layers, no q/k norms)."""
    cfg = model.config
    if decoder_parts(model) is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or []):
        return False
    return cfg.model_type in ("llama", "qwen2", "mistral")


def packed_forward_usable(model) -> bool:
    """True when the shared-prefix forward computes exactly what the model's own forward does
    (the layout is supported, and no attention dropout is active: it applies none)."""
    return supports(model) and not (model.training and getattr(model.config, "attention_dropout", 0.0))

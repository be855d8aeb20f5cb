"""Building blocks of small from-scratch models: a ChatML tokenizer and a small Llama.

Used by scripts/build_tiny_model.py for the bundled model and by tests for toy models
that share its tokenizer. The result is a plain Hugging Face folder.
"""

from __future__ import annotations

from collections.abc import Iterable

CHAT_TEMPLATE = (
    r"{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    r"{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
ROLE_TEXTS = ["user\n", "assistant\n", "system\n", "You are a helpful assistant."]


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE with digits kept as single tokens (as Llama/Qwen do), ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) + ROLE_TEXTS * 200, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>")
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_llama(tokenizer, hidden: int = 256, layers: int = 4, heads: int = 4, intermediate: int | None = None):
    """A randomly initialised LlamaForCausalLM sized for CPU work (seed torch first)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model

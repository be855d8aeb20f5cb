"""Model helpers (rftkit/models): the chat-template prompt that sampling and the stages feed the model."""

import pytest

from rftkit.models import load_model, load_tokenizer, prompt_ids


@pytest.fixture(scope="module")
def toy(toy_model_dir):
    return load_model(str(toy_model_dir)), load_tokenizer(str(toy_model_dir))


def test_prompt_ids_use_the_chat_template(toy):
    _, tok = toy
    text = tok.decode(prompt_ids(tok, [{"role": "user", "content": "What is 1 + 2?"}]))
    assert text == "<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n"

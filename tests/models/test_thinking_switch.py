"""reasoning.effort on the chat template's thinking switch (models/chat.py): honoured, or exit 2 — never ignored."""

import pytest

from tests.conftest import EXAMPLES, run_cli
from rftkit.errors import ConfigError
from rftkit.models import load_tokenizer, prompt_ids
from rftkit.models.chat import has_thinking_switch, set_thinking_switch

MESSAGES = [{"role": "user", "content": "What is 2+2?"}]
# Qwen3's switch, reduced to its one branch: thinking off pre-fills an empty block
SWITCH = ("{% if add_generation_prompt and enable_thinking is defined and enable_thinking is false %}"
          "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}")


@pytest.fixture
def tok():
    return load_tokenizer("bundled:tiny-arith")


@pytest.fixture
def switched(tok):
    tok.chat_template = tok.chat_template + SWITCH
    return tok


def test_the_bundled_template_has_no_switch(tok, switched):
    assert has_thinking_switch(load_tokenizer("bundled:tiny-arith")) is False
    assert has_thinking_switch(switched) is True


@pytest.mark.parametrize("effort", ["low", "high"])
def test_effort_without_a_switch_is_an_error_naming_the_model(tok, effort):
    with pytest.raises(ConfigError, match=r"reasoning.effort: \w+ .*model bundled:tiny-arith has none.*set reasoning.effort to none"):
        set_thinking_switch(tok, effort, "bundled:tiny-arith")


@pytest.mark.parametrize("effort", [None, "none"])
def test_no_effort_or_none_leaves_a_switchless_template_alone(tok, effort):
    before = tok.chat_template
    set_thinking_switch(tok, effort, "bundled:tiny-arith")
    assert tok.chat_template == before


def decoded(tok):
    return tok.decode(prompt_ids(tok, MESSAGES))


@pytest.mark.parametrize("effort, empty_block", [("none", True), ("low", False), ("high", False), (None, False)])
def test_effort_sets_the_switch_where_prompts_are_tokenised(switched, effort, empty_block):
    set_thinking_switch(switched, effort, "m")
    assert decoded(switched).endswith("<think>\n\n</think>\n\n") is empty_block


def test_an_explicit_keyword_still_wins(switched):
    set_thinking_switch(switched, "none", "m")
    text = switched.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False, enable_thinking=True)
    assert not text.endswith("</think>\n\n")


def test_rft_train_effort_high_on_the_bundled_model_exits_2(tmp_path):
    result = run_cli("train", str(EXAMPLES / "grpo.yaml"), "reasoning.enabled=true", "reasoning.effort=high",
                     "train.steps=1", f"run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "enable_thinking" in result.stderr and "bundled:tiny-arith" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before any step

"""The thinking/answer split (rollout/thinking.py): one rule per malformed shape, never an exception."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rftkit.config import ReasoningConfig
from rftkit.rollout.thinking import STATUSES, split_completion, split_groups, split_thinking, thinking_tokens
from rftkit.types import Completion, Group, Item, Trajectory


@pytest.mark.parametrize("text, reasoning, answer, status", [
    ("<think>7*8 is 56</think>\n\nANSWER: 56", "7*8 is 56", "ANSWER: 56", "ok"),
    ("  \n<think> x </think>5", "x", "5", "ok"),  # whitespace before the block is layout
    ("ANSWER: 56", "", "ANSWER: 56", "none"),
    ("<think>7*8 is", "7*8 is", "", "unclosed"),
    ("7*8 is 56</think>\nANSWER: 56", "7*8 is 56", "ANSWER: 56", "implicit_open"),  # Qwen3 / R1: <think> in the prompt
    ("<think>a</think>x<think>b</think>y", "a\n\nb", "xy", "repeated"),
    ("a</think>x<think>b</think>y", "a\n\nb", "xy", "repeated"),  # implicit block, then an explicit one
    ("<think>a</think>ans<think>b", "a\n\nb", "ans", "unclosed"),
    ("<think>a<think>b</think>c</think>", "a<think>b", "c</think>", "ok"),  # no nesting: the first close ends it
    ("<think>a</think>5</think>", "a", "5</think>", "ok"),  # a stray close tag stays in the answer
    ("<think></think>5", "", "5", "ok"),  # an empty block is a block
    ("Sure. <think>x</think> 5", "x", "Sure.  5", "inline"),
    ("", "", "", "none"),
])
def test_split_rules(text, reasoning, answer, status):
    split = split_thinking(text, "<think>", "</think>")
    assert (split.reasoning, split.answer, split.status) == (reasoning, answer, status)


def test_end_marks_the_thinking_region():
    assert split_thinking("<think>ab</think>c").end == len("<think>ab</think>")
    assert split_thinking("abc").end == 0
    assert split_thinking("<think>abc").end == len("<think>abc")


def test_other_tags_and_empty_tags():
    assert split_thinking("[T]why[/T]42", "[T]", "[/T]").answer == "42"
    assert split_thinking("<think>a</think>b", "", "</think>").status == "none"


TAGS = st.sampled_from([("<think>", "</think>"), ("<", ">"), ("[T]", "[/T]")])
# texts dense in tags and tag fragments, where the malformed shapes live
TAGGY = st.lists(st.sampled_from(list("ab <>/[]T\n") + ["<think>", "</think>"]), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=80), TAGGY), tags=TAGS)
def test_never_raises_and_never_grows(text, tags):
    split = split_thinking(text, *tags)
    assert split.status in STATUSES
    assert len(split.reasoning) + len(split.answer) <= len(text)
    assert 0 <= split.end <= len(text)


def _plain(tags):
    return st.text(max_size=30).filter(lambda s: tags[0] not in s and tags[1] not in s).map(str.strip)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), tags=TAGS)
def test_well_formed_round_trips(data, tags):
    open_tag, close_tag = tags
    reasoning = data.draw(_plain(tags))
    answer = data.draw(_plain(tags))
    split = split_thinking(f"{open_tag}{reasoning}{close_tag}\n\n{answer}", open_tag, close_tag)
    assert (split.reasoning, split.answer, split.status) == (reasoning, answer, "ok")


def chars(text):  # a character-level stand-in for a tokenizer: one id per character
    return [ord(ch) for ch in text]


def decode(ids):
    return "".join(chr(i) for i in ids)


def test_thinking_tokens_locates_the_split_in_token_space():
    text = "<think>abc</think>42"
    assert thinking_tokens(chars(text), decode, split_thinking(text).end) == len("<think>abc</think>")
    assert thinking_tokens(chars(text), decode, 0) == 0


def test_split_completion_keeps_text_and_tokens():
    cfg = ReasoningConfig(enabled=True)
    text = "<think>abc</think>42"
    c = split_completion(Completion(text, chars(text) + [0], [], "stop"), cfg, decode)  # 0: the end-of-turn token
    assert (c.text, c.reasoning, c.answer, c.thinking_tokens) == (text, "abc", "42", 18)
    assert c.token_ids == chars(text) + [0]
    whole = split_completion(Completion(text, chars(text), [], "stop"), cfg.model_copy(update={"grade_thinking": True}), decode)
    assert whole.answer == text and whole.reasoning == "abc"  # grade_thinking: graders see everything
    cut = split_completion(Completion("<think>ab", chars("<think>ab"), [], "length"), cfg, decode)
    assert (cut.answer, cut.thinking_tokens) == ("", 9)


def test_split_groups_only_when_enabled_and_not_trajectories():
    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return decode(ids)

    text = "<think>a</think>b"
    episode = Completion(text, chars(text), [], "stop", trajectory=Trajectory([], [], []))
    groups = [Group(Item("i", []), [], [Completion(text, chars(text), [], "stop"), episode])]
    assert split_groups(groups, ReasoningConfig(), Tok()) is groups
    single, multi = split_groups(groups, ReasoningConfig(enabled=True), Tok())[0].completions
    assert single.answer == "b" and multi.reasoning is None

"""`reasoning_metrics`: thinking/answer lengths in sampled tokens and tokens per correct answer, worked by hand."""

import math

from rftkit.config import ReasoningConfig
from rftkit.metrics import reasoning_metrics
from rftkit.rollout.thinking import split_groups
from rftkit.types import Completion, Group, Item, Score, Trajectory

ITEM = Item("q", [{"role": "user", "content": "2+2?"}])


class CharTokenizer:  # one id per character, as the bundled tokenizer
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i)  # 0: the end-of-turn token, skipped as a special token


def completion(text, reward, eos=True):
    return Completion(text, [ord(ch) for ch in text] + ([0] if eos else []), [], "stop" if eos else "length",
                      score=Score(reward))


def split(*completions):
    return split_groups([Group(ITEM, [], list(completions))], ReasoningConfig(enabled=True), CharTokenizer())


def test_lengths_and_tokens_per_correct_by_hand():
    groups = split(completion("<think>abcd</think>42", 1.0),  # 19 + 3 (42 and end-of-turn) = 22 tokens
                   completion("<think>ab</think>41", 0.0),  # 17 + 3 = 20
                   completion("<think>abcdefgh", None, eos=False))  # unclosed: all 15 thinking, 0 answer
    m = reasoning_metrics(groups)
    assert m["response/thinking_length_mean"] == (19 + 17 + 15) / 3
    assert m["response/thinking_length_max"] == 19
    assert m["response/answer_length_mean"] == (3 + 3 + 0) / 3
    assert m["response/budget_hit_ratio"] == 0.0  # no budget yet
    assert m["response/tokens_per_correct"] == (22 + 20 + 15) / 1  # every token spent, per correct answer


def test_no_thinking_and_nothing_correct():
    m = reasoning_metrics(split(completion("ANSWER: 5", 0.5)))
    assert m["response/thinking_length_mean"] == 0 and m["response/answer_length_mean"] == 10
    assert math.isnan(m["response/tokens_per_correct"])  # a reward of 0.5 is not correct


def test_unsplit_completions_count_only_in_tokens_per_correct():
    episode = Completion("x", [1, 2, 3, 4], [], "stop", score=Score(1.0), loss_mask=[1, 1, 0, 1],
                         trajectory=Trajectory([], [], []))
    m = reasoning_metrics(split(episode))
    assert math.isnan(m["response/thinking_length_mean"]) and m["response/tokens_per_correct"] == 3


def test_sample_rows_show_thinking_and_answer_apart():
    from rftkit.metrics import sample_records

    (row,) = sample_records(1, split(completion("<think>abcd</think>42", 1.0)))
    assert (row["completion"], row["reasoning"], row["answer"]) == ("<think>abcd</think>42", "abcd", "42")
    plain = Group(ITEM, [], [completion("42", 1.0)])
    assert "reasoning" not in sample_records(1, [plain])[0]

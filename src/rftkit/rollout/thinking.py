"""Reasoning models: split a completion into its thinking and its answer (docs/REASONING.md).

    split_thinking("<think>7*8 is 56</think>\\nANSWER: 56", "<think>", "</think>")
    -> Split(reasoning="7*8 is 56", answer="ANSWER: 56", status="ok", end=24)

Models break the tag protocol in every way a sampler allows, so the split is total: it never
raises, and each malformed shape has one rule (its `status` says which applied):

| status          | shape                                   | reasoning                          | answer                      |
|-----------------|-----------------------------------------|------------------------------------|-----------------------------|
| `ok`            | one block at the start (after spaces)   | the block's text                   | the text after it           |
| `inline`        | one block after other text              | the block's text                   | the text before and after   |
| `none`          | no tags at all                          | ""                                 | the whole text              |
| `implicit_open` | a close tag before any open tag         | the text before the close tag      | the text after it           |
| `repeated`      | two or more blocks (implicit one too)   | every block's text, "\\n\\n"-joined | the text outside the blocks |
| `unclosed`      | the last open tag is never closed       | everything after that open tag     | text outside blocks ("" if only one) |

- `implicit_open` is what Qwen3 and DeepSeek-R1 produce: their templates write `<think>` into
  the prompt, so the completion holds only the close tag.
- A block ends at the first close tag after its open tag: an open tag inside a block is part of
  the reasoning (no nesting); a close tag after the first block with no open before it, and
  any other stray tag in the answer, stays in the answer as text (a grader that must not see
  it can say so; deleting text silently would hide the model's mistake).
- An empty block (`<think></think>`) is a block: reasoning "", status as above.
- Reasoning and answer are stripped of surrounding whitespace (the "\\n\\n" templates put after
  `</think>` is layout, not content). Tags must be non-empty; with an empty tag nothing is
  split (status `none`) rather than matching everywhere.

`end` is where the thinking region stops in the text (0 for `none`, len(text) when unclosed):
`thinking_tokens` maps it to a token count, the cost the metrics report. Pure Python: the
stage, `rft grader run --reasoning` and tests use it without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from rftkit.types import Completion, Group

STATUSES = ("ok", "inline", "none", "implicit_open", "repeated", "unclosed")


@dataclass(frozen=True)
class Split:
    reasoning: str
    answer: str
    status: str  # one of STATUSES
    end: int = 0  # characters of the text that belong to the thinking region (tags and in-between text included)


def split_thinking(text: str, open_tag: str = "<think>", close_tag: str = "</think>") -> Split:
    """`text` as (reasoning, answer, status): the rules of the module docstring. Never raises."""
    text = text if isinstance(text, str) else str(text)
    if not open_tag or not close_tag:
        return Split("", text.strip(), "none", 0)
    thoughts: list[str] = []
    outside: list[str] = []
    pos, end, implicit, unclosed = 0, 0, False, False
    first_close, first_open = text.find(close_tag), text.find(open_tag)
    if first_close >= 0 and (first_open < 0 or first_close < first_open):
        thoughts.append(text[:first_close])
        pos = end = first_close + len(close_tag)
        implicit = True
    while True:
        start = text.find(open_tag, pos)
        if start < 0:
            outside.append(text[pos:])
            break
        outside.append(text[pos:start])
        inner = start + len(open_tag)
        stop = text.find(close_tag, inner)
        if stop < 0:
            thoughts.append(text[inner:])
            end, unclosed = len(text), True
            break
        thoughts.append(text[inner:stop])
        pos = end = stop + len(close_tag)
    reasoning = "\n\n".join(t.strip() for t in thoughts)
    answer = "".join(outside).strip()
    if unclosed:
        status = "unclosed"
    elif len(thoughts) > 1:
        status = "repeated"
    elif implicit:
        status = "implicit_open"
    elif not thoughts:
        status = "none"
    else:
        status = "ok" if not outside[0].strip() else "inline"
    return Split(reasoning, answer, status, end)


def thinking_tokens(token_ids: list[int], decode: Callable[[list[int]], str], end: int) -> int:
    """How many leading tokens of `token_ids` it takes to write the first `end` characters of their text.

    The split is found in text and located in token space by decoding prefixes (binary search:
    the decoded length grows with the prefix), so the count is of the tokens actually sampled,
    not of a re-tokenisation that might differ; thinking + answer tokens = the completion's.
    """
    if end <= 0:
        return 0
    lo, hi = 0, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(token_ids[:mid])) >= end:
            hi = mid
        else:
            lo = mid + 1
    return lo


def split_completion(c: Completion, reasoning_cfg, decode: Callable[[list[int]], str]) -> Completion:
    """`c` with `reasoning`, `answer_text` and `thinking_tokens` set; `text` and the tokens are unchanged.

    With `grade_thinking` the answer part is not stored, so graders keep scoring the whole text.
    A multi-turn trajectory is left as it is: its answer is the episode's messages.
    """
    if c.trajectory is not None:
        return c
    split = split_thinking(c.text, reasoning_cfg.open_tag, reasoning_cfg.close_tag)
    tokens = len(c.token_ids) if split.status == "unclosed" else thinking_tokens(c.token_ids, decode, split.end)
    return replace(c, reasoning=split.reasoning, answer_text=None if reasoning_cfg.grade_thinking else split.answer,
                   thinking_tokens=tokens)


def split_groups(groups: list[Group], reasoning_cfg, tokenizer) -> list[Group]:
    """Every completion split (`split_completion`) when `reasoning_cfg.enabled`; otherwise `groups` as they are."""
    if not reasoning_cfg.enabled:
        return groups

    def decode(ids: list[int]) -> str:  # as the engines decode a completion's text
        return tokenizer.decode(ids, skip_special_tokens=True)

    return [replace(g, completions=[split_completion(c, reasoning_cfg, decode) for c in g.completions]) for g in groups]

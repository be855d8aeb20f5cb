"""HumanEval-style grading through both harnesses of the `code` grader, on a small set written here.

Each problem has a prompt (signature and docstring), a right solution, a wrong one and a
test program in HumanEval's form (`def check(candidate)` with asserts on builtin values:
ints, floats, strings, lists, tuples, dicts, sets, None, exceptions). The right ones must
all pass and the wrong ones all fail, with the candidate and the tests in separate
processes (the default) and in one (`harness: inprocess`). The full HumanEval set is
`bench/code_harness.py`.
"""

from __future__ import annotations

import sys

import pytest

from rftkit.errors import ConfigError
from rftkit.graders import build_grader
from rftkit.types import Item

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

# name -> (prompt, right body, wrong body, test program)
PROBLEMS = {
    "running_max": (
        'def running_max(xs: list) -> list:\n    """The largest value seen so far, at each position."""\n',
        "    out, best = [], None\n    for x in xs:\n        best = x if best is None else max(best, x)\n"
        "        out.append(best)\n    return out\n",
        "    return sorted(xs)\n",
        "def check(candidate):\n    assert candidate([]) == []\n    assert candidate([3, 1, 4, 1, 5]) == [3, 3, 4, 4, 5]\n"
        "    assert candidate([-2, -3]) == [-2, -2]\n"),
    "min_max": (
        'def min_max(xs):\n    """(smallest, largest) of a non-empty list; ValueError on an empty one."""\n',
        "    if not xs:\n        raise ValueError('empty')\n    return (min(xs), max(xs))\n",
        "    return [min(xs), max(xs)]\n",
        "def check(candidate):\n    assert candidate([2, 9, -1]) == (-1, 9)\n    assert candidate([5]) == (5, 5)\n"
        "    try:\n        candidate([])\n    except ValueError:\n        pass\n    else:\n"
        "        raise AssertionError('no ValueError')\n"),
    "mean": (
        'def mean(xs: list) -> float:\n    """The arithmetic mean."""\n',
        "    return sum(xs) / len(xs)\n",
        "    return sum(xs) // len(xs)\n",
        "def check(candidate):\n    assert abs(candidate([1, 2]) - 1.5) < 1e-9\n    assert abs(candidate([0.1, 0.2, 0.3]) - 0.2) < 1e-9\n"),
    "word_counts": (
        'def word_counts(text: str) -> dict:\n    """How often each lower-cased word occurs."""\n',
        "    counts = {}\n    for word in text.lower().split():\n        counts[word] = counts.get(word, 0) + 1\n"
        "    return counts\n",
        "    return {w: 1 for w in text.split()}\n",
        "def check(candidate):\n    assert candidate('a B a') == {'a': 2, 'b': 1}\n    assert candidate('') == {}\n"),
    "unique_letters": (
        'def unique_letters(s: str) -> set:\n    """The set of alphabetic characters in s."""\n',
        "    return {c for c in s if c.isalpha()}\n",
        "    return set(s)\n",
        "def check(candidate):\n    assert candidate('a1b!a') == {'a', 'b'}\n    assert candidate('') == set()\n"),
    "first_even": (
        'def first_even(xs):\n    """The first even number, or None."""\n',
        "    return next((x for x in xs if x % 2 == 0), None)\n",
        "    return xs[0] if xs else 0\n",
        "def check(candidate):\n    assert candidate([1, 3, 4, 6]) == 4\n    assert candidate([1, 3]) is None\n"
        "    assert candidate([]) is None\n"),
    "reverse_words": (
        'def reverse_words(s: str) -> str:\n    """The words of s in reverse order, single-spaced."""\n',
        "    return ' '.join(reversed(s.split()))\n",
        "    return s[::-1]\n",
        "def check(candidate):\n    assert candidate('hello big world') == 'world big hello'\n"
        "    assert candidate('  a  ') == 'a'\n"),
    "to_bytes": (
        'def to_bytes(n: int) -> bytes:\n    """n as big-endian bytes, as few as possible (b"\\\\x00" for 0)."""\n',
        "    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), 'big')\n",
        "    return str(n).encode()\n",
        "def check(candidate):\n    assert candidate(0) == b'\\x00'\n    assert candidate(258) == b'\\x01\\x02'\n"),
}


def _item(name: str) -> Item:
    prompt, _, _, test = PROBLEMS[name]
    entry = prompt.split("(", 1)[0].removeprefix("def ")
    return Item(id=name, messages=[{"role": "user", "content": prompt}], metadata={"test": test, "entry_point": entry})


def _answer(name: str, right: bool) -> str:
    prompt, good, bad, _ = PROBLEMS[name]
    return f"```python\n{prompt}{good if right else bad}```"


@pytest.mark.parametrize("harness", ["separate", "inprocess"])
def test_right_solutions_pass_and_wrong_ones_fail(harness):
    grader = build_grader({"type": "code", "harness": harness, "workers": 2})
    for name in PROBLEMS:
        right = grader.grade(_item(name), _answer(name, True))
        assert right.reward == 1.0, (name, right)
        wrong = grader.grade(_item(name), _answer(name, False))
        assert wrong.reward == 0.0 and wrong.error.startswith("tests failed"), (name, wrong)


def test_a_test_that_passes_a_function_to_the_candidate_is_not_gradable_in_separate_mode():
    item = Item(id="apply", messages=[], metadata={
        "entry_point": "apply", "test": "def check(candidate):\n    assert candidate(lambda x: x + 1, 1) == 2\n"})
    answer = "def apply(f, x):\n    return f(x)\n"
    separate = build_grader({"type": "code", "workers": 2}).grade(item, answer)
    assert separate.reward is None and "harness: inprocess" in separate.error, separate
    assert build_grader({"type": "code", "workers": 2, "harness": "inprocess"}).grade(item, answer).reward == 1.0


def test_an_exception_inside_the_candidate_names_its_line():
    item = _item("mean")
    score = build_grader({"type": "code", "workers": 2}).grade(item, "def mean(xs):\n    return xs[99]\n")
    assert score.reward == 0.0 and "IndexError" in score.error and "line 2, in mean" in score.error, score


def test_unknown_harness_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="harness: must be one of.*separate.*inprocess"):
        build_grader({"type": "code", "harness": "fast"})


def test_helpers_of_the_prompt_that_the_tests_call_come_from_the_candidate_code():
    """As in HumanEval/32 (`poly`) and /38 (`encode_cyclic`): the test calls a function of the prompt."""
    item = Item(id="decode", messages=[], metadata={"entry_point": "decode", "test": (
        "def check(candidate):\n    for word in ['abc', 'hello']:\n"
        "        assert candidate(encode(word)) == word\n    assert SHIFT == 3\n")})
    prompt = "SHIFT = 3\n\ndef encode(s):\n    return ''.join(chr(ord(c) + SHIFT) for c in s)\n\ndef decode(s):\n"
    for harness in ("separate", "inprocess"):
        grader = build_grader({"type": "code", "workers": 2, "harness": harness})
        right = grader.grade(item, prompt + "    return ''.join(chr(ord(c) - SHIFT) for c in s)\n")
        assert right.reward == 1.0, (harness, right)
        wrong = grader.grade(item, prompt + "    return s\n")
        assert wrong.reward == 0.0, (harness, wrong)
    missing = build_grader({"type": "code", "workers": 2}).grade(item, "def decode(s):\n    return s\n")
    assert missing.reward == 0.0 and "NameError" in missing.error, missing

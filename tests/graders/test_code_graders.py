"""Rewards of the sandboxed `python` and `code` graders, worked by hand."""

from __future__ import annotations

import sys

import pytest

from rftkit.errors import ConfigError
from rftkit.graders import build_grader
from rftkit.graders.code import extract_code, normalise_output
from rftkit.graders.python_grader import check_source
from rftkit.types import Item

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

HUMANEVAL = Item(
    id="HumanEval/0", messages=[{"role": "user", "content": "Write has_close_elements."}],
    metadata={
        "entry_point": "has_close_elements",
        "test": (
            "def check(candidate):\n"
            "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
            "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n"
            "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n"
        ),
    })
RIGHT = """Sure.
```python
def has_close_elements(numbers, threshold):
    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
```
"""
WRONG = "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```"

SUM_IO = Item(id="io", messages=[], metadata={"tests": [
    {"input": "1 2\n", "output": "3\n"},
    {"input": "10 -4\n", "output": "6"},
    {"input": "2 2\n", "output": "5\n"},  # a wrong expected answer: no program passes all three
]})
SUM_PROGRAM = "```python\na, b = map(int, input().split())\nprint(a + b, '  ')\n```"


@pytest.fixture(scope="module")
def code():
    return build_grader({"type": "code", "name": "humaneval", "timeout_s": 3})


# ---------------------------------------------------------------- python grader


def python(source: str, **options):
    return build_grader({"type": "python", "name": "p", "source": source, "image_tag": "2025-05-08", **options})


def test_python_grader_exact_match_openai_example():
    g = python("def grade(sample, item) -> float:\n"
               "    return 1.0 if sample['output_text'].strip() == item['reference_answer'] else 0.0\n")
    item = Item(id="q", messages=[], reference_answer="42")
    assert g.grade(item, " 42\n").reward == 1.0
    assert g.grade(item, "41").reward == 0.0


def test_python_grader_sees_output_json_and_item_fields():
    g = python("def grade(sample, item):\n"
               "    got = sample['output_json']['answer']\n"
               "    return abs(got - item['target']) / item['scale']\n")
    item = Item(id="q", messages=[], metadata={"target": 10, "scale": 4})
    assert g.grade(item, '{"answer": 13}').reward == pytest.approx(0.75)  # |13 - 10| / 4


def test_python_grader_bool_is_a_number():
    g = python("def grade(sample, item):\n    return 'cat' in sample['output_text']\n")
    assert g.grade(HUMANEVAL, "a cat").reward == 1.0
    assert g.grade(HUMANEVAL, "a dog").reward == 0.0


@pytest.mark.parametrize("returned, shown", [("'abc'", "'abc'"), ("None", "None"), ("[1]", "[1]"),
                                             ("float('nan')", "nan, not a finite number"),
                                             ("10 ** 400", "not a number")])
def test_python_grader_non_numeric_return(returned, shown):
    score = python(f"def grade(sample, item):\n    return {returned}\n").grade(HUMANEVAL, "x")
    assert score.reward is None
    assert score.error.startswith("python_grader_runtime_error: grade returned ")
    assert shown in score.error


def test_python_grader_exact_error_for_string_return():
    score = python("def grade(sample, item):\n    return 'abc'\n").grade(HUMANEVAL, "x")
    assert score.error == "python_grader_runtime_error: grade returned 'abc', not a number"


def test_python_grader_exception_names_type_message_and_line():
    score = python("def grade(sample, item):\n    x = 1\n    raise ValueError('no answer found')\n").grade(HUMANEVAL, "x")
    assert score.reward is None
    assert score.error == "python_grader_runtime_error: ValueError: no answer found (line 3, in grade)"


def test_python_grader_timeout_is_unresponsive():
    g = python("def grade(sample, item):\n    import time\n    time.sleep(30)\n", timeout_s=0.5)
    assert g.deadline_s == pytest.approx(1.5)
    score = g.grade(HUMANEVAL, "x")
    assert score.reward is None and score.error.startswith("unresponsive_reward_error: ")


def test_python_grader_can_import_the_stdlib_and_helpers_defined_beside_grade():
    g = python("import math, re\n\nSCALE = 2\n\ndef _num(t):\n    return float(re.findall(r'-?\\d+', t)[-1])\n\n"
               "def grade(sample, item):\n    return math.sqrt(_num(sample['output_text'])) / SCALE\n")
    assert g.grade(HUMANEVAL, "the answer is 16").reward == 2.0  # sqrt(16) / 2


@pytest.mark.parametrize("source, message", [
    ("def grade(sample):\n    return 1\n", "must take two parameters"),
    ("def grading(sample, item):\n    return 1\n", "no top-level `def grade(sample, item)`"),
    ("class G:\n    def grade(self, sample, item):\n        return 1\n", "no top-level"),
    ("def grade(sample, item)\n    return 1\n", "does not compile"),
    ("def grade(a, b, c):\n    return 1\n", "must take two parameters"),
])
def test_python_grader_bad_source_is_a_config_error(source, message):
    with pytest.raises(ConfigError) as info:
        build_grader({"type": "python", "source": source}, where="graders.0")
    assert "graders.0: source: " in str(info.value) and message in str(info.value)


def test_python_grader_source_check_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    check_source(f"open({str(marker)!r}, 'w').write('x')\ndef grade(sample, item):\n    return 1\n")
    assert not marker.exists()


def test_python_grader_accepts_flexible_signatures():
    for source in ("def grade(sample, item, extra=1):\n    return 1\n", "def grade(*args):\n    return 1\n"):
        check_source(source)


# ---------------------------------------------------------------- code grader: HumanEval check


def test_code_humaneval_right_and_wrong(code):
    right = code.grade(HUMANEVAL, RIGHT)
    assert (right.reward, right.breakdown, right.error) == (1.0, {"passed": 1.0}, None)
    wrong = code.grade(HUMANEVAL, WRONG)
    assert wrong.reward == 0.0 and wrong.breakdown == {"passed": 0.0}
    assert wrong.error == "tests failed: AssertionError (line 3, in check)"  # the second assert (line 1 is `def check`)


def test_code_candidate_that_does_not_compile_scores_zero(code):
    score = code.grade(HUMANEVAL, "```python\ndef has_close_elements(numbers, threshold)\n    return 1\n```")
    assert score.reward == 0.0 and score.error.startswith("code failed: SyntaxError")


def test_code_missing_entry_point_scores_zero(code):
    score = code.grade(HUMANEVAL, "```python\ndef close(numbers, threshold):\n    return True\n```")
    assert score.reward == 0.0 and "defines no 'has_close_elements'" in score.error


def test_code_exit_before_tests_is_not_a_pass(code):
    for hack in ("import sys\nsys.exit(0)", "import os\nos._exit(0)"):
        score = code.grade(HUMANEVAL, f"```python\n{hack}\n```")
        assert score.reward == 0.0, hack


def test_code_item_without_test_is_masked(code):
    item = Item(id="bare", messages=[], metadata={"entry_point": "f"})
    score = code.grade(item, RIGHT)
    assert score.reward is None and score.error.startswith("invalid_variable_error: test: ")
    assert code.check_item(item) == ["test: row 'bare' has no test program (a string defining check)"]


def test_code_entry_point_and_field_names_are_options():
    grader = build_grader({"type": "code", "test_field": "checks", "entry_point": "has_close_elements"})
    item = Item(id="renamed", messages=[], metadata={"checks": HUMANEVAL.metadata["test"]})
    assert grader.grade(item, RIGHT).reward == 1.0


# ---------------------------------------------------------------- code grader: stdin -> stdout


def test_code_io_partial_credit(code):
    score = code.grade(SUM_IO, SUM_PROGRAM)  # passes tests 1 and 2 (trailing spaces ignored), fails 3
    assert score.reward == pytest.approx(2 / 3, abs=1e-4)  # 0.6667
    assert score.breakdown == {"passed": 2.0, "total": 3.0}
    assert score.error == "1 of 3 tests failed; test 3: wrong output '4   \\n', expected '5\\n'"


def test_code_io_crash_on_one_input(code):
    item = Item(id="div", messages=[], metadata={"tests": [{"input": "4 2", "output": "2"},
                                                           {"input": "1 0", "output": "inf"}]})
    score = code.grade(item, "a, b = map(int, input().split())\nprint(a // b)")  # no fence: the whole text
    assert score.reward == 0.5
    assert "test 2: code failed: ZeroDivisionError: integer division or modulo by zero (line 2, in <module>)" in score.error


def test_code_io_timeout_spends_the_budget():
    grader = build_grader({"type": "code", "timeout_s": 1})
    item = Item(id="slow", messages=[], metadata={"tests": [{"input": "", "output": "1"}] * 3})
    score = grader.grade(item, "import time\ntime.sleep(10)")
    assert score.reward == 0.0 and score.breakdown == {"passed": 0.0, "total": 3.0}
    assert "test 1: timeout: did not finish within 1s" in score.error


def test_code_io_sys_exit_zero_after_printing_is_fine(code):
    item = Item(id="exit", messages=[], metadata={"tests": [{"input": "", "output": "ok"}]})
    assert code.grade(item, "import sys\nprint('ok')\nsys.exit(0)").reward == 1.0


def test_code_io_reads_stdin_to_eof(code):
    item = Item(id="lines", messages=[], metadata={"tests": [{"input": "3\n1\n2\n3\n", "output": "6"}]})
    assert code.grade(item, "import sys\nn, *xs = map(int, sys.stdin.read().split())\nprint(sum(xs))").reward == 1.0


def test_code_mode_auto_and_bad_options():
    with pytest.raises(ConfigError, match="mode: must be one of"):
        build_grader({"type": "code", "mode": "unit"})
    with pytest.raises(ConfigError, match="language: only 'python'"):
        build_grader({"type": "code", "language": "rust"})
    with pytest.raises(ConfigError, match="bad options"):
        build_grader({"type": "code", "tests": []})


# ---------------------------------------------------------------- helpers


def test_extract_code_prefers_the_last_python_block():
    text = "```python\nfirst\n```\nthen\n```python\nsecond\n```\n```text\noutput\n```"
    assert extract_code(text) == "second\n"
    assert extract_code("```\nbare\n```") == "bare\n"
    assert extract_code("no fences") == "no fences"
    assert extract_code("```python\ncut off by max_new_tokens") == "cut off by max_new_tokens"
    assert extract_code("```python\nx\n```", "whole_text") == "```python\nx\n```"


def test_normalise_output():
    assert normalise_output("1 \n2\t\n\n\n") == normalise_output("1\n2") == "1\n2"
    assert normalise_output(" 1") != normalise_output("1")  # leading space matters


# ---------------------------------------------------------------- through the executor


def test_executor_uses_the_graders_lane_and_deadline():
    """The sandbox's own kill (timeout_s) decides before the executor's deadline (timeout_s + 1)."""
    from rftkit.graders.executor import ThreadGraderExecutor

    source = ("def grade(sample, item):\n    import time\n    if sample['output_text'] == 'hang':\n"
              "        time.sleep(60)\n    return len(sample['output_text'])\n")
    grader = build_grader({"type": "python", "source": source, "timeout_s": 1})
    executor = ThreadGraderExecutor(grader, timeout_s=30, workers=16)
    calls = [(HUMANEVAL, text) for text in ("a", "hang", "abc", "hang", "ab")]
    scores, stats = executor.grade_calls(calls)
    assert [s.reward for s in scores] == [1.0, None, 3.0, None, 2.0]
    assert scores[1].error == "unresponsive_reward_error: grade did not return within 1s (killed)"
    assert stats.timeouts == 2 and stats.errors == 2


def test_python_grader_large_sample_crosses_the_pipe():
    g = python("def grade(sample, item):\n    return len(sample['output_text']) / 1e6\n")
    assert g.grade(HUMANEVAL, "x" * 3_000_000).reward == 3.0  # far larger than a pipe buffer

"""The built-in graders by hand: math, regex, json_schema, length_penalty, reward_function."""

import json
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rftkit.errors import ConfigError
from rftkit.graders import build_grader, load_grader_spec
from rftkit.graders.format import JsonSchemaGrader, LengthPenaltyGrader, RegexGrader
from rftkit.graders.mathgrader import MathGrader, find_answer, last_boxed
from rftkit.graders.reward_fn import RewardFunctionGrader
from rftkit.types import Item

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "graders"


def item(ref="42", **metadata):
    return Item(id="q", messages=[{"role": "user", "content": "?"}], reference_answer=ref, metadata=metadata)


# ---------------------------------------------------------------- math


@pytest.mark.parametrize(
    "ref,text",
    [
        ("1/2", "ANSWER: 0.5"),
        ("0.5", "ANSWER: \\frac{1}{2}"),
        ("\\frac{1}{2}", "ANSWER: 1/2"),
        ("\\frac{1}{2}", "so \\boxed{\\dfrac12}"),
        ("\\frac{\\sqrt2}{2}", "thus \\boxed{\\sqrt{2}/2}."),
        ("x=3", "ANSWER: 3"),
        ("3", "ANSWER: x = 3"),
        ("\\{1,2\\}", "\\boxed{\\{2, 1\\}}"),  # a set: order does not matter
        ("(1,2]", "ANSWER: (1, 2]"),
        ("2\\pi", "\\boxed{\\frac{4\\pi}{2}}"),
        ("x^2+2x+1", "\\boxed{(x+1)^2}"),
        ("42", "ANSWER: $42$."),  # math delimiters and the sentence's period are dropped
        (42, "ANSWER: 42"),  # a JSON number as reference
        (0.5, "\\boxed{\\frac{2}{4}}"),
        ("The area is \\boxed{7}.", "ANSWER: 7"),  # a worked reference counts by its last box
        ("-3", "ANSWER: -3"),
    ],
)
def test_math_equivalent_answers_score_1(ref, text):
    score = MathGrader().grade(item(ref), text)
    assert (score.reward, score.breakdown) == (1.0, {"correct": 1.0, "format": 1.0})


@pytest.mark.parametrize(
    "ref,text",
    [
        ("1/2", "ANSWER: 1/3"),
        ("(1,2]", "ANSWER: (1,2)"),  # open and half-open intervals differ
        ("\\sqrt{2}", "\\boxed{2}"),
        ("42", "ANSWER: 41"),
    ],
)
def test_math_different_answers_score_0(ref, text):
    score = MathGrader().grade(item(ref), text)
    assert (score.reward, score.breakdown) == (0.0, {"correct": 0.0, "format": 1.0})


@pytest.mark.parametrize("text", ["", "the answer is 42", "\\boxed{42", "ANSWER:\n"])
def test_math_no_answer_is_0_with_format_0(text):
    score = MathGrader().grade(item("42"), text)
    assert (score.reward, score.breakdown, score.error) == (0.0, {"correct": 0.0, "format": 0.0}, None)


@pytest.mark.parametrize(
    "text", ["ANSWER: \\frac{1}{", "ANSWER: }}{{", "ANSWER: \\boxed{", "\\boxed{\\\\}", "ANSWER: " + "(" * 100])
def test_math_unparseable_answer_is_0_not_a_crash(text):
    score = MathGrader().grade(item("42"), text)
    assert score.reward == 0.0 and score.error is None


def test_math_overlong_answer_is_wrong_without_parsing():
    start = time.monotonic()
    score = MathGrader().grade(item("1"), "ANSWER: " + "(" * 5000 + "1")
    assert score.reward == 0.0 and score.breakdown == {"correct": 0.0, "format": 1.0}
    assert time.monotonic() - start < 1.0


def test_math_which_answer_counts():
    g = MathGrader()
    assert g.grade(item("7"), "ANSWER: 5\nno wait\nANSWER: 7").reward == 1.0  # the last ANSWER line
    assert g.grade(item("7"), "\\boxed{7} ... ANSWER: 5").reward == 0.0  # an ANSWER line beats a box
    assert g.grade(item("7"), "\\boxed{5} then \\boxed{7}").reward == 1.0  # the last box
    assert g.grade(item("7"), "\\boxed{7} then \\boxed{5").reward == 1.0  # the last *complete* box
    assert g.grade(item("5"), "ANSWER: \\boxed{5}").reward == 1.0
    assert last_boxed("\\boxed{\\frac{a}{b^{2}}}") == "\\frac{a}{b^{2}}"
    assert last_boxed("\\boxed{\\{1, 2\\}} and \\boxed {x}") == "x"
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"  # escaped braces are not grouping
    assert last_boxed("no box") is None


def test_math_fallbacks():
    text = "First 3, then 5 in the end"
    assert find_answer(text) == (None, False)
    assert find_answer(text, "last_number") == ("5", False)
    assert find_answer("it is 1 / 2", "last_number") == ("1/2", False)
    # a fallback answer can be correct, but it is not in the expected format
    assert MathGrader(fallback="last_number").grade(item("5"), text).breakdown == {"correct": 1.0, "format": 0.0}
    assert MathGrader(fallback="math_verify").grade(item("1/2"), "The final answer is $\\frac{2}{4}$").breakdown == {
        "correct": 1.0, "format": 0.0}
    assert MathGrader().grade(item("5"), text).breakdown == {"correct": 0.0, "format": 0.0}


def test_math_format_weight():
    # format_weight 0.25: a well-formed wrong answer earns 0.25, a right one 0.75 + 0.25, none 0
    g = MathGrader(format_weight=0.25)
    assert g.grade(item("1/2"), "ANSWER: 3").reward == 0.25
    assert g.grade(item("1/2"), "ANSWER: 0.5").reward == 1.0
    assert g.grade(item("1/2"), "dunno").reward == 0.0
    assert MathGrader(format_weight=0.25, fallback="last_number").grade(item("5"), "so 5").reward == 0.75


@pytest.mark.parametrize("ref", [None, "", [1, 2], {"a": 1}])
def test_math_bad_reference_fails_the_sample_and_check_item_says_so(ref):
    g = MathGrader()
    score = g.grade(item(ref), "ANSWER: 1")
    assert score.reward is None and score.error.startswith("invalid_reference_answer")
    assert "reference_answer" in g.check_item(item(ref))[0]
    assert g.check_item(item("1/2")) == []


def test_math_works_off_the_main_thread():
    """math-verify's signal-based timeouts raise in a worker thread unless they are off."""
    cases = [("1/2", "ANSWER: 0.5", 1.0), ("\\frac{\\sqrt2}{2}", "\\boxed{\\sqrt{2}/2}", 1.0), ("3", "ANSWER: 4", 0.0),
             ("(1,2]", "ANSWER: (1, 2]", 1.0), ("x=3", "\\boxed{3}", 1.0), ("2\\pi", "ANSWER: \\frac{1}{", 0.0)] * 4
    g = MathGrader()
    results = {}
    thread = threading.Thread(target=lambda: results.update(one=g.grade(item("1/2"), "ANSWER: 0.5")))
    thread.start()
    thread.join(30)
    assert results["one"].reward == 1.0 and results["one"].error is None
    with ThreadPoolExecutor(4) as pool:  # and several at once, as the executor runs them
        scores = list(pool.map(lambda c: g.grade(item(c[0]), c[1]), cases))
    assert [s.reward for s in scores] == [c[2] for c in cases]


def test_math_builds_and_rejects_bad_options():
    g = build_grader({"type": "math", "name": "m", "fallback": "last_number", "format_weight": 0.1})
    assert isinstance(g, MathGrader) and g.name == "m" and g.needs_reference
    assert build_grader("math").name == "math"
    with pytest.raises(ConfigError, match="fallback"):
        build_grader({"type": "math", "fallback": "first_number"})
    with pytest.raises(ConfigError, match="format_weight"):
        build_grader({"type": "math", "format_weight": 2})
    with pytest.raises(ConfigError, match="tolerance"):
        build_grader({"type": "math", "tolerance": 1e-3})


# ---------------------------------------------------------------- regex


def test_regex_modes_flags_and_rewards():
    text = "Reasoning...\nanswer: 12\nthanks"
    assert RegexGrader(pattern=r"ANSWER: \d+").grade(None, text).reward == 0.0
    assert RegexGrader(pattern=r"ANSWER: \d+", flags=["IGNORECASE"]).grade(None, text).breakdown == {"match": 1.0}
    assert RegexGrader(pattern=r"^answer: \d+$").grade(None, text).reward == 0.0
    assert RegexGrader(pattern=r"^answer: \d+$", flags=["MULTILINE"]).grade(None, text).reward == 1.0
    assert RegexGrader(pattern=r"Reasoning.*thanks", mode="fullmatch").grade(None, text).reward == 0.0
    assert RegexGrader(pattern=r"Reasoning.*thanks", mode="fullmatch", flags=["DOTALL"]).grade(None, text).reward == 1.0
    assert RegexGrader(pattern=r"answer", mode="fullmatch").grade(None, text).reward == 0.0
    custom = RegexGrader(pattern="thanks", reward_match=0.5, reward_miss=-1)
    assert custom.grade(None, text).reward == 0.5 and custom.grade(None, "no").reward == -1.0


def test_a_catastrophically_backtracking_pattern_is_a_graded_error_within_its_timeout():
    # `^(a+)+$` hangs Python's `re` on 'a' * 40 + '!' (the GIL is held: not even a deadline thread runs);
    # the regex engine answers it at once, and stops the one that is exponential for it too
    start = time.monotonic()
    assert RegexGrader(pattern=r"^(a+)+$").grade(None, "a" * 40 + "!").reward == 0.0
    score = RegexGrader(pattern=r"^(a|a)+$", timeout_s=0.3).grade(None, "a" * 40 + "!")
    assert score.reward == 0.0 and score.error.startswith("regex_timeout_error") and "0.3s" in score.error
    assert time.monotonic() - start < 2.0
    lagged = RegexGrader(pattern=r"^(.|.)*[QZ]$", flags=["DOTALL"], timeout_s=0.2, reward_miss=-1.0)
    assert lagged.grade(None, "any text at all, of some forty characters").reward == -1.0  # reward_miss, not None
    with pytest.raises(ConfigError, match="timeout_s: must be positive"):
        build_grader({"type": "regex", "pattern": "a", "timeout_s": 0})


def test_regex_builds_and_rejects_bad_options():
    g = build_grader({"type": "regex", "pattern": "a+", "flags": ["i", "S"], "name": "aa"})
    assert g.name == "aa" and not g.needs_reference and g.grade(None, "xAAy").reward == 1.0
    with pytest.raises(ConfigError, match=r"pattern: invalid regular expression 'a\(b': .* at position 1"):
        build_grader({"type": "regex", "pattern": "a(b"})
    for options, field in [({"pattern": "a", "mode": "match"}, "mode"), ({"pattern": "a", "flags": ["UNICODE_X"]}, "flags"),
                           ({"pattern": "a", "flags": "IGNORECASE"}, "flags"), ({"pattern": 3}, "pattern"),
                           ({"pattern": "a", "reward_match": "1"}, "reward_match"),
                           ({"pattern": "a", "reward_miss": float("nan")}, "reward_miss"), ({}, "pattern"),
                           ({"pattern": "a", "name": ""}, "name")]:
        with pytest.raises(ConfigError, match=field):
            build_grader({"type": "regex", **options})


# ---------------------------------------------------------------- json_schema

SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "integer"}},
          "additionalProperties": False}


@pytest.mark.parametrize(
    "text,extract,breakdown",
    [
        ('{"answer": 4}', "auto", {"parsed": 1.0, "valid": 1.0}),
        ('  {"answer": 4}\n', "whole", {"parsed": 1.0, "valid": 1.0}),
        ('{"answer": "4"}', "auto", {"parsed": 1.0, "valid": 0.0}),  # wrong type
        ('{"answer": 4, "why": "x"}', "auto", {"parsed": 1.0, "valid": 0.0}),  # extra key
        ("[4]", "auto", {"parsed": 1.0, "valid": 0.0}),
        ("answer: 4", "auto", {"parsed": 0.0, "valid": 0.0}),
        ('Sure!\n```json\n{"answer": 1}\n```\nthen\n```json\n{"answer": 4}\n```', "auto", {"parsed": 1.0, "valid": 1.0}),
        ('```\n{"answer": 4}\n```', "fenced", {"parsed": 1.0, "valid": 1.0}),  # a bare fence too
        ('{"answer": 4}', "fenced", {"parsed": 0.0, "valid": 0.0}),  # no fence
        ('Sure!\n```json\n{"answer": 4}\n```', "whole", {"parsed": 0.0, "valid": 0.0}),
    ],
)
def test_json_schema(text, extract, breakdown):
    score = JsonSchemaGrader(schema=SCHEMA, extract=extract).grade(None, text)
    assert (score.reward, score.breakdown, score.error) == (breakdown["valid"], breakdown, None)


def test_json_schema_explain_and_schema_file(tmp_path, monkeypatch):
    g = JsonSchemaGrader(schema=SCHEMA)
    assert g.explain('{"answer": 4}') is None
    assert g.explain('{"answer": "4"}') == "at answer: '4' is not of type 'integer'"
    assert g.explain("nope").startswith("not JSON:")
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "s.yaml").write_text("type: object\nrequired: [answer]\n")
    monkeypatch.chdir(tmp_path)  # relative schema files start from the current directory
    for name in ("s.json", str(tmp_path / "s.yaml")):
        g = build_grader({"type": "json_schema", "schema_file": name})
        assert g.grade(None, '{"answer": 4}').reward == 1.0 and g.grade(None, "{}").reward == 0.0


def test_json_schema_rejects_bad_options(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    for options, message in [({"schema": {"type": "objekt"}}, "schema: not a valid JSON Schema at type"),
                             ({"schema": {"properties": {"a": {"minimum": "x"}}}}, "schema: .* at properties/a/minimum"),
                             ({"schema": "object"}, "schema: must be a JSON Schema object"),
                             ({}, "schema: give exactly one"),
                             ({"schema": SCHEMA, "schema_file": "s.json"}, "schema: give exactly one"),
                             ({"schema_file": str(tmp_path / "missing.json")}, "schema_file: no such file"),
                             ({"schema_file": str(tmp_path / "bad.json")}, "schema_file: cannot read"),
                             ({"schema": SCHEMA, "extract": "first"}, "extract")]:
        with pytest.raises(ConfigError, match=message):
            build_grader({"type": "json_schema", **options})


# ---------------------------------------------------------------- length_penalty


@pytest.mark.parametrize(
    "length,buffer,reward",
    [
        (0, 20, 0.0), (80, 20, 0.0),  # up to max_len - buffer = 80: no penalty
        (81, 20, -0.05), (90, 20, -0.5), (95, 20, -0.75), (100, 20, -1.0),  # (80 - L) / 20
        (101, 20, -1.0), (500, 20, -1.0),  # beyond max_len
        (100, 0, 0.0), (101, 0, -1.0),  # buffer 0: a cliff at max_len
        (50, 100, -0.5),  # buffer = max_len: the ramp starts at 0 characters
    ],
)
def test_length_penalty(length, buffer, reward):
    score = LengthPenaltyGrader(max_len=100, buffer=buffer).grade(None, "x" * length)
    assert score.reward == pytest.approx(reward) and score.breakdown == {"length": float(length)}


def test_length_penalty_in_words_and_bad_options():
    g = build_grader({"type": "length_penalty", "max_len": 4, "buffer": 2, "unit": "words"})
    assert g.grade(None, "one  two\nthree").reward == pytest.approx(-0.5)  # 3 words: (4 - 2 - 3) / 2
    assert g.grade(None, "one two three four five").reward == -1.0
    for options, field in [({"max_len": 0}, "max_len"), ({"max_len": 1.5}, "max_len"),
                           ({"max_len": 10, "buffer": 11}, "buffer"),
                           ({"max_len": 10, "buffer": -1}, "buffer"), ({"max_len": 10, "unit": "tokens"}, "unit"),
                           ({}, "max_len")]:
        with pytest.raises(ConfigError, match=field):
            build_grader({"type": "length_penalty", **options})


# ---------------------------------------------------------------- reward_function

REWARDS_PY = '''
import asyncio
import math

CALLS = []


def reward(completions, **kwargs):
    CALLS.append({"completions": completions, **kwargs})
    return [float(len(c)) for c in completions]


def exact(completions, reference_answer, prompts):  # no **kwargs: gets only what it names
    return [1.0 if c == r else 0.0 for c, r in zip(completions, reference_answer)]


def conversational(completions, **kwargs):
    return [1.0 if c[0]["role"] == "assistant" and c[0]["content"] == "ok" else 0.0 for c in completions]


def maybe(completions, **kwargs):
    return [None if c == "skip" else 1 for c in completions]


def too_few(completions, **kwargs):
    return [1.0]


def broken(completions, **kwargs):
    return [1.0 / 0 for c in completions]


def odd_values(completions, **kwargs):
    return ["1.0", math.nan, True, 2]


async def slow_async(completions, **kwargs):
    await asyncio.sleep(0)
    return [0.5 for _ in completions]


def no_completions(prompts):
    return []


alias = exact  # found, named and pickled by the name it has in the file
'''


@pytest.fixture
def rewards_py(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(REWARDS_PY)
    return str(path)


def rf(path, function=None, **options):
    return build_grader({"type": "reward_function", "path": path, **({"function": function} if function else {}), **options})


def test_reward_function_gets_trl_keyword_lists(rewards_py):
    g = rf(rewards_py, batch_size=8)
    assert isinstance(g, RewardFunctionGrader) and g.name == "reward" and g.batch_size == 8 and not g.needs_reference
    a = Item(id="a", messages=[{"role": "user", "content": "1+1?"}], reference_answer="2", metadata={"level": 1})
    b = Item(id="b", messages=[{"role": "user", "content": "2+2?"}], reference_answer="4", metadata={"topic": "add"})
    scores = g.grade_batch([(a, "two"), (b, "four!"), (a, "")])
    assert [s.reward for s in scores] == [3.0, 5.0, 0.0] and all(s.error is None for s in scores)
    (call,) = sys_module(rewards_py).CALLS
    assert call == {
        "completions": ["two", "four!", ""],
        "prompts": [a.messages, b.messages, a.messages],
        "id": ["a", "b", "a"],
        "reference_answer": ["2", "4", "2"],
        "level": [1, None, 1],  # a field some rows lack is None for them
        "topic": [None, "add", None],
        "completion_ids": None,
        "trainer_state": None,
    }
    assert g.grade(b, "abc").reward == 3.0  # grade() is a batch of one


def sys_module(path):
    import sys

    return next(m for name, m in sys.modules.items() if name.startswith("rftkit_reward_rewards_")
                and getattr(m, "__file__", None) == path)


def test_reward_function_without_kwargs_and_conversational(rewards_py):
    scores = rf(rewards_py, "exact").grade_batch([(item("2"), "2"), (item("2"), "3")])
    assert [s.reward for s in scores] == [1.0, 0.0]
    g = rf(rewards_py, "conversational", completion_format="messages", name="conv")
    assert g.name == "conv" and [s.reward for s in g.grade_batch([(item(), "ok"), (item(), "no")])] == [1.0, 0.0]
    assert rf(rewards_py, "slow_async").grade(item(), "x").reward == 0.5


def test_reward_function_failures_are_masked_samples_not_crashes(rewards_py):
    calls = [(item(), "a"), (item(), "skip"), (item(), "c")]
    none = rf(rewards_py, "maybe").grade_batch(calls)
    assert [s.reward for s in none] == [1.0, None, 1.0]
    assert none[1].error == "reward_not_applicable: maybe() returned None for this sample"
    short = rf(rewards_py, "too_few").grade_batch(calls)
    assert [s.reward for s in short] == [None] * 3
    assert short[0].error == "python_grader_runtime_error: too_few() returned 1 rewards for 3 completions"
    boom = rf(rewards_py, "broken").grade_batch(calls)
    assert [s.reward for s in boom] == [None] * 3 and boom[0] is not boom[1]
    # the exception's last line and the innermost frame in the user's file (`<listcomp>` before 3.12)
    assert boom[0].error.startswith(
        "python_grader_runtime_error: ZeroDivisionError: float division by zero (rewards.py:30 in ")
    odd = rf(rewards_py, "odd_values").grade_batch(calls + [(item(), "d")])
    assert [s.reward for s in odd] == [None, None, 1.0, 2.0]
    assert odd[0].error == "python_grader_runtime_error: odd_values() returned '1.0', not a number"
    assert odd[1].error == "python_grader_runtime_error: odd_values() returned nan, not a finite number"


def test_reward_function_default_function_and_build_errors(tmp_path, rewards_py, monkeypatch):
    one = tmp_path / "one.py"
    one.write_text("import re\n\ndef _helper():\n    pass\n\n"
                   "def score_it(completions, **kw):\n    return [1.0] * len(completions)\n")
    two = tmp_path / "two.py"
    two.write_text("def f(completions):\n    return []\n\ndef g(completions):\n    return []\n")
    (tmp_path / "bad.py").write_text("import not_a_module_anywhere\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(1)\n")
    monkeypatch.chdir(tmp_path)  # relative paths start from the current directory
    assert rf("one.py").name == "score_it"  # the only public function of the file
    for options, message in [
        ({"path": "two.py"}, r"function: two.py defines \['f', 'g'\]"),
        ({"path": "missing.py"}, "path: no Python file at"),
        ({"path": "bad.py"}, "path: importing bad.py failed: ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
        ({"path": "exits.py"}, "path: importing exits.py failed: SystemExit"),
        ({"path": rewards_py, "function": "nope"}, "function: rewards.py has no function 'nope'"),
        ({"path": rewards_py, "function": "no_completions"},
         "function: no_completions.. must take a `completions` argument"),
        ({"path": rewards_py, "batch_size": 0}, "batch_size"),
        ({"path": rewards_py, "completion_format": "chat"}, "completion_format"),
        ({"path": rewards_py, "function": 3}, "function"),
        ({}, "path"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_grader({"type": "reward_function", **options})


def test_reward_function_survives_pickling(rewards_py):
    """A grader sent to another process (Ray) reloads its function from the file."""
    g = pickle.loads(pickle.dumps(rf(rewards_py, "alias", batch_size=3)))
    assert (g.name, g.batch_size) == ("alias", 3) and g.grade(item("2"), "2").reward == 1.0


def test_example_trl_reward_file_on_arithmetic_rows():
    g = build_grader({"type": "reward_function", "path": str(EXAMPLES / "trl_reward.py")})
    assert g.name == "reward"
    row = Item(id="a", messages=[{"role": "user", "content": "What is 18 + 33 + 64?"}], reference_answer="115")
    texts = [
        "18 + 33 = 51. 51 + 64 = 115. ANSWER: 115",  # 0.8 * 1 + 0.1 * 1 + 0.1 * 2/2
        "18 + 33 = 51. 51 + 64 = 116. ANSWER: 116",  # 0.8 * 0 + 0.1 * 1 + 0.1 * 1/2
        "18 + 33 = 50. ANSWER: 115 is it",  # 0.8 * 0 + 0.1 * 0 + 0.1 * 0/1 (the answer line is not last)
        "no idea",  # 0
    ]
    rewards = [s.reward for s in g.grade_batch([(row, t) for t in texts])]
    assert rewards == pytest.approx([1.0, 0.15, 0.0, 0.0])
    unreferenced = Item(id="b", messages=[], reference_answer=None)
    assert g.grade(unreferenced, "ANSWER: 1").error.startswith("reward_not_applicable")


def test_reward_function_through_the_executor(rewards_py):
    """The executor sends batches of up to batch_size from its worker threads."""
    from rftkit.graders.executor import ThreadGraderExecutor as executor_cls
    g = rf(rewards_py, batch_size=2)
    module = sys_module(rewards_py)
    module.CALLS.clear()
    executor = executor_cls(g, timeout_s=10, step_budget_s=30)
    try:
        scores, _ = executor.grade_calls([(item(), "x" * n) for n in range(5)])
    finally:
        executor.close()
    assert [s.reward for s in scores] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert sorted(len(c["completions"]) for c in module.CALLS) == [1, 2, 2]


# ---------------------------------------------------------------- the example grader files


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_grader_files_build(path, monkeypatch):
    monkeypatch.chdir(path.parent.parent)  # file paths in a grader file are relative to that file, not the cwd
    spec = load_grader_spec(str(path))
    grader = build_grader(spec, str(path))
    row = Item(id="a", messages=[{"role": "user", "content": "What is 18 + 33 + 64?"}], reference_answer="115")
    score = grader.grade(row, '18 + 33 = 51. 51 + 64 = 115. ANSWER: 115')
    assert score.error is None and score.reward is not None

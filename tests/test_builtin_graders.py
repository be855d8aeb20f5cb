"""The built-in graders by hand: math, regex, json_schema, length_penalty, reward_function."""

import importlib.util
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

REPO = Path(__file__).resolve().parents[1]
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


@pytest.mark.parametrize("text", ["ANSWER: \\frac{1}{", "ANSWER: }}{{", "ANSWER: \\boxed{", "\\boxed{\\\\}", "ANSWER: " + "(" * 100])
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
    for options, field in [({"max_len": 0}, "max_len"), ({"max_len": 1.5}, "max_len"), ({"max_len": 10, "buffer": 11}, "buffer"),
                           ({"max_len": 10, "buffer": -1}, "buffer"), ({"max_len": 10, "unit": "tokens"}, "unit"),
                           ({}, "max_len")]:
        with pytest.raises(ConfigError, match=field):
            build_grader({"type": "length_penalty", **options})

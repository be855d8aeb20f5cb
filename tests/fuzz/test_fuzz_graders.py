"""Fuzzing the graders: configs, formulas, templates, HTTP (Nova reward) and judge replies, and model
outputs fed to every grader. Each returns its result (a grader, a Score, a number) or raises the
project's own error; never another exception, never a hang."""

from __future__ import annotations

import math

from hypothesis import event, given, settings
from hypothesis import strategies as st

from rftkit.errors import ConfigError
from rftkit.graders import build_grader
from rftkit.graders import http, judge, template
from rftkit.graders.base import GRADER_TYPES
from rftkit.graders.formula import FormulaError, parse
from rftkit.types import Item, Score
from tests.fuzz.conftest import bounded
from tests.fuzz.strategies import HOSTILE_CHARS, json_values, mutated, scalars, text

ITEM = Item(id="q1", messages=[{"role": "user", "content": "2+2?"}], reference_answer="4",
            metadata={"answer": "4", "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"})
BUILDABLE = sorted(set(GRADER_TYPES) - {"reward_model", "reward_function"})  # these two load files or models
OPTIONS = ["pattern", "mode", "flags", "reward_match", "reward_miss", "schema", "extract", "max_len", "buffer",
           "unit", "operation", "input", "reference", "evaluation_metric", "calculate_output", "graders", "source",
           "timeout_s", "memory_mb", "url", "batch_size", "model", "range", "labels", "passing_labels", "name",
           "harness", "entry_point", "tolerance", "fault"]


@given(st.sampled_from(BUILDABLE), st.dictionaries(st.one_of(st.sampled_from(OPTIONS), text),
                                                   st.one_of(scalars, json_values), max_size=5))
def test_any_grader_config_builds_or_is_a_config_error(kind, options):
    with bounded():
        try:
            grader = build_grader({"type": kind, **options})
        except ConfigError:
            event("refused: ConfigError")
            return
    event(f"built {kind}")
    assert hasattr(grader, "grade")


formula_text = st.one_of(text, st.lists(st.sampled_from(["a", "b", "(", ")", "+", "-", "*", "/", "^", ",", "max",
                                                         "min", "log", "sqrt", "1", "0", "2.5e3", " "]),
                                        max_size=80).map("".join))


@given(formula_text, st.dictionaries(st.sampled_from(["a", "b"]), st.floats(allow_nan=True, allow_infinity=True)))
def test_a_formula_parses_or_is_a_parse_error_and_evaluates_or_is_a_formula_error(source, values):
    with bounded():
        try:
            formula = parse(source, names=["a", "b"])
        except ValueError as exc:
            event("refused: ValueError")
            assert "calculate_output:" in str(exc)
            return
        try:
            value = formula({"a": 1.0, "b": 2.0, **values})
        except FormulaError:
            event("refused: FormulaError")
            return
    event("evaluated")
    assert math.isfinite(value)


template_text = st.one_of(text, st.lists(st.sampled_from(["{{", "}}", "sample.", "item.", "output_text", "output_json",
                                                          "reference_answer", "metadata", "answer", ".0", "x", " "]),
                                         max_size=30).map("".join))


@given(template_text, text)
def test_a_template_checks_and_renders_or_says_why(source, output):
    with bounded():
        try:
            template.check_syntax(source, "input")
        except ValueError:
            event("refused: ValueError")
            return
        try:
            rendered = template.render(source, template.sample_of(output), ITEM)
        except template.TemplateError:
            event("refused: template.TemplateError")
            return
    event("rendered")
    assert isinstance(rendered, str)


nova_entry = st.fixed_dictionaries({}, optional={"id": st.one_of(st.sampled_from(["s0", "s1", 0, 1]), json_values),
                                                 "aggregate_reward_score": st.one_of(scalars, json_values),
                                                 "metrics_list": st.one_of(json_values, st.lists(st.fixed_dictionaries(
                                                     {}, optional={"name": json_values, "value": scalars,
                                                                   "type": st.sampled_from(["Reward", "Metric", "x"])}),
                                                     max_size=3))})
bodies = st.one_of(st.binary(max_size=200), json_values.map(lambda v: __import__("json").dumps(v).encode()),
                   st.lists(nova_entry, max_size=4).map(lambda v: __import__("json").dumps(v).encode()),
                   st.lists(nova_entry, max_size=3).map(lambda v: __import__("json").dumps(
                       {"statusCode": 200, "body": __import__("json").dumps(v)}).encode()))


@given(bodies)
def test_a_nova_reward_reply_gives_a_score_per_sample(body):
    with bounded():
        scores = http._parse_results(body, ["s0", "s1"])
    event(f"{sum(s.reward is not None for s in scores)} scored")
    assert len(scores) == 2 and all(isinstance(s, Score) for s in scores)
    assert all(s.reward is None or math.isfinite(s.reward) for s in scores)


JUDGES = [
    build_grader({"type": "score_model", "model": "m", "input": [{"role": "user", "content": "{{sample.output_text}}"}],
                  "range": [0, 10]}),
    build_grader({"type": "label_model", "model": "m", "input": [{"role": "user", "content": "{{sample.output_text}}"}],
                  "labels": ["good", "bad"], "passing_labels": ["good"]}),
]


@given(st.sampled_from(range(len(JUDGES))), st.one_of(text, json_values.map(lambda v: __import__("json").dumps(v))))
def test_a_judge_reply_parses_to_a_score(which, reply):
    with bounded():
        score = JUDGES[which].parse(reply)
    event("scored" if score.reward is not None else "failed score")
    assert isinstance(score, Score) and (score.reward is None or math.isfinite(score.reward))


GRADERS = {
    "answer_match": {"type": "answer_match"},
    "math": {"type": "math"},
    "regex": {"type": "regex", "pattern": r"ANSWER:\s*\d+", "flags": ["IGNORECASE"]},
    "json_schema": {"type": "json_schema", "schema": {"type": "object", "required": ["a"]}},
    "length_penalty": {"type": "length_penalty", "max_len": 50, "buffer": 10},
    "string_check": {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
                     "operation": "ilike"},
    "fuzzy_match": {"type": "text_similarity", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
                    "evaluation_metric": "fuzzy_match"},
    "bleu": {"type": "text_similarity", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
             "evaluation_metric": "bleu"},
    "rouge_l": {"type": "text_similarity", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
                "evaluation_metric": "rouge_l"},
    "multi": {"type": "multi", "calculate_output": "0.5 * a + 0.5 * m / (1 + abs(m))",
              "graders": {"a": {"type": "answer_match"}, "m": {"type": "math"}}},
}
BUILT = {name: build_grader(spec) for name, spec in GRADERS.items()}
outputs = st.one_of(text, st.lists(st.sampled_from(HOSTILE_CHARS + ["4", "ANSWER: 4", "\\boxed{4}", "\\frac{1}{2}",
                                                                    '{"a": 1}', "1/0", "1e999", "nan"]),
                                   max_size=20).map(" ".join))


@given(st.sampled_from(sorted(GRADERS)).flatmap(lambda name: mutated(GRADERS[name])))
def test_a_near_valid_grader_config_builds_or_is_a_config_error(spec):
    with bounded():
        try:
            grader = build_grader(spec)
        except ConfigError:
            event("refused: ConfigError")
            return
    event("built")
    assert hasattr(grader, "grade")


@given(st.sampled_from(sorted(BUILT)), outputs)
def test_a_model_output_gets_a_score_from_each_grader(name, output):
    with bounded():
        score = BUILT[name].grade(ITEM, output)
    assert isinstance(score, Score)
    assert score.reward is None or math.isfinite(score.reward)


@settings(max_examples=30)  # each example is a sandboxed process: bounded harder
@given(st.sampled_from(["code", "python"]), outputs)
def test_a_model_output_through_the_sandboxed_graders_gets_a_score(kind, output):
    spec = {"type": "code", "timeout_s": 2, "workers": 2} if kind == "code" else {
        "type": "python", "source": "def grade(sample, item):\n    return float(len(sample['output_text']) % 2)\n",
        "workers": 2}
    with bounded(30):
        score = build_grader(spec).grade(ITEM, output)
    assert isinstance(score, Score)
    assert score.reward is None or math.isfinite(score.reward)

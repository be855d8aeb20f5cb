"""OpenAI grader objects (string_check, text_similarity, multi) built verbatim, with rewards worked by hand."""

import math
import sys
import types

import pytest

from rftkit.errors import ConfigError
from rftkit.graders import build_grader
from rftkit.graders import similarity as sim
from rftkit.types import Item, Score

ITEM = Item(id="q1", messages=[{"role": "user", "content": "Capital of France?"}], reference_answer="Paris",
            metadata={"meta": {"alias": "paris"}})

# ---------------------------------------------------------------- string_check


@pytest.mark.parametrize(
    "operation,text,reward",
    [
        ("eq", "Paris", 1.0),
        ("eq", "paris", 0.0),  # eq is case-sensitive
        ("eq", "Paris ", 0.0),  # and exact: no stripping
        ("ne", "Lyon", 1.0),
        ("ne", "Paris", 0.0),
        ("like", "It is Paris.", 1.0),  # like: reference contained in input
        ("like", "It is PARIS.", 0.0),  # ... case-sensitive
        ("ilike", "It is PARIS.", 1.0),  # ilike: contained, ignoring case
        ("ilike", "It is Lyon.", 0.0),
    ],
)
def test_string_check_operations(operation, text, reward):
    grader = build_grader({"type": "string_check", "name": "capital", "input": "{{sample.output_text}}",
                           "reference": "{{item.reference_answer}}", "operation": operation})
    assert grader.grade(ITEM, text).reward == reward


def test_string_check_templates_reach_nested_fields_and_output_json():
    grader = build_grader({"type": "string_check", "name": "j", "input": "{{sample.output_json.city}}",
                           "reference": "{{item.meta.alias}}", "operation": "eq"})
    assert grader.needs_reference is False  # no template reads item.reference_answer
    assert grader.grade(ITEM, '{"city": "paris"}').reward == 1.0
    missing = grader.grade(ITEM, "paris")  # not JSON: no output_json
    assert missing.reward is None and missing.error.startswith("sample_parse_error:")
    row_without = Item(id="q2", messages=[], reference_answer="x")
    assert grader.grade(row_without, '{"city": "paris"}').error.startswith("invalid_variable_error:")
    assert grader.check_item(ITEM) == []
    assert grader.check_item(row_without) == ["reference: invalid_variable_error: {{item.meta.alias}} is missing "
                                              "(no 'meta') in row 'q2'"]


def test_string_check_defaults_and_needs_reference():
    grader = build_grader("string_check")  # bare type on the command line: output_text eq reference_answer
    assert grader.name == "string_check" and grader.needs_reference is True
    assert grader.grade(ITEM, "Paris").reward == 1.0
    # a non-string reference is compared as its JSON text
    assert grader.grade(Item(id="n", messages=[], reference_answer=42), "42").reward == 1.0


def test_string_check_config_errors_name_the_field():
    valid = r"\['eq', 'ilike', 'like', 'ne'\]"
    with pytest.raises(ConfigError, match=r"operation: unknown value 'contains'; valid: " + valid):
        build_grader({"type": "string_check", "operation": "contains"})
    with pytest.raises(ConfigError, match=r"input: bad template variable \{\{output_text\}\}"):
        build_grader({"type": "string_check", "input": "{{output_text}}", "operation": "eq"})
    with pytest.raises(ConfigError, match="bad options"):
        build_grader({"type": "string_check", "operation": "eq", "case": "ignore"})


# ---------------------------------------------------------------- text_similarity metrics
# Sentence pair A: hypothesis "the cat sat on the mat", reference "the cat is on the mat" (6 tokens each)
#   1-grams: hyp {the:2, cat, sat, on, mat}, ref {the:2, cat, is, on, mat} -> matched the 2 + cat + on + mat = 5 of 6
#   2-grams: hyp the-cat cat-sat sat-on on-the the-mat; ref the-cat cat-is is-on on-the the-mat -> 3 of 5
#   3-grams: hyp the-cat-sat cat-sat-on sat-on-the on-the-mat; ref ... on-the-mat -> 1 of 4
#   4-grams: 3 each, none shared -> 0 of 3;  5-grams: 2 each, none shared
HYP_A, REF_A = "The cat sat on the mat.", "the cat is on the mat"


def test_tokens_are_lowercase_words():
    assert sim.tokens("The cat, sat-on THE mat!") == ["the", "cat", "sat", "on", "the", "mat"]


def test_fuzzy_match_is_rapidfuzz_ratio_on_raw_strings():
    # kitten / sitting: longest common subsequence "ittn" (4), so 6 + 7 - 2*4 = 5 insertions/deletions
    # ratio = 1 - 5 / (6 + 7) = 8/13
    assert sim.fuzzy_match("kitten", "sitting") == pytest.approx(8 / 13)
    assert sim.fuzzy_match("Paris", "Paris") == 1.0
    assert sim.fuzzy_match("Paris", "paris") == pytest.approx(1 - 2 / 10)  # case counts: P->p is 1 del + 1 ins


def test_bleu_by_hand():
    # A: p1 = 5/6; add-one for n >= 2: p2 = (3+1)/(5+1), p3 = (1+1)/(4+1), p4 = (0+1)/(3+1); c = r = 6 so BP = 1
    # BLEU = (5/6 * 4/6 * 2/5 * 1/4) ^ (1/4) = (1/18) ^ (1/4)
    assert sim.bleu(HYP_A, REF_A) == pytest.approx((1 / 18) ** 0.25)
    assert sim.bleu(REF_A, REF_A) == pytest.approx(1.0)
    # brevity: "the cat" vs the 6-token reference: every precision is 1 (2/2, 1+1/1+1, 0+1/0+1, 0+1/0+1)
    # and BP = exp(1 - 6/2) = exp(-2)
    assert sim.bleu("the cat", REF_A) == pytest.approx(math.exp(-2))
    assert sim.bleu("dog", REF_A) == 0.0  # no unigram in common
    assert sim.bleu("", REF_A) == 0.0


def test_gleu_by_hand():
    # A: matched n-grams 5 + 3 + 1 + 0 = 9 of 6 + 5 + 4 + 3 = 18 on both sides -> min(9/18, 9/18)
    assert sim.gleu(HYP_A, REF_A) == pytest.approx(0.5)
    # "the cat" vs "the cat sat": hyp 1,2-grams the, cat, the-cat = 3, all matched -> precision 3/3
    # ref has 3 + 2 + 1 = 6 n-grams -> recall 3/6; GLEU = min = 0.5
    assert sim.gleu("the cat", "the cat sat") == pytest.approx(0.5)
    assert sim.gleu("dog", "cat") == 0.0


def test_meteor_by_hand():
    # A: 5 matches (sat/is unmatched), P = R = 5/6, Fmean = PR / (0.9P + 0.1R) = 5/6
    # chunks: "the cat" + "on the mat" = 2; penalty 0.5 * (2/5)^3 = 0.032; score 5/6 * 0.968
    assert sim.meteor(HYP_A, REF_A) == pytest.approx(5 / 6 * 0.968)
    # "the cat sat" vs "sat the cat": 3 matches, P = R = 1, chunks "the cat" + "sat" = 2
    # penalty 0.5 * (2/3)^3 = 4/27; score 23/27
    assert sim.meteor("the cat sat", "sat the cat") == pytest.approx(23 / 27)
    # "the cat" vs A's reference: P = 1, R = 2/6; Fmean = 10PR / (R + 9P) = (10/3) / (28/3) = 5/14
    # one chunk (the -> ref 0, cat -> ref 1; NLTK's reverse search takes "the" at 4 and finds 2 chunks)
    # penalty 0.5 * (1/2)^3 = 1/16; score 5/14 * 15/16 = 75/224
    assert sim.meteor("the cat", REF_A) == pytest.approx(75 / 224)
    assert sim.meteor("cats", "cat") == 0.0  # no stemming (see similarity.py)


def test_rouge_by_hand():
    # A: ROUGE-n F1 with P = R, so F1 = matched / total: 5/6, 3/5, 1/4, 0, 0
    expected = [5 / 6, 3 / 5, 1 / 4, 0.0, 0.0]
    assert [sim.METRICS[f"rouge_{n}"](HYP_A, REF_A) for n in range(1, 6)] == pytest.approx(expected)
    # "one two three four five six" vs "... five seven": 5-grams 1-5 and 2-6 vs 1-5 and 2-5+seven: 1 of 2 each
    assert sim.METRICS["rouge_5"]("one two three four five six", "one two three four five seven") == pytest.approx(0.5)
    # ROUGE-L, A: LCS "the cat on the mat" = 5, P = R = 5/6
    assert sim.rouge_l(HYP_A, REF_A) == pytest.approx(5 / 6)
    # "the cat sat" vs "sat the cat": LCS "the cat" = 2, P = R = 2/3 (ROUGE-1 would say 1.0)
    assert sim.rouge_l("the cat sat", "sat the cat") == pytest.approx(2 / 3)
    # unequal lengths: "a b" vs "a x b y": LCS 2, P = 1, R = 1/2, F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    assert sim.rouge_l("a b", "a x b y") == pytest.approx(2 / 3)
    assert sim.lcs_length(list("abcbdab"), list("bdcaba")) == 4  # the textbook example (e.g. "bcba")


def test_text_similarity_grader_reward_and_passed():
    spec = {"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}",
            "reference": "{{item.reference_answer}}", "evaluation_metric": "gleu", "pass_threshold": 0.5}
    grader = build_grader(spec)
    item = Item(id="a", messages=[], reference_answer=REF_A)
    score = grader.grade(item, HYP_A)  # GLEU 0.5 (above): exactly at the threshold passes
    assert score.reward == pytest.approx(0.5) and score.breakdown == {"gleu": pytest.approx(0.5), "passed": 1.0}
    score = build_grader({**spec, "pass_threshold": 0.6}).grade(item, HYP_A)
    assert score.reward == pytest.approx(0.5) and score.breakdown["passed"] == 0.0
    # every metric builds and stays in [0, 1]
    for metric in sim.METRICS:
        if metric != "cosine":
            reward = build_grader({**spec, "evaluation_metric": metric}).grade(item, HYP_A).reward
            assert 0.0 <= reward <= 1.0, metric


def test_text_similarity_config_errors():
    with pytest.raises(ConfigError, match=r"evaluation_metric: unknown value 'rouge_6'; valid: \['bleu', 'cosine'"):
        build_grader({"type": "text_similarity", "evaluation_metric": "rouge_6"})
    with pytest.raises(ConfigError, match=r"pass_threshold: must be a number within \[0, 1\] \(got 2\)"):
        build_grader({"type": "text_similarity", "evaluation_metric": "bleu", "pass_threshold": 2})
    with pytest.raises(ConfigError, match="embedding_model: only used by evaluation_metric: cosine"):
        build_grader({"type": "text_similarity", "evaluation_metric": "bleu", "embedding_model": "/m"})


def test_cosine_without_a_local_model_says_how_to_configure_one(monkeypatch):
    with pytest.raises(ConfigError, match="cosine needs an installed local embedding model.*embedding_model"):
        build_grader({"type": "text_similarity", "evaluation_metric": "cosine"})
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
    with pytest.raises(ConfigError, match="sentence_transformers is not installed: pip install sentence-transformers"):
        build_grader({"type": "text_similarity", "evaluation_metric": "cosine", "embedding_model": "/models/minilm"})


def test_cosine_with_a_stand_in_embedding_model(monkeypatch):
    loaded = []

    class FakeSentenceTransformer:
        def __init__(self, path):
            loaded.append(path)

        def encode(self, texts):
            table = {"north": [1.0, 0.0], "north east": [1.0, 1.0], "south": [-1.0, 0.0]}
            return [table[t] for t in texts]

    monkeypatch.setitem(sys.modules, "sentence_transformers",
                        types.SimpleNamespace(SentenceTransformer=FakeSentenceTransformer))
    grader = build_grader({"type": "text_similarity", "evaluation_metric": "cosine", "embedding_model": "/models/m"})
    assert loaded == []  # loads on first use, not at build
    item = Item(id="c", messages=[], reference_answer="north east")
    # [1, 0] . [1, 1] / (1 * sqrt 2) = 1/sqrt(2)
    assert grader.grade(item, "north").reward == pytest.approx(1 / math.sqrt(2))
    # [-1, 0] . [1, 1] / sqrt 2 = -1/sqrt(2): clipped to 0 so the reward stays in [0, 1]
    assert grader.grade(item, "south").reward == 0.0
    assert loaded == ["/models/m"]  # loaded once


# ---------------------------------------------------------------- multi

MULTI = {
    "type": "multi", "name": "mix",
    "graders": {
        "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                  "reference": "{{item.reference_answer}}", "operation": "ilike"},
        "overlap": {"type": "text_similarity", "name": "overlap", "input": "{{sample.output_text}}",
                    "reference": "{{item.reference_answer}}", "evaluation_metric": "rouge_1", "pass_threshold": 0.5},
    },
    "calculate_output": "0.5 * exact + 0.5 * overlap",
}


def test_multi_combines_children_by_formula():
    grader = build_grader(MULTI)
    assert set(grader.children) == {"exact", "overlap"} and grader.needs_reference is True
    item = Item(id="m", messages=[], reference_answer="blue whale")
    # "the blue whale": ilike -> 1; ROUGE-1: 2 matches, P = 2/3, R = 1, F1 = 0.8; 0.5 * 1 + 0.5 * 0.8 = 0.9
    score = grader.grade(item, "the blue whale")
    assert score.reward == pytest.approx(0.9)
    assert score.breakdown == {"exact": 1.0, "overlap": pytest.approx(0.8), "overlap/rouge_1": pytest.approx(0.8),
                               "overlap/passed": 1.0}
    # "a whale": not contained -> 0; ROUGE-1: 1 match, P = 1/2, R = 1/2, F1 = 1/2; 0.5 * 0 + 0.5 * 0.5 = 0.25
    assert grader.grade(item, "a whale").reward == pytest.approx(0.25)


def test_multi_combine_from_executor_scores_and_failed_children():
    grader = build_grader({**MULTI, "calculate_output": "exact ^ 2 + overlap / exact"})
    item = Item(id="m", messages=[], reference_answer="x")
    # 2 ^ 2 + 0.5 / 2 = 4.25
    combined = grader.combine(item, "t", {"exact": Score(2.0), "overlap": Score(0.5, {"rouge_1": 0.5})})
    assert combined.reward == pytest.approx(4.25) and combined.breakdown["overlap/rouge_1"] == 0.5
    failed = grader.combine(item, "t", {"exact": Score(1.0),
                                        "overlap": Score.failed("sample_parse_error: no output_json")})
    assert failed.reward is None and failed.error == "sample_parse_error: graders.overlap: no output_json"
    # a maths error is this sample's failure, not a crash: 0.5 / 0
    divided = grader.combine(item, "t", {"exact": Score(0.0), "overlap": Score(0.5)})
    assert divided.reward is None and divided.error.startswith("other_error: calculate_output") \
        and "division by zero" in divided.error


def test_multi_nests_and_names_nested_fields_in_errors():
    nested = {"type": "multi", "graders": {"inner": MULTI, "fmt": {"type": "string_check", "operation": "like",
                                                                      "reference": "whale"}},
              "calculate_output": "min(inner, fmt)"}
    grader = build_grader(nested)
    item = Item(id="m", messages=[], reference_answer="blue whale")
    # inner = 0.9 (above), fmt: "whale" in text -> 1; min = 0.9
    score = grader.grade(item, "the blue whale")
    assert score.reward == pytest.approx(0.9) and score.breakdown["inner/overlap/rouge_1"] == pytest.approx(0.8)
    bad = {**nested, "graders": {**nested["graders"], "inner": {**MULTI, "graders": {
        **MULTI["graders"], "overlap": {"type": "text_similarity", "evaluation_metric": "rouge_9"}}}}}
    with pytest.raises(ConfigError, match=r"^grader\.graders\.inner\.graders\.overlap: evaluation_metric: unknown"):
        build_grader(bad)


def test_multi_config_errors():
    with pytest.raises(ConfigError, match=r"grader: calculate_output: invalid_variable_error: unknown variable "
                                          r"'exactt' at column 7; valid names: \['exact', 'overlap'\]"):
        build_grader({**MULTI, "calculate_output": "0.5 * exactt + 0.5 * overlap"})
    with pytest.raises(ConfigError, match=r"calculate_output: formula_parse_error: unexpected '\)' at column 16"):
        build_grader({**MULTI, "calculate_output": "exact + overlap)"})  # 5 + " + " 3 + 7 letters, then ')' is 16th
    with pytest.raises(ConfigError, match="graders.my-check: a sub-grader's name is a variable"):
        build_grader({**MULTI, "graders": {"my-check": {"type": "string_check"}}})
    with pytest.raises(ConfigError, match="graders: must be a non-empty mapping"):
        build_grader({**MULTI, "graders": {}})
    with pytest.raises(ConfigError, match="bad options"):  # calculate_output is required
        build_grader({"type": "multi", "graders": MULTI["graders"]})


def test_multi_check_item_prefixes_children():
    grader = build_grader({"type": "multi", "calculate_output": "a", "graders": {
        "a": {"type": "string_check", "reference": "{{item.meta.alias}}"}}})
    assert grader.check_item(ITEM) == []
    assert grader.check_item(Item(id="z", messages=[])) == [
        "graders.a.reference: invalid_variable_error: {{item.meta.alias}} is missing (no 'meta') in row 'z'"]

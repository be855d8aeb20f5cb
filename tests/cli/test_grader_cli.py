"""`rft grader run|validate`, grader checks at the start of `rft train`, and a run that survives its grader."""

import json
import os
import sys

import pytest
import yaml

from tests.conftest import EXAMPLES, run_cli
from rftkit.train.sinks import read_jsonl

ITEM = {"id": "q1", "messages": [{"role": "user", "content": "What is 47 + 18 - 9?"}], "reference_answer": "56",
        "unit": "apples"}

# one bad grader per kind of mistake, and the field its error must name
BAD_GRADERS = {
    "unknown type": ({"type": "strng_check"}, "grader.type: unknown grader type 'strng_check'"),
    "unknown operation": ({"type": "string_check", "name": "s", "input": "{{sample.output_text}}",
                           "reference": "{{item.reference_answer}}", "operation": "equals"}, "operation"),
    "bad template variable": ({"type": "string_check", "name": "s", "input": "{{sample.output_txt}}",
                               "reference": "{{item.reference_answer}}", "operation": "eq"}, "input"),
    "formula error": ({"type": "multi", "name": "m", "calculate_output": "a + * 2",
                       "graders": {"a": {"type": "answer_match"}}}, "calculate_output"),
    "python without grade": ({"type": "python", "name": "p", "source": "def score(sample, item):\n    return 1.0\n"},
                             "source"),
}


@pytest.fixture
def files(tmp_path):
    item = tmp_path / "item.json"
    item.write_text(json.dumps(ITEM))

    def grader(spec, name="grader.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec))
        return path

    return item, grader


def test_run_prints_reward_sub_rewards_and_latency(files):
    item, grader = files
    path = grader({"type": "answer_match", "format_weight": 0.2})
    result = run_cli("grader", "run", str(path), "--item", str(item), "--output", "ANSWER: 57", "--json")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert set(got) == {"reward", "sub_rewards", "errors", "latency_s"}
    assert got["reward"] == pytest.approx(0.2)  # wrong answer, well formed: the format share only
    assert got["sub_rewards"] == {"correct": 0.0, "format": 1.0} and got["errors"] == []
    assert 0 <= got["latency_s"] < 5
    text = run_cli("grader", "run", str(path), "--item", str(item), "--output", "ANSWER: 56")
    assert text.returncode == 0 and "reward: 1.0" in text.stdout and "latency:" in text.stdout


def test_run_reports_error_flags(files):
    item, grader = files
    path = grader({"type": "answer_match", "fault": {"raise": 1.0}})
    got = json.loads(run_cli("grader", "run", str(path), "--item", str(item), "--output", "x", "--json").stdout)
    assert got["reward"] is None and got["errors"][0].startswith("python_grader_runtime_error: InjectedFault")


def test_run_checks_template_variables_against_the_item(files):
    item, grader = files
    path = grader({"type": "string_check", "name": "s", "input": "{{sample.output_text}}",
                   "reference": "{{item.colour}}", "operation": "eq"})
    result = run_cli("grader", "run", str(path), "--item", str(item), "--output", "red")
    assert result.returncode == 2 and "item.colour" in result.stderr and "Traceback" not in result.stderr
    ok = run_cli("grader", "validate", str(grader({**yaml.safe_load(path.read_text()), "reference": "{{item.unit}}"})),
                 "--item", str(item))
    assert ok.returncode == 0 and "ok:" in ok.stdout


@pytest.mark.parametrize("case", sorted(BAD_GRADERS))
def test_validate_names_the_grader_and_field(files, case):
    item, grader = files
    spec, field = BAD_GRADERS[case]
    path = grader(spec)
    result = run_cli("grader", "validate", str(path), "--item", str(item))
    assert result.returncode == 2, result.stdout
    assert str(path) in result.stderr and field in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", sorted(BAD_GRADERS))
def test_train_refuses_a_bad_grader_before_loading_the_model(tmp_path, case):
    spec, field = BAD_GRADERS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(tmp_path / "no-such-model")}, "grader": spec,
                                      "data": {"train": str(EXAMPLES / "train.jsonl")},
                                      "run": {"dir": str(tmp_path / "run")}}))
    result = run_cli("train", str(config))
    assert result.returncode == 2, result.stderr
    assert "grader" in result.stderr and field in result.stderr, result.stderr
    assert "no-such-model" not in result.stderr  # the grader was checked first


def test_train_refuses_template_variables_the_data_lacks(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({
        "grader": {"type": "string_check", "name": "s", "input": "{{sample.output_text}}",
                   "reference": "{{item.answer}}", "operation": "eq"},
        "data": {"train": str(EXAMPLES / "train.jsonl")}, "run": {"dir": str(tmp_path / "run")}}))
    result = run_cli("train", str(config))
    assert result.returncode == 2 and "{{item.answer}} is missing" in result.stderr, result.stderr


@pytest.mark.slow
def test_training_survives_a_grader_that_hangs_and_raises(tmp_path):
    """20% of calls hang past the deadline, 10% raise: every step completes, the counts match."""
    run_dir = tmp_path / "run"
    steps = 6
    result = run_cli("train", str(EXAMPLES / "grpo.yaml"), f"run.dir={run_dir}", f"train.steps={steps}",
                     "train.prompts_per_step=8", "rollout.num_generations=8", "train.micro_batch_size=64",
                     "run.eval_interval=0", "grading.timeout_s=1.0", "grading.workers=8", "--quiet",
                     "grader={type: answer_match, fault: {hang: 0.2, raise: 0.1, hang_s: 5, seed: 1}}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        assert r["grader/timeouts"] == r["grader/injected_hang"]
        assert r["grader/errors"] == r["grader/injected_hang"] + r["grader/injected_raise"]
    calls = steps * 64
    hangs, raises = sum(r["grader/injected_hang"] for r in rows), sum(r["grader/injected_raise"] for r in rows)
    assert 0.12 * calls < hangs < 0.28 * calls and 0.05 * calls < raises < 0.15 * calls
    assert (run_dir / "final" / "config.json").exists()
    errors = [json.loads(line)["error"] for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert any(e and e.startswith("unresponsive_reward_error") for e in errors)
    assert any(e and "InjectedFault" in e for e in errors)


def test_grader_capabilities_prints_each_layer_and_its_state():
    done = run_cli("grader", "capabilities", timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    layers = {line.split()[1]: line.split()[0] for line in lines[:-1]}
    assert set(layers) >= {"fresh_process_per_run", "pid_namespace", "ipc_namespace", "cgroup", "seccomp",
                           "landlock_fs", "uid_drop", "rlimits"}, layers
    assert lines[-1].startswith("running as")
    raw = run_cli("grader", "capabilities", "--json", timeout=120)
    caps = json.loads(raw.stdout)
    assert all((layers[name] == "on") == bool(caps.get(name)) for name in layers), (layers, caps)
    if os.geteuid() == 0 and sys.platform.startswith("linux"):  # CI runs as root: the full set
        assert all(layers[name] == "on" for name in ("pid_namespace", "ipc_namespace", "uid_drop", "rlimits"))


@pytest.mark.slow
def test_training_completes_every_step_with_a_backtracking_regex_grader(tmp_path):
    """A pattern that is exponential on any long enough text: bounded per call, graded as reward_miss with the error."""
    run_dir = tmp_path / "run"
    steps = 3
    result = run_cli("train", str(EXAMPLES / "grpo.yaml"), f"run.dir={run_dir}", f"train.steps={steps}",
                     "train.prompts_per_step=4", "rollout.num_generations=4", "run.eval_interval=0", "--quiet",
                     "grading.timeout_s=5", "grader={type: regex, pattern: '^(.|.)*[QZ]$', flags: [DOTALL], timeout_s: 0.2}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all(r["grader/timeouts"] == 0 for r in rows)  # the regex stopped itself, well inside the deadline
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    stopped = [s for s in samples if (s.get("error") or "").startswith("regex_timeout_error")]
    assert stopped and all(s["reward"] == 0.0 for s in stopped), samples[:3]


def test_a_formula_nested_thousands_deep_is_a_parse_error_with_exit_2(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(json.dumps({"type": "multi", "calculate_output": "(" * 3000 + "a" + ")" * 3000,
                                "graders": {"a": {"type": "answer_match"}}}))
    done = run_cli("grader", "validate", str(path), timeout=120)
    assert done.returncode == 2 and "formula_parse_error" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_run_takes_any_json_object_as_the_item_as_openai_does(tmp_path):
    grader = tmp_path / "g.json"
    grader.write_text(json.dumps({"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                                  "reference": "{{item.reference_answer}}", "operation": "eq"}))
    item = tmp_path / "item.json"
    item.write_text(json.dumps({"reference_answer": "42"}))  # OpenAI's own example: no messages
    got = json.loads(run_cli("grader", "run", str(grader), "--item", str(item), "--output", "42", "--json").stdout)
    assert got["reward"] == 1.0 and got["errors"] == []
    assert json.loads(run_cli("grader", "run", str(grader), "--item", str(item), "--output", "41", "--json").stdout)["reward"] == 0.0

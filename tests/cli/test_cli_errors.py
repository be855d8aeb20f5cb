"""Bad input never ends in a traceback: each case names the key, path or line, with the right exit code."""

import json

import pytest

from tests.conftest import EXAMPLES, run_cli

from rftkit.config import load_config
from rftkit.errors import ConfigError, UserError


def _no_traceback(proc):
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


def test_unknown_config_key_exits_2_naming_it(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  stepz: 3\n")
    proc = run_cli("train", str(cfg))
    assert proc.returncode == 2
    assert "train.stepz" in proc.stderr and "unknown key" in proc.stderr
    _no_traceback(proc)


def test_wrong_type_override_exits_2_naming_it():
    proc = run_cli("train", str(EXAMPLES / "grpo.yaml"), "train.lr=fast")
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and "fast" in proc.stderr
    _no_traceback(proc)


def test_unknown_section_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(None, ["optimizer.lr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])


def test_batch_shape_assertion_says_what_to_change():
    with pytest.raises(ConfigError, match="divisible by train.micro_batch_size"):
        load_config(None, ["train.prompts_per_step=3", "rollout.num_generations=4", "train.micro_batch_size=5"])


def test_missing_config_file_names_path():
    proc = run_cli("train", "no/such/config.yaml")
    assert proc.returncode == 1 and "no/such/config.yaml" in proc.stderr
    _no_traceback(proc)


def test_missing_data_file_names_path(tmp_path):
    proc = run_cli("train", str(EXAMPLES / "grpo.yaml"), f"data.train={tmp_path}/nope.jsonl", f"run.dir={tmp_path}/run")
    assert proc.returncode == 1 and "nope.jsonl" in proc.stderr and "not found" in proc.stderr
    _no_traceback(proc)


def test_empty_dataset_says_so(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = run_cli("eval", "run", "--data", str(empty), "--samples", "2")
    assert proc.returncode == 1 and "empty" in proc.stderr
    _no_traceback(proc)


def test_unknown_grader_type_is_a_config_error(tmp_path):
    proc = run_cli("train", str(EXAMPLES / "grpo.yaml"), "grader.type=telepathy", f"run.dir={tmp_path}/run")
    assert proc.returncode == 2 and "telepathy" in proc.stderr and "answer_match" in proc.stderr
    _no_traceback(proc)


def test_missing_model_names_path(tmp_path):
    proc = run_cli("eval", "run", "--model", str(tmp_path / "no-model"), "--data", str(EXAMPLES / "val.jsonl"))
    assert proc.returncode == 1 and "no-model" in proc.stderr
    _no_traceback(proc)


def test_data_validate_reports_every_kind_of_bad_line(tmp_path):
    good = {"id": "a", "messages": [{"role": "user", "content": "What is 1 + 1?"}], "reference_answer": "2"}
    rows = [
        json.dumps(good),                                                                  # 1 ok
        '{"id": "b", "messages": [',                                                       # 2 invalid JSON
        json.dumps({"id": "c"}),                                                           # 3 no messages
        json.dumps({"id": "d", "messages": [{"role": "wizard", "content": "hi"}]}),        # 4 unknown role
        json.dumps({"id": "e", "messages": [{"role": "user", "content": "  "}]}),          # 5 empty content
        json.dumps({"id": "f", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),  # 6
        json.dumps(good),                                                                  # 7 duplicate id
        json.dumps({"id": "g", "messages": [{"role": "user", "content": "q"}]}),           # 8 no reference_answer
        json.dumps({"id": "h", "messages": [{"role": "user", "content": "q"}], "metadata": {"reference_answer": "1"}}),  # 9 ok
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n")
    proc = run_cli("data", "validate", str(path), "--grader", "answer_match")
    assert proc.returncode == 1
    _no_traceback(proc)
    text = proc.stderr
    for line in (2, 3, 4, 5, 6, 7, 8):
        assert f"bad.jsonl:{line}:" in text, (line, text)
    for line in (1, 9):
        assert f"bad.jsonl:{line}:" not in text
    assert "JSON" in text and "messages" in text and "wizard" in text and "empty" in text
    assert "user" in text and "duplicate" in text and "reference_answer" in text


def test_data_validate_ok_file_exits_0():
    proc = run_cli("data", "validate", str(EXAMPLES / "test.jsonl"), "--grader", "answer_match")
    assert proc.returncode == 0, proc.stderr
    assert "300" in proc.stdout


def test_every_command_has_help():
    for args in (["--help"], ["train", "--help"], ["data", "validate", "--help"], ["eval", "run", "--help"], ["demo", "--help"]):
        proc = run_cli(*args)
        assert proc.returncode == 0 and "Usage" in proc.stdout, (args, proc.stderr)


def test_user_error_types():
    assert ConfigError.exit_code == 2 and UserError.exit_code == 1

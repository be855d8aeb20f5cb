"""`grader: FILE` in a run config and `grader=FILE` on the command line: real 2-step runs, and the errors."""

import json

import pytest
import yaml

from tests.conftest import EXAMPLES, run_cli

from rftkit.config import load_config
from rftkit.errors import ConfigError
from rftkit.train.sinks import read_jsonl

# an OpenAI grader object, verbatim (docs/GRADERS.md: string_check)
STRING_CHECK = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                "reference": "{{item.reference_answer}}", "operation": "eq"}
TINY = ["train.steps=2", "train.prompts_per_step=2", "rollout.num_generations=2", "rollout.max_new_tokens=8",
        "run.eval_interval=0", "run.checkpoint_interval=0", "--quiet"]


def _config_next_to(folder, grader):
    """The example GRPO config, written into `folder` with `grader:` set (data paths made absolute)."""
    cfg = yaml.safe_load((EXAMPLES / "grpo.yaml").read_text())
    cfg["data"] = {"train": str(EXAMPLES / "train.jsonl"), "val": str(EXAMPLES / "val.jsonl")}
    cfg["grader"] = grader
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _trained_with_the_file_grader(run):
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert (run / "final").is_dir()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["grader"] == STRING_CHECK  # the object itself: config.yaml needs no other file


def test_train_with_a_grader_file_named_in_the_yaml_config(tmp_path):
    folder, elsewhere = tmp_path / "exp", tmp_path / "elsewhere"
    folder.mkdir(), elsewhere.mkdir()
    (folder / "exact.json").write_text(json.dumps(STRING_CHECK))
    config = _config_next_to(folder, "exact.json")  # relative to the config file, not the current directory
    run = tmp_path / "run"
    proc = run_cli("train", str(config), f"run.dir={run}", *TINY, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    _trained_with_the_file_grader(run)
    # --resume reads RUN_DIR/config.yaml: it still loads with the grader file gone
    (folder / "exact.json").unlink()
    assert load_config(run / "config.yaml").grader == STRING_CHECK


def test_train_with_a_grader_file_given_as_an_override(tmp_path):
    (tmp_path / "exact.json").write_text(json.dumps(STRING_CHECK))
    run = tmp_path / "run"
    # relative to the current directory, like data.train=... on the command line
    proc = run_cli("train", str(EXAMPLES / "grpo.yaml"), "grader=exact.json", f"run.dir={run}", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _trained_with_the_file_grader(run)


def test_a_missing_grader_file_names_itself_and_exits_2(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", str(EXAMPLES / "grpo.yaml"), "grader=no_such_grader.json", f"run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no_such_grader.json" in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not run.exists()  # refused before anything ran
    config = _config_next_to(tmp_path, "graders/missing.yaml")
    proc = run_cli("train", str(config), f"run.dir={run}")
    assert proc.returncode == 2 and str(tmp_path / "graders" / "missing.yaml") in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_grader_files_own_paths_are_relative_to_it(tmp_path, monkeypatch):
    graders = tmp_path / "exp" / "graders"
    graders.mkdir(parents=True)
    (graders / "schema.json").write_text(json.dumps({"type": "object"}))
    (graders / "shape.yaml").write_text(yaml.safe_dump({"type": "json_schema", "name": "shape", "schema_file": "schema.json"}))
    config = _config_next_to(tmp_path / "exp", "graders/shape.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config, ["grader.name=renamed"])  # an override edits the grader the file holds
    assert cfg.grader == {"type": "json_schema", "name": "renamed", "schema_file": str(graders / "schema.json")}
    assert load_config(None, ["grader=exp/graders/shape.yaml"]).grader["schema_file"] == str(graders / "schema.json")


def test_bare_type_names_stay_type_names(tmp_path):
    assert load_config(_config_next_to(tmp_path, "answer_match")).grader == "answer_match"
    assert load_config(None, ["grader=math"]).grader == "math"


@pytest.mark.parametrize("text, problem", [("[1, 2]", "must hold one grader object"), ("{type: [", "not valid")])
def test_a_grader_file_that_is_not_one_grader_is_a_config_error(tmp_path, text, problem):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_config(None, [f"grader={tmp_path / 'bad.yaml'}"])

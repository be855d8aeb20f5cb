"""`rft env run|validate`: an environment tried with scripted turns, its errors clear and bounded, and config
errors exit 2 before a model loads."""

import json
import time

import pytest
import yaml

from tests.agents.conftest import TOOLS, call
from tests.conftest import run_cli

ITEM = {"id": "q1", "messages": [{"role": "user", "content": "What is 4821 * 37?"}], "reference_answer": "178377"}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "tools.py").write_text(TOOLS)
    (tmp_path / "item.json").write_text(json.dumps(ITEM))

    def env(spec=None, grader=None, turns=()):
        data = {"environment": spec or {"type": "tools", "tools": "tools.py", "tool_timeout_s": 1.0}}
        if grader is not None:
            data["grader"] = grader
        (tmp_path / "env.yaml").write_text(yaml.safe_dump(data))
        (tmp_path / "turns.json").write_text(json.dumps(list(turns)))
        return tmp_path / "env.yaml", tmp_path / "item.json", tmp_path / "turns.json"
    return env


def play(files, turns, **kw):
    env, item, path = files(turns=turns, **kw)
    t0 = time.monotonic()
    result = run_cli("env", "run", str(env), "--item", str(item), "--assistant", str(path), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), time.monotonic() - t0


def test_a_solved_episode_graded(files):
    got, _ = play(files, [call("calculator", expression="4821 * 37"), "ANSWER: 178377"], grader={"type": "answer_match"})
    assert {"messages", "reward", "turn_rewards", "finish_reason", "errors"} <= set(got)
    roles = [m["role"] for m in got["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert got["messages"][2] == {"role": "tool", "tool_call_id": "call_0-0", "name": "calculator", "content": "178377"}
    assert got["reward"] == 1.0 and got["finish_reason"] == "stop" and got["errors"] == []
    assert got["turn_rewards"] == [None, None]


def test_hostile_tools_end_as_error_observations_in_bounded_time(files):
    turns = [call("crash", x=1), call("hang"), call("spam"), call("network"), "ANSWER: ?"]
    got, took = play(files, turns, spec={"type": "tools", "tools": "tools.py", "tool_timeout_s": 1.0, "max_turns": 6})
    tool = [m["content"] for m in got["messages"] if m["role"] == "tool"]
    assert len(tool) == 4 and all(t.startswith("error: ") for t in tool)
    assert "ZeroDivisionError" in tool[0]
    assert "did not return within 1s" in tool[1] or "CPU time limit (1 s)" in tool[1]
    assert "output file size limit" in tool[2] and tool[3].startswith("error: network failed: ")
    assert len(got["errors"]) == 4 and got["counts"]["tool_errors"] == 4 and got["finish_reason"] == "stop"
    assert took < 30


def test_unknown_tool_bad_json_and_max_turns(files):
    turns = [call("teleport"), '<tool_call>{"name": "calculator", "arguments": {oops}}</tool_call>', call("lookup", name="x")]
    got, _ = play(files, turns, spec={"type": "tools", "tools": "tools.py", "max_turns": 3})
    tool = [m["content"] for m in got["messages"] if m["role"] == "tool"]
    assert "unknown tool 'teleport'" in tool[0] and "not JSON" in tool[1]
    assert got["finish_reason"] == "max_turns" and got["counts"]["truncated"] == 1
    assert got["counts"]["tool_call_errors"] == 1


def test_human_output(files):
    env, item, turns = files(turns=[call("calculator", expression="2 * 3"), "ANSWER: 6"])
    result = run_cli("env", "run", str(env), "--item", str(item), "--assistant", str(turns))
    assert result.returncode == 0, result.stderr
    assert "[tool] 6" in result.stdout and "-> calculator" in result.stdout and "finish: stop" in result.stdout


@pytest.mark.parametrize("spec, message", [
    ({"type": "tools", "tools": "broken.py"}, "broken.py, line 1: syntax error"),
    ({"type": "tools", "tools": "tools.py", "max_turns": 0}, "environment.max_turns"),
    ({"type": "tool", "tools": "tools.py"}, "environment.type: unknown 'tool'"),
    ({"type": "user_simulator"}, "exactly one of `script_field`"),
])
def test_config_errors_exit_2_without_traceback(files, tmp_path, spec, message):
    (tmp_path / "broken.py").write_text("def f(:\n  pass\n")
    env, item, turns = files(spec=spec, turns=["hi"])
    for args in (("env", "validate", str(env)), ("env", "run", str(env), "--item", str(item), "--assistant", str(turns))):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


def test_validate_lists_the_tools(files):
    env, _, _ = files()
    result = run_cli("env", "validate", str(env))
    assert result.returncode == 0, result.stderr
    assert "tools: calculator, lookup, crash, hang, spam, network, huge" in result.stdout


def test_train_rejects_a_bad_environment_before_loading_a_model(tmp_path):
    (tmp_path / "tools.py").write_text("def f(:\n")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(tmp_path / "no-such-model")},
                                      "environment": {"type": "tools", "tools": "tools.py"},
                                      "run": {"dir": str(tmp_path / "run"), "eval_interval": 0}}))
    result = run_cli("train", str(config))
    assert result.returncode == 2 and "tools.py, line 1: syntax error" in result.stderr, result.stderr


def test_the_user_simulator_example_plays_and_the_endpoint_one_validates():
    from tests.conftest import REPO

    folder = REPO / "examples" / "user_simulator"
    result = run_cli("env", "run", str(folder / "env.yaml"), "--item", str(folder / "item.json"), "--assistant",
                     str(folder / "turns.json"), "--json")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert [m["role"] for m in got["messages"]] == ["user", "assistant", "user", "assistant"]
    assert got["messages"][2]["content"] == "Now add 13 to that. What is it?"
    assert got["reward"] == 1.0 and got["finish_reason"] == "stop"
    checked = run_cli("env", "validate", str(folder / "env_endpoint.yaml"))
    assert checked.returncode == 0 and "base_url: http://localhost:8000/v1" in checked.stdout, checked.stderr

"""Tools run in the sandbox: every way a tool can fail is an error observation, in bounded time."""

import re
import time

import pytest

from rftkit.agents.environment import build_environment
from rftkit.agents.toolcall import parse_turn
from rftkit.agents.tools import argument_problem, schemas_from_source
from rftkit.errors import ConfigError
from rftkit.types import Item

from tests.agents.conftest import call

ITEM = Item(id="q", messages=[{"role": "user", "content": "What is 4821 * 37?"}])


def test_schemas_from_type_hints_and_docstrings_without_running_the_file():
    source = 'import os\nos.remove("/nonexistent")\n\ndef add(a: int, b: float = 1.0, *, c=None) -> float:\n' \
             '    """Add two numbers.\n\n    Args:\n        a: the first\n        b (float): the second\n    """\n' \
             '    return a + b\n\ndef _hidden(): pass\n'
    [schema] = schemas_from_source(source)
    fn = schema["function"]
    assert fn["name"] == "add" and fn["description"] == "Add two numbers."
    assert fn["parameters"]["properties"] == {"a": {"type": "integer", "description": "the first"},
                                              "b": {"type": "number", "description": "the second"}}
    assert fn["parameters"]["required"] == ["a"]


def test_argument_checks():
    [schema] = schemas_from_source("def f(a: int, s: str = ''):\n    pass\n")
    assert argument_problem(schema, {"a": 1}) is None
    assert "missing required argument 'a'" in argument_problem(schema, {})
    assert "unknown argument 'z'" in argument_problem(schema, {"a": 1, "z": 2})
    assert "must be integer" in argument_problem(schema, {"a": True})
    assert "must be string" in argument_problem(schema, {"a": 1, "s": 5})


def test_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "tools.py"
    bad.write_text("def ok():\n    return 1\n\ndef broken(:\n    pass\n")
    with pytest.raises(ConfigError, match=r"tools.py, line 4: syntax error"):
        build_environment({"type": "tools", "tools": str(bad)})


def test_unknown_option_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="environment.max_turn: unknown key"):
        build_environment({"type": "tools", "tools": "x.py", "max_turn": 3})
    with pytest.raises(ConfigError, match="cannot read"):
        build_environment({"type": "tools", "tools": str(tmp_path / "missing.py")})
    with pytest.raises(ConfigError, match="environment.type: unknown 'toolz'"):
        build_environment({"type": "toolz"})


def step(env, text):
    world = env.new()
    world.reset(ITEM)
    t0 = time.monotonic()
    outcome = world.step(parse_turn(text, "c"))
    return outcome, time.monotonic() - t0


@pytest.fixture(scope="module")
def env(tools_file):
    return build_environment({"type": "tools", "tools": str(tools_file), "tool_timeout_s": 1.0,
                              "max_observation_chars": 500})


def test_a_working_call(env):
    outcome, _ = step(env, call("calculator", expression="4821 * 37"))
    assert outcome.observations == [{"role": "tool", "tool_call_id": "c-0", "name": "calculator", "content": "178377"}]
    assert outcome.counts == {"tool_calls": 1, "tool_errors": 0, "tool_call_errors": 0} and not outcome.done


def test_json_results_and_answers(env):
    outcome, _ = step(env, call("lookup", name="Zorb"))
    assert outcome.observations[0]["content"] == "4821"
    done, _ = step(env, "ANSWER: 178377")
    assert done.done and done.observations == []


@pytest.mark.parametrize("text, reason", [
    (call("crash", x=1), "ZeroDivisionError"),
    (call("hang"), r"did not return within 1s|CPU time limit \(1 s\)"),  # wall clock or CPU clock, whichever first
    (call("spam"), "output file size limit"),
    (call("network"), "Error"),  # no network in the sandbox: the connect fails (which errno depends on the layers)
    (call("nothing"), "unknown tool 'nothing'"),
    (call("calculator", expr="1"), "unknown argument 'expr'"),
    (call("calculator", expression=5), "must be string"),
    (call("calculator", expression="__import__('os')"), "ValueError: only digits"),
    (call("_private"), "unknown tool"),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "1"</tool_call>', "not JSON"),
])
def test_every_failure_is_an_error_observation_in_bounded_time(env, text, reason):
    outcome, took = step(env, text)
    [obs] = outcome.observations
    assert obs["role"] == "tool" and obs["content"].startswith("error: ") and re.search(reason, obs["content"]), obs
    assert outcome.errors and re.search(reason, outcome.errors[0])
    assert outcome.counts.get("tool_errors", 0) + outcome.counts.get("tool_call_errors", 0) == 1
    assert took < 10, took


def test_huge_results_are_cut(env):
    outcome, _ = step(env, call("huge"))
    text = outcome.observations[0]["content"]
    assert text.startswith("y" * 500) and "4999500 more characters cut" in text and len(text) < 600


def test_nothing_left_running_after_a_hang(env):
    step(env, call("hang"))
    before = _descendants_cpu_s()
    time.sleep(1.0)
    assert _descendants_cpu_s() - before < 0.3, "a process of the hanging tool still burns CPU"


def _descendants_cpu_s() -> float:
    """CPU seconds used so far by every live descendant of this process."""
    import os

    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, (ppid, _) in parents.items() if ppid in frontier} - mine
        mine |= frontier
    return sum(parents[pid][1] for pid in mine)


def test_item_tools_override_the_files(env):
    own = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}]
    item = Item(id="q", messages=ITEM.messages, metadata={"tools": own})
    world = env.new()
    world.reset(item)
    assert world.tools(item) == own
    outcome = world.step(parse_turn(call("calculator", expression="1+1"), "c"))
    assert "unknown tool 'calculator' (tools: lookup)" in outcome.observations[0]["content"]

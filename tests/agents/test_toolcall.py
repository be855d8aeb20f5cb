import json

from rftkit.agents.toolcall import MAX_CALLS, parse_turn


def test_calls_content_and_ids():
    turn = parse_turn('First. <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call> then '
                      '<tool_call>\n{"name": "neg", "arguments": {"x": 3}}\n</tool_call>', "t0")
    assert turn.content == "First.  then"
    assert [(c.id, c.name, c.arguments) for c in turn.calls] == [("t0-0", "add", {"a": 1, "b": 2}), ("t0-1", "neg", {"x": 3})]
    assert turn.errors == []
    message = turn.message()
    assert message["tool_calls"][0]["function"] == {"name": "add", "arguments": json.dumps({"a": 1, "b": 2})}


def test_plain_answer_wants_no_tools():
    turn = parse_turn("ANSWER: 42", "t")
    assert not turn.wants_tools and turn.content == "ANSWER: 42" and "tool_calls" not in turn.message()


def test_arguments_as_json_text_are_accepted():
    turn = parse_turn('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', "t")
    assert turn.calls[0].arguments == {"x": 1}


def test_missing_arguments_mean_none():
    assert parse_turn('<tool_call>{"name": "f"}</tool_call>', "t").calls[0].arguments == {}


def test_every_malformed_call_is_an_error_not_an_exception():
    cases = {
        '<tool_call>{"name": calc}</tool_call>': "not JSON",
        '<tool_call>[1, 2]</tool_call>': "JSON object",
        '<tool_call>{"arguments": {}}</tool_call>': "no `name`",
        '<tool_call>{"name": "f", "arguments": [1]}</tool_call>': "must be a JSON object",
        '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>': "not a JSON object",
        '<tool_call>{"name": "f", "arguments": {}}': "without </tool_call>",
        "<tool_call>" + "[" * 100_000 + "</tool_call>": "not JSON",
    }
    for text, reason in cases.items():
        turn = parse_turn(text, "t")
        assert turn.calls == [] and len(turn.errors) == 1, text[:60]
        assert reason in turn.errors[0].message, (text[:60], turn.errors[0].message)
        assert turn.errors[0].id == "t-0"


def test_calls_beyond_the_cap_are_errors():
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>' * (MAX_CALLS + 2)
    turn = parse_turn(text, "t")
    assert len(turn.calls) == MAX_CALLS and len(turn.errors) == 2

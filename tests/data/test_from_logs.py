"""`rft data from-logs`: Bedrock invocation logs and OpenAI chat-completions logs -> RFT Items.

Real files in tmp_path (gzip through the gzip module), run through the CLI; every written line is
read back with `validate_file`, and every dropped line must be named with its file, line and reason.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rftkit.cli import app
from rftkit.data import validate_file
from rftkit.data.logs_shapes import answer_text, prompt_messages, request_messages
from rftkit.data.rows import load_rows
from rftkit.errors import UserError
from tests.conftest import REPO, run_cli

SYS = "End with ANSWER: <n>."


def bedrock(req_id: str | None, question: str, answer: str | None = "ANSWER: 1", *, op: str = "Converse",
            model: str = "amazon.nova-lite-v1:0", ts: str | None = "2025-03-11T09:00:00Z", **extra) -> dict:
    """A ModelInvocationLog record; Converse bodies unless `op` names an InvokeModel shape via `body`."""
    body = extra.pop("body", None) or {"messages": [{"role": "user", "content": [{"text": question}]}],
                                       "system": [{"text": SYS}], "inferenceConfig": {"maxTokens": 64}}
    rec = {"schemaType": "ModelInvocationLog", "schemaVersion": "1.0", "accountId": "123456789012",
           "region": "us-east-1", "operation": op, "modelId": model,
           "input": {"inputContentType": "application/json", "inputBodyJson": body, "inputTokenCount": 9}}
    if req_id is not None:
        rec["requestId"] = req_id
    if ts is not None:
        rec["timestamp"] = ts
    if answer is not None:
        out = extra.pop("output", None) or {"output": {"message": {"role": "assistant", "content": [{"text": answer}]}},
                                            "stopReason": "end_turn"}
        rec["output"] = {"outputContentType": "application/json", "outputBodyJson": out, "outputTokenCount": 3}
    rec.update(extra)
    return rec


def lines(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()) + b"\n"
                    for r in rows)


def run(*args: str):
    result = CliRunner().invoke(app, ["data", "from-logs", *map(str, args)])
    if isinstance(result.exception, Exception) and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def items_of(path: Path) -> list[dict]:
    """The rows written, after checking the file reads back as Items with no bad line."""
    report = validate_file(path)
    assert report.ok, [(p.line, p.reason) for p in report.problems]
    rows = read_jsonl(path)
    assert [i.id for i in report.items] == [r["id"] for r in rows]
    return rows


@pytest.fixture
def mixed_dir(tmp_path: Path) -> Path:
    """Converse and InvokeModel records, plain and gzipped, with every kind of bad line mixed in."""
    logs = tmp_path / "logs" / "AWSLogs" / "123456789012" / "BedrockModelInvocationLogs" / "us-east-1"
    (logs / "2025" / "03" / "11").mkdir(parents=True)
    (logs / "2025" / "03" / "12").mkdir(parents=True)
    s3_only = bedrock("r-s3", "big")
    s3_only["input"] = {"inputContentType": "application/json", "inputBodyS3Path": "s3://bucket/data/r-s3_input.json.gz"}
    image_only = bedrock("r-img", "x", body={"messages": [{"role": "user", "content": [
        {"image": {"format": "png", "source": {"bytes": "..."}}}]}]})
    (logs / "2025" / "03" / "11" / "a.json").write_bytes(lines(
        bedrock("r-conv", "What is 2 + 3?", "ANSWER: 5"),  # 1 kept
        '{"schemaType": "ModelInvocationLog", "input": ',  # 2 bad JSON
        b'{"schemaType": "ModelInvocationLog", "note": "caf\xe9"}',  # 3 not UTF-8
        {**bedrock("r-wrong", "hi"), "schemaType": "SomethingElse"},  # 4 wrong schemaType
        s3_only,  # 5 S3-only body
        "",  # blank: not a record
        image_only,  # 7 no text in the last user turn
    ))
    anthropic = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "system": SYS,
                 "messages": [{"role": "user", "content": "What is 4 + 4?"}]}
    llama = {"prompt": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 9 - 2?<|eot_id|>"
                       "<|start_header_id|>assistant<|end_header_id|>\n\n", "max_gen_len": 64}
    good = lines(
        bedrock("r-claude", "", op="InvokeModel", model="anthropic.claude-3-haiku-20240307-v1:0", body=anthropic,
                output={"content": [{"type": "text", "text": "ANSWER: 8"}], "stop_reason": "end_turn"}),  # 1
        bedrock("r-llama", "", op="InvokeModel", model="meta.llama3-8b-instruct-v1:0", body=llama,
                output={"generation": "ANSWER: 7", "stop_reason": "stop"}),  # 2
        bedrock("r-third", "What is 1 + 1?", "ANSWER: 2"),  # 3
    )
    whole = gzip.compress(good + lines(*(bedrock(f"r-tail{i}", f"What is {i} + 100?") for i in range(40))))
    (logs / "2025" / "03" / "12" / "b.json.gz").write_bytes(whole[:-40])  # a truncated upload
    (logs / "2025" / "03" / "12" / "c.jsonl.gz").write_bytes(gzip.compress(good[: good.index(b"\n") + 1]))
    return tmp_path / "logs"


def test_mixed_directory_gives_valid_items_and_names_every_dropped_line(mixed_dir: Path, tmp_path: Path):
    out, report = tmp_path / "prompts.jsonl", tmp_path / "report.json"
    result = run(mixed_dir, "--out", out, "--report", report, "--no-dedupe")
    assert result.exit_code == 0, result.output
    rows = items_of(out)
    ids = [r["id"] for r in rows]
    # directory walked in sorted order: a.json, b.json.gz (good lines before the cut), c.jsonl.gz
    assert ids[:4] == ["r-conv", "r-claude", "r-llama", "r-third"]
    assert ids[-1] == "r-claude-2"  # c.jsonl.gz repeats b's first record: same requestId, made unique
    by_id = {r["id"]: r for r in rows}
    assert by_id["r-conv"]["messages"] == [{"role": "system", "content": SYS}, {"role": "user", "content": "What is 2 + 3?"}]
    assert by_id["r-claude"]["messages"][-1] == {"role": "user", "content": "What is 4 + 4?"}
    assert by_id["r-claude"]["reference_answer"] == "ANSWER: 8"
    assert by_id["r-llama"]["messages"] == [{"role": "user", "content": "What is 9 - 2?"}]
    assert by_id["r-llama"]["metadata"]["logged_response"] == "ANSWER: 7"
    assert by_id["r-llama"]["metadata"]["operation"] == "InvokeModel"

    a = mixed_dir / "AWSLogs/123456789012/BedrockModelInvocationLogs/us-east-1/2025/03/11/a.json"
    b = a.parents[1] / "12" / "b.json.gz"
    expected = {(str(a), 2): "invalid JSON", (str(a), 3): "not valid UTF-8", (str(a), 4): "wrong schemaType",
                (str(a), 5): "S3-only body", (str(a), 7): "no text in last user turn"}
    got = json.loads(report.read_text())
    drops = {(d["file"], d["line"]): d["reason"] for d in got["drops"]}
    gz = [(k, v) for k, v in drops.items() if k[0] == str(b)]
    assert len(gz) == 1 and gz[0][1] == "corrupt gzip"
    read_from_b = sum(1 for i in ids if i.startswith("r-tail")) + 3
    assert gz[0][0][1] == read_from_b + 1  # the line after the last good one
    assert {k: v for k, v in drops.items() if k[0] != str(b)} == expected
    for (file, line), reason in {**expected, **dict(gz)}.items():
        assert f"{file}:{line}: {reason}" in result.stderr
    assert f"read up to line {read_from_b}" in result.stderr
    assert "s3://bucket/data/r-s3_input.json.gz" in result.stderr
    assert got["kept"] == len(rows) and got["dropped"] == 6
    assert got["records_read"] == len(rows) + 6 == got["kept"] + got["dropped"]
    assert "kept %d, dropped 6" % len(rows) in result.stdout and "  S3-only body: 1" in result.stdout


def test_dedupe_names_the_first_occurrence(tmp_path: Path):
    first, second = tmp_path / "logs" / "1.jsonl", tmp_path / "logs" / "2.jsonl.gz"
    first.parent.mkdir()
    first.write_bytes(lines(bedrock("a", "What is 2 + 3?")))
    second.write_bytes(gzip.compress(lines(bedrock("b", "  what IS 2 +\n 3? "), bedrock("c", "What is 3 + 2?"))))
    out = tmp_path / "out.jsonl"
    result = run(tmp_path / "logs", "--out", out)
    assert [r["id"] for r in items_of(out)] == ["a", "c"]
    assert f"{second}:1: duplicate prompt: the same prompt as {first}:1" in result.stderr
    assert [r["id"] for r in (run(tmp_path / "logs", "--out", out, "--no-dedupe"), items_of(out))[1]] == ["a", "b", "c"]


def test_model_and_date_filters(tmp_path: Path):
    log = tmp_path / "calls.log"
    log.write_bytes(lines(
        bedrock("nova-10", "q1", model="amazon.nova-lite-v1:0", ts="2025-03-10T23:59:59Z"),
        bedrock("nova-11", "q2", model="amazon.nova-pro-v1:0", ts="2025-03-11T00:00:00Z"),
        bedrock("claude-11", "q3", model="us.anthropic.claude-3-5-haiku-20241022-v1:0", ts="2025-03-11T12:00:00Z"),
        bedrock("nova-12-end", "q4", model="amazon.nova-lite-v1:0", ts="2025-03-12T23:59:59.500Z"),
        bedrock("nova-13", "q5", model="amazon.nova-lite-v1:0", ts="2025-03-13T00:00:00Z"),
        bedrock("no-time", "q6", model="amazon.nova-lite-v1:0", ts=None),
    ))
    out = tmp_path / "out.jsonl"
    result = run(log, "--out", out, "--model", "amazon.nova-*")
    assert [r["id"] for r in items_of(out)] == ["nova-10", "nova-11", "nova-12-end", "nova-13", "no-time"]
    assert f"{log}:3: filtered by model" in result.stderr
    run(log, "--out", out, "--model", "amazon.nova-pro-v1:0", "--model", "us.anthropic.claude-3-5-haiku-20241022-v1:0")
    assert [r["id"] for r in items_of(out)] == ["nova-11", "claude-11"]

    result = run(log, "--out", out, "--since", "2025-03-11", "--until", "2025-03-12")  # inclusive, whole days
    assert [r["id"] for r in items_of(out)] == ["nova-11", "claude-11", "nova-12-end"]
    assert f"{log}:1: before --since" in result.stderr and f"{log}:5: after --until" in result.stderr
    assert f"{log}:6: no timestamp" in result.stderr
    run(log, "--out", out, "--since", "2025-03-11T06:00:00Z", "--until", "2025-03-11T12:00:00+00:00")
    assert [r["id"] for r in items_of(out)] == ["claude-11"]
    with pytest.raises(UserError, match="--since 'yesterday'"):
        run(log, "--out", out, "--since", "yesterday")


def test_last_user_turn_keeps_system_and_last_user_message(tmp_path: Path):
    body = {"system": [{"text": SYS}], "messages": [
        {"role": "user", "content": [{"text": "What is 12 + 30?"}]},
        {"role": "assistant", "content": [{"text": "ANSWER: 42"}, {"toolUse": {"toolUseId": "t1", "name": "calc"}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"json": {"v": 1}}]}},
                                     {"text": "And 42 - 17?"}]}]}
    log = tmp_path / "multi.jsonl"
    log.write_bytes(lines(bedrock("m", "", body=body)))
    out = tmp_path / "out.jsonl"
    run(log, "--out", out)
    assert [m["role"] for m in items_of(out)[0]["messages"]] == ["system", "user", "assistant", "user"]
    assert items_of(out)[0]["messages"][2]["content"] == "ANSWER: 42"  # the text kept, the tool use left out
    run(log, "--out", out, "--last-user-turn")
    assert items_of(out)[0]["messages"] == [{"role": "system", "content": SYS}, {"role": "user", "content": "And 42 - 17?"}]


def test_responses_none_reference_and_asft(tmp_path: Path):
    log = tmp_path / "calls.jsonl"
    log.write_bytes(lines(bedrock("with", "What is 2 + 2?", "ANSWER: 4"), bedrock("without", "What is 5 + 5?", None),
                          bedrock("rated", "What is 6 + 6?", "ANSWER: 11", feedback="thumbs_down"),
                          bedrock("scored", "What is 7 + 7?", "ANSWER: 14", metadata={"reward": 0.75})))
    out = tmp_path / "out.jsonl"
    run(log, "--out", out)
    rows = {r["id"]: r for r in items_of(out)}
    assert rows["with"]["reference_answer"] == "ANSWER: 4" == rows["with"]["metadata"]["logged_response"]
    assert "reference_answer" not in rows["without"] and "logged_response" not in rows["without"]["metadata"]

    run(log, "--out", out, "--responses", "none")
    assert all("reference_answer" not in r and "logged_response" not in r["metadata"] for r in items_of(out))

    result = run(log, "--out", out, "--responses", "asft")
    assert f"{log}:2: no logged response" in result.stderr
    rows = items_of(out)
    assert [(r["id"], r["response"], r["reward"]) for r in rows] == [
        ("with", "ANSWER: 4", None), ("rated", "ANSWER: 11", 0.0), ("scored", "ANSWER: 14", 0.75)]
    logged = load_rows(out, "logged")  # what the A-SFT stage reads
    assert [(x.id, x.response, x.reward) for x in logged] == [(r["id"], r["response"], r["reward"]) for r in rows]


def test_openai_request_response_and_batch_shapes(tmp_path: Path):
    logs = tmp_path / "openai"
    logs.mkdir()
    pair = {"request": {"model": "gpt-4o-mini", "messages": [
                {"role": "system", "content": SYS},
                {"role": "user", "content": [{"type": "text", "text": "What is 3 + 4?"}, {"type": "image_url", "image_url": {"url": "x"}}]}]},
            "response": {"id": "chatcmpl-1", "object": "chat.completion", "created": 1741683600, "model": "gpt-4o-mini-2024-07-18",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ANSWER: 7"},
                                      "finish_reason": "stop"}]}}
    no_id = {"request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "What is 1 + 8?"}]}}
    (logs / "chat.jsonl").write_bytes(lines(pair, no_id, {"hello": "world"}))

    def batch_in(cid, question):
        return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}}

    def batch_out(cid, text):
        return {"id": f"batch_req_{cid}", "custom_id": cid, "response": {"status_code": 200, "request_id": "x", "body": {
            "id": f"chatcmpl-{cid}", "created": 1741770000, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}}, "error": None}

    (logs / "batch_input.jsonl").write_bytes(lines(batch_in("task-1", "What is 2 + 9?"), batch_in("task-2", "What is 5 - 1?"),
                                                   {**batch_in("emb", "x"), "url": "/v1/embeddings"}))
    (logs / "batch_output.jsonl").write_bytes(lines(batch_out("task-2", "ANSWER: 4"), batch_out("task-1", "ANSWER: 11"),
                                                    batch_out("task-9", "ANSWER: 0")))
    out = tmp_path / "out.jsonl"
    result = run(logs, "--out", out, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in items_of(out)}
    # sorted walk: batch_input, batch_output, chat; batch answers are joined whichever file comes first
    assert list(rows) == ["task-1", "task-2", "chatcmpl-1", "chat:2"]
    assert rows["task-1"]["reference_answer"] == "ANSWER: 11" and rows["task-2"]["reference_answer"] == "ANSWER: 4"
    assert rows["task-1"]["metadata"]["timestamp"].startswith("2025-03-12")  # from the joined answer
    assert rows["chatcmpl-1"]["messages"] == [{"role": "system", "content": SYS}, {"role": "user", "content": "What is 3 + 4?"}]
    assert rows["chatcmpl-1"]["reference_answer"] == "ANSWER: 7"
    assert rows["chatcmpl-1"]["metadata"]["timestamp"] == "2025-03-11T09:00:00+00:00"
    assert "reference_answer" not in rows["chat:2"]
    assert f"{logs / 'batch_input.jsonl'}:3: not chat completions" in result.stderr
    assert f"{logs / 'batch_output.jsonl'}:3: batch output without input" in result.stderr
    assert f"{logs / 'chat.jsonl'}:3: unknown record shape" in result.stderr
    assert "2 Batch output lines joined" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["records_read"] == report["kept"] + report["dropped"] + report["batch_outputs_joined"] == 9
    run(logs, "--out", out, "--model", "gpt-4o-mini-2024-07-18")  # the response's model matches too
    assert [r["id"] for r in items_of(out)] == ["chatcmpl-1"]
    result = run(logs, "--out", out, "--format", "bedrock")
    assert result.exit_code == 1 and "wrong schemaType" in result.stderr


def test_kto_rows_from_feedback(tmp_path: Path):
    log = tmp_path / "rated.jsonl"
    log.write_bytes(lines(
        bedrock("up", "q1", "A1", feedback="thumbs_up"),
        bedrock("down", "q2", "A2", metadata={"rating": "Thumbs-Down"}),
        bedrock("minus", "q3", "A3", thumbs=-1),
        bedrock("yes", "q4", "A4", label=True),
        bedrock("nested", "q5", "A5", feedback={"value": "good", "comment": "nice"}),
        bedrock("unrated", "q6", "A6"),
        bedrock("unclear", "q7", "A7", rating="meh"),
        bedrock("no-answer", "q8", None, feedback="up"),
        {"request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "q9"}], "metadata": {"feedback": "negative"}},
         "response": {"id": "oa", "choices": [{"message": {"role": "assistant", "content": "A9"}}]}},
    ))
    out, kto = tmp_path / "out.jsonl", tmp_path / "kto.jsonl"
    result = run(log, "--out", out, "--kto-out", kto)
    assert result.exit_code == 0 and "wrote 6 KTO rows" in result.stdout
    rows = read_jsonl(kto)
    assert [(r["id"], r["completion"], r["label"]) for r in rows] == [
        ("up", "A1", True), ("down", "A2", False), ("minus", "A3", False), ("yes", "A4", True), ("nested", "A5", True),
        ("oa", "A9", False)]
    for r in rows:
        assert set(r) == {"id", "messages", "completion", "label"} and isinstance(r["label"], bool)
        assert r["messages"][-1]["role"] == "user"
    assert rows[0]["messages"] == [{"role": "system", "content": SYS}, {"role": "user", "content": "q1"}]
    assert validate_file(kto).ok  # the prompts read back as Items too
    assert [(x.id, x.completion, x.label) for x in load_rows(kto, "unpaired")] == [  # the KTO stage's reader
        (r["id"], r["completion"], r["label"]) for r in rows]
    items = {r["id"]: r for r in items_of(out)}
    assert items["up"]["metadata"]["feedback"] is True and "feedback" not in items["unclear"]["metadata"]


def test_nothing_kept_exits_1_and_leaves_out_untouched(tmp_path: Path):
    log = tmp_path / "bad.jsonl"
    log.write_bytes(lines("not json", {"schemaType": "Other"}))
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    result = run(log, "--out", out)
    assert result.exit_code == 1
    assert out.read_text() == "previous\n" and "no item written" in result.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind
    with pytest.raises(UserError, match="log path not found"):
        run(tmp_path / "missing", "--out", out)


def test_ids_fall_back_to_file_and_line_and_stay_unique(tmp_path: Path):
    log = tmp_path / "2025-03-11.json.gz"
    log.write_bytes(gzip.compress(lines(bedrock(None, "q1"), bedrock("dup", "q2"), bedrock("dup", "q3"),
                                        bedrock("2025-03-11:1", "q4"))))
    out = tmp_path / "out.jsonl"
    run(log, "--out", out)
    assert [r["id"] for r in items_of(out)] == ["2025-03-11:1", "dup", "dup-2", "2025-03-11:1-2"]


def test_display_is_capped_but_the_report_has_every_line(tmp_path: Path):
    log = tmp_path / "noisy.jsonl"
    log.write_bytes(lines(bedrock("ok", "q"), *["{broken"] * 30))
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    result = run(log, "--out", out)
    assert len(re.findall(r"noisy\.jsonl:\d+: invalid JSON", result.stderr)) == 20
    assert "... and 10 more dropped lines (pass --report FILE.json" in result.stderr
    result = run(log, "--out", out, "--report", report)
    assert f"(all in {report})" in result.stderr
    got = json.loads(report.read_text())
    assert [d["line"] for d in got["drops"]] == list(range(2, 32)) and got["dropped_by_reason"] == {"invalid JSON": 30}


def test_cloudwatch_subscription_envelope(tmp_path: Path):
    envelope = {"messageType": "DATA_MESSAGE", "logGroup": "/aws/bedrock/modelinvocations", "logEvents": [
        {"id": "1", "timestamp": 1741683600000, "message": json.dumps(bedrock("ev1", "q1"))},
        {"id": "2", "timestamp": 1741683600001, "message": "{oops"},
        {"id": "3", "timestamp": 1741683600002, "message": json.dumps(bedrock("ev3", "q3"))}]}
    log = tmp_path / "firehose.gz"
    log.write_bytes(gzip.compress(lines(envelope)))
    out = tmp_path / "out.jsonl"
    result = run(log, "--out", out)
    assert [r["id"] for r in items_of(out)] == ["ev1", "ev3"]
    assert f"{log}:1[1]: invalid JSON" in result.stderr


def test_body_shapes():
    assert prompt_messages("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] 2+2? [/INST]") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"}]
    assert prompt_messages("\n\nHuman: 2+2?\n\nAssistant:") == [{"role": "user", "content": "2+2?"}]
    assert request_messages({"inputText": "2+2?"}) == [{"role": "user", "content": "2+2?"}]
    assert request_messages({"message": "and 3+3?", "preamble": "Be brief.", "chat_history": [
        {"role": "USER", "message": "2+2?"}, {"role": "CHATBOT", "message": "4"}]}) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]
    assert answer_text({"results": [{"outputText": "4"}]}) == "4" and answer_text({"outputs": [{"text": "4"}]}) == "4"
    stream = [{"type": "message_start", "message": {"content": []}},
              {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "ANS"}},
              {"contentBlockDelta": {"delta": {"text": "WER: 4"}}}, {"type": "message_stop"}]
    assert answer_text(stream) == "ANSWER: 4"
    assert answer_text({"output": {"message": {"content": [{"reasoningContent": {}}, {"text": "4"}]}}}) == "4"
    assert answer_text({"choices": [{"message": {"content": None, "tool_calls": []}}]}) is None


def test_example_logs_through_python_m_rftkit(tmp_path: Path):
    out = tmp_path / "prompts.jsonl"
    result = run_cli("data", "from-logs", "examples/logs", "--out", str(out), "--kto-out", str(tmp_path / "kto.jsonl"),
                     timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(items_of(out)) == 5 and len(read_jsonl(tmp_path / "kto.jsonl")) == 2
    assert "S3-only body" in result.stderr and "duplicate prompt" in result.stderr
    assert "kept 5, dropped 3" in result.stdout
    assert (REPO / "examples" / "logs" / "bedrock" / "2025-03-12-invoke.json.gz").read_bytes()[:2] == b"\x1f\x8b"

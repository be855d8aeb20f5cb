"""score_model / label_model against a real HTTP server on localhost, scripted per test."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rftkit.errors import ConfigError
from rftkit.graders import build_grader
from rftkit.graders.judge import LabelModelGrader, ScoreModelGrader
from rftkit.types import Item

ITEM = Item(id="q7", messages=[{"role": "user", "content": "What is 6*7?"}], reference_answer="42",
            metadata={"topic": "arithmetic"})


def chat(content, status=200, delay=0.0):
    """One scripted reply: an OpenAI chat completion carrying `content`, or a bare status."""
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]} if status == 200 \
        else {"error": {"message": f"scripted {status}"}}
    return status, json.dumps(body).encode(), delay


class Judge(ThreadingHTTPServer):
    """POST /v1/chat/completions: pops the next scripted reply (the last one repeats); records requests."""

    daemon_threads = True
    block_on_close = False  # a handler still sleeping for a timed-out client must not hold up the test

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list = [chat('{"score": 1}')]
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def next_reply(self):
        with self.lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def handle_error(self, request, client_address):  # a client that gave up (timeout test): not our concern
        pass

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status, payload, delay = self.server.next_reply()
        time.sleep(delay)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge():
    server = Judge()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


PROMPT = [
    {"role": "developer", "content": "Grade the answer from 0 to 1. Reply as JSON {\"score\": x}."},
    {"role": "user", "content": "Topic: {{item.topic}}. Reference: {{item.reference_answer}}. "
                                "Answer: {{sample.output_text}}"},
]


def score_grader(judge, **extra):
    spec = {"type": "score_model", "name": "judge", "model": "qwen-judge", "input": PROMPT, "range": [0, 1],
            "sampling_params": {"temperature": 0, "max_completions_tokens": 64}, "pass_threshold": 0.5,
            "base_url": judge.base_url, "max_attempts": 3, "timeout_s": 5, **extra}
    grader = build_grader(spec)
    grader.policy = dataclasses.replace(grader.policy, base_delay_s=0.001)  # keep retries fast in tests
    return grader


def test_score_model_sends_rendered_prompt_and_reads_score(judge):
    judge.script = [chat('{"score": 0.7}')]
    score = score_grader(judge).grade(ITEM, "6*7 = 42")
    assert score.reward == 0.7 and score.breakdown == {"score": 0.7, "passed": 1.0}  # 0.7 >= 0.5
    [request] = judge.requests
    assert request["path"] == "/v1/chat/completions"
    body = request["body"]
    assert body["model"] == "qwen-judge" and body["temperature"] == 0 and body["max_tokens"] == 64
    assert [m["role"] for m in body["messages"]] == ["system", "user"]  # developer is sent as system
    assert body["messages"][1]["content"] == "Topic: arithmetic. Reference: 42. Answer: 6*7 = 42"


@pytest.mark.parametrize(
    "reply,reward",
    [
        ('{"score": 0.7}', 0.7),
        ('{"result": 1}', 1.0),
        ("0.25", 0.25),
        ("Score: 0.9 - the answer is right", 0.9),  # the first number in the text
        ("<think>maybe 5 points</think>\n0.4", 0.4),  # reasoning blocks are dropped first
        ('```json\n{"score": 0.3}\n```', 0.3),
        ('Here is my grade: {"score": 0.6, "why": "partly right"}', 0.6),
    ],
)
def test_score_model_reply_formats(judge, reply, reward):
    judge.script = [chat(reply)]
    assert score_grader(judge).grade(ITEM, "42").reward == reward


@pytest.mark.parametrize(
    "reply,error",
    [
        ("I cannot tell.", "model_grader_parse_error: no score in the judge's reply"),
        ("1.5", "model_grader_parse_error: score 1.5 outside range [0, 1]"),
        ('{"score": -0.1}', "model_grader_parse_error: score -0.1 outside range [0, 1]"),
        ('{"verdict": "good"}', "model_grader_parse_error: JSON reply has no `score` or `result`"),
        ('{"score": "high"}', "model_grader_parse_error: score 'high' is not a number"),
        (None, "model_grader_parse_error: the judge's reply has no text content"),
    ],
)
def test_score_model_garbage_is_a_failed_score_not_a_crash(judge, reply, error):
    judge.script = [chat(reply)]
    score = score_grader(judge).grade(ITEM, "42")
    assert score.reward is None and score.error.startswith(error)


def test_score_model_keeps_the_raw_score_of_a_wider_range(judge):
    judge.script = [chat("7/10")]
    score = score_grader(judge, range=[0, 10], pass_threshold=8).grade(ITEM, "42")
    assert score.reward == 7.0 and score.breakdown == {"score": 7.0, "passed": 0.0}  # raw, not 0.7; 7 < 8


def test_refusal_flag(judge):
    judge.script = [(200, json.dumps({"choices": [{"message": {"content": None, "refusal": "I can't"}}]}).encode(), 0)]
    assert score_grader(judge).grade(ITEM, "42").error == "model_grader_refusal_error: I can't"


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_error_then_success_is_retried(judge, status):
    judge.script = [chat(None, status=status), chat('{"score": 0.8}')]
    score = score_grader(judge).grade(ITEM, "42")
    assert score.reward == 0.8 and len(judge.requests) == 2  # one retry


def test_client_error_is_not_retried(judge):
    judge.script = [chat(None, status=400)]
    score = score_grader(judge).grade(ITEM, "42")
    assert score.reward is None and score.error.startswith("model_grader_server_error: HTTP 400")
    assert len(judge.requests) == 1


def test_dead_judge_opens_the_breaker_and_later_calls_fail_fast(judge):
    judge.script = [chat(None, status=500)]
    grader = score_grader(judge, max_attempts=2)
    scores = [grader.grade(ITEM, "42") for _ in range(5)]
    assert all(s.reward is None and s.error.startswith("model_grader_server_error") for s in scores)
    # breaker threshold 5 consecutive failures: calls 1 and 2 make 2 attempts each (4), call 3's first
    # attempt is the 5th failure and opens it, so its retry and calls 4-5 never reach the server: 5, not 10
    assert len(judge.requests) == 5
    assert "circuit open" in scores[2].error and "circuit open" in scores[4].error
    assert grader.breaker.state == "open"


def test_slow_judge_times_out(judge):
    judge.script = [chat('{"score": 1}', delay=1.5)]
    grader = score_grader(judge, timeout_s=0.2, max_attempts=1)
    start = time.monotonic()
    score = grader.grade(ITEM, "42")
    assert time.monotonic() - start < 1.0  # bounded by timeout_s, not by the server
    assert score.reward is None and score.error.startswith("model_grader_server_error") and "timed out" in score.error


def test_unreachable_judge_fails_fast(judge):
    judge.shutdown()
    judge.server_close()  # nothing listens on that port any more
    grader = score_grader(judge, max_attempts=2)
    start = time.monotonic()
    score = grader.grade(ITEM, "42")
    took = time.monotonic() - start
    assert score.reward is None and score.error.startswith("model_grader_server_error")
    assert took < 3.0 and took < grader.timeout_s / 4, took  # refused connections: two quick tries, not two timeouts


def test_authorization_header_from_api_key_env(judge, monkeypatch):
    monkeypatch.setenv("RFT_TEST_JUDGE_KEY", "sk-local-123")
    score_grader(judge, api_key_env="RFT_TEST_JUDGE_KEY").grade(ITEM, "42")
    monkeypatch.delenv("RFT_TEST_JUDGE_KEY")
    score_grader(judge, api_key_env="RFT_TEST_JUDGE_KEY").grade(ITEM, "42")  # unset: no header, still works
    assert judge.requests[0]["headers"]["Authorization"] == "Bearer sk-local-123"
    assert "Authorization" not in judge.requests[1]["headers"]


def label_grader(judge):
    return build_grader({"type": "label_model", "name": "verdict", "model": "qwen-judge", "base_url": judge.base_url,
                         "input": [{"role": "user", "content": [
                             {"type": "input_text", "text": "Is '{{sample.output_text}}' right for {{item.id}}? "},
                             {"type": "input_text", "text": "Say correct or incorrect."}]}],
                         "labels": ["correct", "incorrect"], "passing_labels": ["correct"]})


@pytest.mark.parametrize(
    "reply,reward",
    [
        ("correct", 1.0),
        ("Incorrect", 0.0),  # case-insensitive
        ('{"label": "CORRECT"}', 1.0),
        ('"correct".', 1.0),  # quotes and a full stop are stripped
        ("<think>it says 42, so</think>\ncorrect", 1.0),
        ("probably correct", None),  # not exactly a label: parse error, not a guess
    ],
)
def test_label_model(judge, reply, reward):
    judge.script = [chat(reply)]
    score = label_grader(judge).grade(ITEM, "42")
    assert score.reward == reward
    if reward is None:
        assert score.error.startswith("model_grader_parse_error") and "['correct', 'incorrect']" in score.error
    else:
        assert score.breakdown == {"passed": reward}
    # text content parts are joined into one string message
    assert judge.requests[0]["body"]["messages"] == [
        {"role": "user", "content": "Is '42' right for q7? Say correct or incorrect."}]


def test_executor_facing_attributes():
    grader = ScoreModelGrader(model="m", input=[{"role": "user", "content": "{{sample.output_text}}"}],
                              timeout_s=2, max_attempts=3, concurrency=4)
    # deadline: 3 attempts * 2 s + the longest backoffs 0.2 + 0.4 s + 1 s to parse = 7.6 s
    assert grader.concurrency == 4 and grader.deadline_s == pytest.approx(7.6)
    assert grader.needs_reference is False
    labels = LabelModelGrader(model="m", input=[{"role": "user", "content": "{{item.reference_answer}}"}],
                              labels=["a", "b"], passing_labels=["a"])
    assert labels.needs_reference is True and labels.concurrency == 8
    assert labels.check_item(Item(id="r", messages=[], reference_answer=None)) == []  # None is a value
    assert grader.check_item(ITEM) == []
    missing = ScoreModelGrader(model="m", input=[{"role": "user", "content": "{{item.topic}}"}])
    assert missing.check_item(Item(id="r", messages=[])) == [
        "input[0].content: invalid_variable_error: {{item.topic}} is missing (no 'topic') in row 'r'"]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"range": [1, 0]}, r"range: must be \[low, high\] with low < high"),
        ({"input": []}, "input: must be a non-empty list"),
        ({"input": [{"role": "tool", "content": "x"}]}, r"input\[0\].role: unknown role 'tool'"),
        ({"input": [{"role": "user", "content": "{{answer}}"}]}, r"input\[0\].content: bad template variable"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         r"input\[0\].content: only text content parts"),
        ({"base_url": "localhost:8000"}, "base_url: must be an http"),
        ({"timeout_s": 0}, "timeout_s: must be a positive number"),
        ({"max_attempts": 0}, "max_attempts: must be a positive integer"),
        ({"concurrency": 1.5}, "concurrency: must be a positive integer"),
        ({"sampling_params": "hot"}, "sampling_params: must be a mapping"),
        ({"temperature": 0}, "bad options"),  # sampling belongs in sampling_params
    ],
)
def test_score_model_config_errors(change, message):
    spec = {"type": "score_model", "model": "m", "input": PROMPT, **change}
    with pytest.raises(ConfigError, match=message):
        build_grader(spec, where="graders.judge")


def test_label_model_config_errors():
    base = {"type": "label_model", "model": "m", "input": PROMPT, "labels": ["yes", "no"]}
    with pytest.raises(ConfigError, match=r"passing_labels: must be a non-empty list drawn from labels"):
        build_grader({**base, "passing_labels": ["maybe"]})
    with pytest.raises(ConfigError, match="labels: must differ ignoring case"):
        build_grader({**base, "labels": ["Yes", "yes"], "passing_labels": ["yes"]})
    with pytest.raises(ConfigError, match="bad options"):  # passing_labels is required
        build_grader(base)


def test_multi_with_a_judge_child_through_the_executor(judge):
    from rftkit.graders.executor import ThreadGraderExecutor
    from rftkit.types import Completion, Group

    judge.script = [chat('{"score": 0.6}'), chat("no idea")]  # first call scores 0.6, every later one is garbage
    grader = build_grader({"type": "multi", "name": "mix", "calculate_output": "0.5 * judge + 0.5 * exact", "graders": {
        "judge": {"type": "score_model", "model": "m", "input": PROMPT, "base_url": judge.base_url},
        "exact": {"type": "string_check", "operation": "like"}}})
    group = Group(item=ITEM, prompt_ids=[1], completions=[Completion("6*7 = 42", [1], [], "stop")])
    scores, _ = ThreadGraderExecutor(grader, timeout_s=5, workers=2).score([group])
    # judge 0.6, "42" in "6*7 = 42" -> 1; 0.5 * 0.6 + 0.5 * 1 = 0.8
    score = scores[0][0]
    assert score.reward == pytest.approx(0.8) and score.breakdown == {"judge": 0.6, "exact": 1.0, "judge/score": 0.6}
    group = Group(item=ITEM, prompt_ids=[1], completions=[Completion("42", [1], [], "stop")])
    scores, _ = ThreadGraderExecutor(grader, timeout_s=5, workers=2).score([group])
    assert scores[0][0].error.startswith("model_grader_parse_error: graders.judge: no score")

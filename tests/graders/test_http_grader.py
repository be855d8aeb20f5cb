"""The `http` grader (Nova reward-Lambda protocol) against real HTTP servers on localhost.

Two kinds of server: the example reward server (examples/reward_server/server.py), and a
scripted one that answers each request from a list of steps (a status, a body, a delay)
and records what it saw: payloads, headers, request count, most requests in flight at once.
"""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rftkit.errors import ConfigError
from rftkit.graders import build_grader, load_grader_spec
from rftkit.graders.http import PARSE_ERROR, SERVER_ERROR, UNRESPONSIVE, HttpGrader
from rftkit.types import Item

REPO = Path(__file__).resolve().parents[2]
SERVER_PY = REPO / "examples" / "reward_server" / "server.py"
_spec = importlib.util.spec_from_file_location("reward_server_example", SERVER_PY)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


def item(i: int, answer: str = "42", **meta) -> Item:
    return Item(id=f"q{i}", messages=[{"role": "user", "content": f"question {i}"}], reference_answer=answer, metadata=meta)


def result(sample_id: str, score, metrics=()) -> dict:
    return {"id": sample_id, "aggregate_reward_score": score, "metrics_list": list(metrics)}


class Script:
    """What the scripted server does, step by step; after the last step it grades like the example server.

    A step is (status, body, delay_s): body is bytes (sent as is), a callable(samples) -> JSON
    value, or a JSON value; None for the example server's own answer.
    """

    def __init__(self, *steps, delay_s: float = 0.0):
        self.steps, self.delay_s = list(steps), delay_s
        self.payloads: list[list[dict]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    @property
    def requests(self) -> int:
        return len(self.payloads)

    def next_step(self):
        with self.lock:
            return self.steps.pop(0) if self.steps else (200, None, self.delay_s)


def scripted_handler(script: Script):
    class Handler(example.RewardHandler):
        def do_POST(self):
            samples = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.payloads.append(samples)
                script.headers.append(dict(self.headers))
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            try:
                status, body, delay = script.next_step()
                time.sleep(delay)
                if body is None:
                    body = example.lambda_handler(samples, None)
                elif callable(body):
                    body = body(samples)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
            finally:
                with script.lock:
                    script.in_flight -= 1
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def serve():
    """serve(script) -> url of a scripted server in a thread; serve() -> the example server."""
    servers, graders = [], []

    def start(script: Script | None = None, idle_timeout: float | None = None) -> str:
        handler = scripted_handler(script) if script else example.RewardHandler
        if idle_timeout is not None:
            handler = type("IdleHandler", (handler,), {"timeout": idle_timeout})
        server = example.make_server(port=0, handler=handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/grade"

    start.graders = graders
    yield start
    for grader in graders:
        grader.close()
    for server in servers:
        server.shutdown()
        server.server_close()


def grader(serve, url: str, **options) -> HttpGrader:
    g = build_grader({"type": "http", "url": url, **options})
    serve.graders.append(g)
    return g


# --- protocol -------------------------------------------------------------------------------


def test_rewards_of_a_batch_by_hand(serve):
    g = grader(serve, serve(), batch_size=8)
    calls = [(item(0), "6 * 7 = 42. ANSWER: 42"), (item(1), "ANSWER: 41"), (item(2), "forty-two"),
             (item(3, "-5"), "ANSWER: 3 no, ANSWER: -5.0"), (item(4), "")]
    scores = g.grade_batch(calls)
    assert [s.reward for s in scores] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert [s.breakdown for s in scores] == [{"correct": c, "response_chars": float(len(t))}
                                              for c, (_, t) in zip([1.0, 0, 0, 1.0, 0], calls)]
    assert all(s.error is None for s in scores)
    assert g.grade(item(9), "ANSWER: 42").reward == 1.0


def test_request_shape_and_unique_ids(serve):
    script = Script()
    g = grader(serve, serve(script), batch_size=4)
    same = item(7, difficulty="easy")
    g.grade_batch([(same, "ANSWER: 42"), (same, "ANSWER: 1")])  # two samples of one item
    (payload,) = script.payloads
    assert [s["id"] for s in payload] == ["q7#0", "q7#1"]
    assert payload[0]["messages"] == [{"role": "user", "content": "question 7"}, {"role": "assistant", "content": "ANSWER: 42"}]
    assert payload[1]["messages"][-1] == {"role": "assistant", "content": "ANSWER: 1"}
    assert payload[0]["reference_answer"] == "42"
    assert payload[0]["metadata"] == {"difficulty": "easy", "reference_answer": "42"}  # both places AWS documents
    assert script.headers[0]["Content-Type"] == "application/json"


def test_batching_sends_ceil_n_over_batch_size_requests(serve):
    script = Script()
    g = grader(serve, serve(script), batch_size=4)
    scores = g.grade_batch([(item(i, str(i)), f"ANSWER: {i if i % 2 else -1}") for i in range(10)])
    assert script.requests == math.ceil(10 / 4)
    assert [len(p) for p in script.payloads] == [4, 4, 2]
    assert [s.reward for s in scores] == [float(i % 2) for i in range(10)]


def test_executor_sends_batch_size_samples_per_call(serve):
    from rftkit.graders.executor import ThreadGraderExecutor

    script = Script()
    g = grader(serve, serve(script), batch_size=3, concurrency=2)
    executor = ThreadGraderExecutor(g, timeout_s=5.0)
    scores, stats = executor.grade_calls([(item(i), "ANSWER: 42" if i < 5 else "ANSWER: 0") for i in range(7)])
    assert [s.reward for s in scores] == [1.0] * 5 + [0.0] * 2
    assert sorted(len(p) for p in script.payloads) == [1, 3, 3] and stats.errors == 0


def test_reward_is_the_aggregate_and_every_metric_is_logged(serve):
    def answer(samples):
        return [result(s["id"], 0.25, [{"name": "accuracy", "value": 1.0, "type": "Reward"},
                                        {"name": "length_ok", "value": 0, "type": "Metric"},
                                        {"name": "untyped", "value": 3}]) for s in samples]

    g = grader(serve, serve(Script((200, answer, 0))))
    score = g.grade(item(0), "whatever")
    assert score.reward == 0.25  # not 1.0 (the Reward entry) nor any sum: aggregate_reward_score only
    assert score.breakdown == {"accuracy": 1.0, "length_ok": 0.0, "untyped": 3.0}


def test_lambda_proxy_wrapper_is_unwrapped(serve):
    ok = lambda samples: {"statusCode": 200, "body": json.dumps([result(s["id"], 0.5) for s in samples])}
    g = grader(serve, serve(Script((200, ok, 0), (200, {"statusCode": 502, "body": "upstream died"}, 0))), max_attempts=1)
    assert g.grade(item(0), "x").reward == 0.5
    failed = g.grade(item(0), "x")
    assert failed.reward is None and failed.error.startswith(SERVER_ERROR) and "502" in failed.error


def test_example_lambda_handler_runs_both_ways():
    sample = {"id": "a", "messages": [{"role": "assistant", "content": "ANSWER: 7"}], "metadata": {"reference_answer": "7"}}
    direct = example.lambda_handler([sample], None)  # how Nova RFT invokes it
    via_url = example.lambda_handler({"body": json.dumps([sample]), "isBase64Encoded": False}, None)  # Function URL
    assert direct == via_url == [result("a", 1.0, [{"name": "correct", "value": 1.0, "type": "Reward"},
                                                   {"name": "response_chars", "value": 9, "type": "Metric"}])]
    assert example.lambda_handler([{"id": "b", "messages": []}], None) == []  # cannot grade: left out


def test_example_server_runs_as_a_script():
    proc = subprocess.Popen([sys.executable, str(SERVER_PY), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on http://" in line, line
        g = HttpGrader(url=line.split()[-1])
        assert g.grade(item(0), "ANSWER: 42").reward == 1.0
        g.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_grader_yaml_example_builds():
    g = build_grader(load_grader_spec(str(REPO / "examples" / "reward_server" / "grader.yaml")))
    assert (g.name, g.url, g.batch_size, g.concurrency) == ("arith_http", "http://127.0.0.1:8080/", 8, 32)


# --- bad answers fail samples, never raise ----------------------------------------------------


@pytest.mark.parametrize("body,why", [
    (b"<html>oops</html>", "not JSON"),
    ({"results": []}, "expected a JSON array"),
    (b"", "not JSON"),
])
def test_malformed_response_fails_every_sample(serve, body, why):
    script = Script((200, body, 0))
    g = grader(serve, serve(script))
    scores = g.grade_batch([(item(0), "a"), (item(1), "b")])
    assert all(s.reward is None and s.error.startswith(PARSE_ERROR) and why in s.error for s in scores)
    assert script.requests == 1  # a 200 with a bad body is a bug, not a blip: no retry


def test_missing_ids_fail_only_those_samples(serve):
    g = grader(serve, serve(Script((200, lambda samples: [result(samples[1]["id"], 0.75)], 0))))
    first, second, third = g.grade_batch([(item(0), "a"), (item(1), "b"), (item(2), "c")])
    assert second.reward == 0.75
    for s, sid in ((first, "q0#0"), (third, "q2#2")):
        assert s.reward is None and s.error == f"{PARSE_ERROR}: no result for id {sid!r} in the response"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", None, True])
def test_non_numeric_or_nan_scores_fail_the_sample(serve, bad):
    def answer(samples):
        return [result(samples[0]["id"], bad), result(samples[1]["id"], 1)]

    body = lambda samples: json.dumps(answer(samples)).encode()  # json.dumps writes NaN/Infinity literals
    first, second = grader(serve, serve(Script((200, body, 0)))).grade_batch([(item(0), "a"), (item(1), "b")])
    assert first.reward is None and first.error.startswith(PARSE_ERROR) and "aggregate_reward_score" in first.error
    assert second.reward == 1.0


def test_bad_metric_entry_fails_the_sample(serve):
    answer = lambda samples: [result(s["id"], 1.0, [{"name": "x", "value": "high", "type": "Metric"}]) for s in samples]
    score = grader(serve, serve(Script((200, answer, 0)))).grade(item(0), "a")
    assert score.reward is None and "bad metrics_list entry" in score.error


# --- retries, deadlines, circuit breaker ------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_error_then_success_is_retried(serve, status):
    script = Script((status, {"error": "busy"}, 0))
    score = grader(serve, serve(script), max_attempts=3).grade(item(0), "ANSWER: 42")
    assert score.reward == 1.0 and script.requests == 2


def test_persistent_5xx_fails_after_max_attempts(serve):
    script = Script(*[(500, {"error": "down"}, 0)] * 5)
    score = grader(serve, serve(script), max_attempts=3).grade(item(0), "ANSWER: 42")
    assert script.requests == 3
    assert score.reward is None and score.error.startswith(f"{SERVER_ERROR}: HTTP 500") and "after 3 attempts" in score.error


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_4xx_is_not_retried(serve, status):
    script = Script((status, {"error": "bad request"}, 0))
    g = grader(serve, serve(script), max_attempts=3)
    scores = g.grade_batch([(item(0), "a"), (item(1), "b")])
    assert script.requests == 1
    assert all(s.reward is None and s.error.startswith(f"{SERVER_ERROR}: HTTP {status}") for s in scores)
    assert "bad request" in scores[0].error
    assert g.breaker.state == "closed"  # the endpoint answered: a client error does not trip the breaker


def test_timeouts_end_within_the_deadline(serve):
    script = Script(delay_s=3.0)
    g = grader(serve, serve(script), timeout_s=0.3, max_attempts=3)
    start = time.monotonic()
    score = g.grade(item(0), "ANSWER: 42")
    elapsed = time.monotonic() - start
    assert score.reward is None and score.error.startswith(f"{UNRESPONSIVE}: no answer ")  # within 0.3s (timeout_s)
    assert script.requests == 3 and elapsed < g.deadline_s + 0.5  # + scheduling on a loaded machine; the server: 9 s


def test_an_explicit_deadline_cuts_the_attempt_short(serve):
    g = grader(serve, serve(Script(delay_s=3.0)), timeout_s=10, deadline_s=0.6)
    start = time.monotonic()
    score = g.grade(item(0), "x")
    assert time.monotonic() - start < 0.6 + 0.9  # near the deadline (plus scheduling), far from the server's 3 s
    assert score.reward is None and score.error.startswith(f"{UNRESPONSIVE}: no answer before the deadline (0.6s")


def test_connection_refused_is_unresponsive(serve):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = grader(serve, f"http://127.0.0.1:{port}/", max_attempts=2)
    scores = g.grade_batch([(item(0), "a"), (item(1), "b")])
    assert all(s.reward is None and s.error.startswith(f"{UNRESPONSIVE}: connection refused") for s in scores)


def test_circuit_breaker_opens_fails_fast_then_half_opens(serve):
    script = Script(*[(503, {"error": "down"}, 0)] * 3)  # down for 3 requests, healthy afterwards
    g = grader(serve, serve(script), max_attempts=1, breaker_failures=3, breaker_reset_s=0.5)
    for _ in range(3):
        assert g.grade(item(0), "ANSWER: 42").error.startswith(SERVER_ERROR)
    assert g.breaker.state == "open" and script.requests == 3
    start = time.monotonic()
    fast = [g.grade(item(0), "ANSWER: 42") for _ in range(20)]
    assert time.monotonic() - start < 1.0 and script.requests == 3  # refused without calling (20 calls)
    assert all(s.reward is None and s.error.startswith(f"{UNRESPONSIVE}: circuit open") for s in fast)
    time.sleep(0.6)
    assert g.breaker.state == "half_open"
    assert g.grade(item(0), "ANSWER: 42").reward == 1.0  # the trial request succeeds and closes it
    assert script.requests == 4 and g.breaker.state == "closed"


def test_half_open_lets_one_trial_through(serve):
    script = Script(*[(503, {}, 0)] * 2, (200, None, 0.3))  # the trial request is slow
    g = grader(serve, serve(script), max_attempts=1, breaker_failures=2, breaker_reset_s=0.2, concurrency=8)
    for _ in range(2):
        g.grade(item(0), "ANSWER: 42")
    time.sleep(0.3)
    out = [None] * 6
    threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, g.grade(item(k), "ANSWER: 42"))) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert script.requests == 3  # one trial, the other five refused at once
    assert sum(s.reward == 1.0 for s in out) == 1
    assert sum(s.error is not None and "trial request is already in flight" in s.error for s in out) == 5


def test_server_closing_idle_keepalive_connections_is_not_a_failure(serve):
    script = Script()
    g = grader(serve, serve(script, idle_timeout=0.2), max_attempts=1)
    assert g.grade(item(0), "ANSWER: 42").reward == 1.0
    time.sleep(0.5)  # the server drops the idle connection; the grader redials once
    assert g.grade(item(0), "ANSWER: 42").reward == 1.0
    assert script.requests == 2


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrency_limit_is_honoured(serve):
    script = Script(delay_s=0.1)
    g = grader(serve, serve(script), concurrency=3, batch_size=1)
    scores = [None] * 12
    threads = [threading.Thread(target=lambda k=k: scores.__setitem__(k, g.grade(item(k), "ANSWER: 42"))) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s.reward == 1.0 for s in scores) and script.requests == 12
    assert 2 <= script.max_in_flight <= 3


def test_headers_read_environment_variables(serve, monkeypatch):
    monkeypatch.setenv("REWARD_TOKEN", "s3cret")
    script = Script()
    g = grader(serve, serve(script), headers={"Authorization": "Bearer ${REWARD_TOKEN}", "X-Team": "rl"})
    g.grade(item(0), "ANSWER: 42")
    assert script.headers[0]["Authorization"] == "Bearer s3cret" and script.headers[0]["X-Team"] == "rl"
    assert "s3cret" not in repr(g)


# --- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("options,field", [
    ({"url": "ftp://host/"}, "url"),
    ({"url": "localhost:8080"}, "url"),
    ({"url": "http:///path"}, "url"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": "10"}, "timeout_s"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"concurrency": -1}, "concurrency"),
    ({"breaker_failures": 0}, "breaker_failures"),
    ({"breaker_reset_s": -1}, "breaker_reset_s"),
    ({"deadline_s": 0}, "deadline_s"),
    ({"headers": ["a"]}, "headers"),
    ({"headers": {"Authorization": "Bearer ${RFTKIT_SURELY_UNSET_VAR}"}}, "headers.Authorization"),
])
def test_bad_options_are_config_errors_naming_the_field(options, field):
    spec = {"type": "http", "url": "http://127.0.0.1:8080/", **options}
    with pytest.raises(ConfigError, match=rf"grader: {field}: "):
        build_grader(spec)


def test_defaults():
    g = build_grader({"type": "http", "url": "https://example.com/reward?v=1"})
    assert (g.max_attempts, g.concurrency, g.batch_size, g.timeout_s, g.needs_reference) == (3, 32, 8, 10.0, True)
    assert g.deadline_s >= 3 * 10.0  # every attempt gets its full timeout by default
    with pytest.raises(ConfigError, match="bad options"):
        build_grader({"type": "http"})  # url is required

"""An example reward server for the arithmetic task, speaking the Amazon Nova reward-Lambda protocol.

Copy it and replace `grade_sample`. The same file runs two ways:

- as an HTTP server for rftkit's `http` grader (standard library only):
      python examples/reward_server/server.py --port 8080 [--latency-ms 100]
- as an AWS Lambda function (handler `server.lambda_handler`) for Nova RFT / SageMaker RFT,
  or for rftkit through a Lambda Function URL.

Protocol: the request is a JSON array of samples,
    [{"id": "q-17#0", "messages": [..., {"role": "assistant", "content": "... ANSWER: 42"}],
      "reference_answer": "42", "metadata": {...}}]
and the answer one result per id,
    [{"id": "q-17#0", "aggregate_reward_score": 1.0,
      "metrics_list": [{"name": "correct", "value": 1.0, "type": "Reward"},
                       {"name": "response_chars", "value": 14, "type": "Metric"}]}]
`aggregate_reward_score` is the reward; `metrics_list` entries are logged (a `Reward` entry is
a component of the reward, a `Metric` is for monitoring only).

A sample this server cannot grade (no assistant turn, no numeric reference answer) is left
out of the answer: rftkit then masks it out of the loss instead of training on a made-up 0.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER_RE = re.compile(r"ANSWER:\s*([-+]?\d+(?:\.\d+)?)")


def grade_sample(sample: dict) -> dict | None:
    """The result object for one sample, or None when it cannot be graded. Replace this for your task."""
    messages = sample.get("messages") or []
    if not messages or messages[-1].get("role") != "assistant":
        return None
    text = messages[-1].get("content") or ""
    # AWS documents the reference both at top level and under metadata; accept either
    reference = sample.get("reference_answer")
    if reference is None:
        reference = (sample.get("metadata") or {}).get("reference_answer")
    try:
        expected = float(str(reference).strip())
    except ValueError:
        return None
    found = ANSWER_RE.findall(text)  # the last `ANSWER: <n>` counts
    correct = float(bool(found) and abs(float(found[-1]) - expected) < 1e-6)
    return {
        "id": sample["id"],
        "aggregate_reward_score": correct,
        "metrics_list": [
            {"name": "correct", "value": correct, "type": "Reward"},
            {"name": "response_chars", "value": len(text), "type": "Metric"},
        ],
    }


def lambda_grader(samples: list[dict]) -> list[dict]:
    results = []
    for sample in samples:
        result = grade_sample(sample) if isinstance(sample, dict) and "id" in sample else None
        if result is None:
            print(f"cannot grade sample {str(sample)[:200]}", file=sys.stderr)
        else:
            results.append(result)
    return results


def lambda_handler(event, context):
    """AWS Lambda entry point. Nova RFT invokes it with the bare list of samples; a Function URL
    or API Gateway wraps the request as {"body": "<json>"}, and a list returned to a Function URL
    goes back as the JSON body."""
    if isinstance(event, dict) and "body" in event:
        body = event["body"]
        if event.get("isBase64Encoded"):
            import base64

            body = base64.b64decode(body)
        event = json.loads(body)
    return lambda_grader(event)


class RewardHandler(BaseHTTPRequestHandler):
    """POST /: a batch of samples in, results out. GET /health: 200."""

    protocol_version = "HTTP/1.1"  # keep-alive: one TCP connection per client thread, not per request
    disable_nagle_algorithm = True  # headers and body go out in separate writes; don't let Nagle hold the body
    latency_s = 0.0  # --latency-ms, to stand in for a slow grader when benchmarking
    timeout = 120  # an idle keep-alive connection is closed after this many seconds

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            samples = json.loads(self.rfile.read(length))
            if not isinstance(samples, list):
                raise ValueError("expected a JSON array of samples")
        except ValueError as exc:  # JSONDecodeError included
            self._reply(400, {"error": f"bad request: {exc}"})
            return
        if self.latency_s:
            time.sleep(self.latency_s)
        self._reply(200, lambda_handler(samples, None))

    def do_GET(self) -> None:
        self._reply(200, {"status": "ok"}) if self.path.rstrip("/") in ("", "/health") else self._reply(404, {})

    def _reply(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))  # required for keep-alive
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # one line per request is too much at 300 requests/s
        pass


class RewardServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops SYNs when 32 clients connect at once (1 s retransmit)

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client gave up (its timeout) or went away: nothing to report
        super().handle_error(request, client_address)


def make_server(host: str = "127.0.0.1", port: int = 8080, latency_ms: float = 0.0,
                handler: type[BaseHTTPRequestHandler] = RewardHandler) -> RewardServer:
    """A server bound to (host, port); port 0 picks a free one (`server.server_address[1]`)."""
    handler_cls = type("Handler", (handler,), {"latency_s": latency_ms / 1000.0})
    return RewardServer((host, port), handler_cls)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="sleep this long per request")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, args.latency_ms)
    host, port = server.server_address[:2]
    print(f"reward server listening on http://{host}:{port}/", flush=True)  # bench/ and tests read this line
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

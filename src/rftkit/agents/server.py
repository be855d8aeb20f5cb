"""An OpenAI-compatible chat endpoint served from the policy during rollouts, recording every token.

Black-box agents (agents/agent.py) drive their own loop with the official `openai` client;
each episode gets its own base URL, `http://127.0.0.1:PORT/ep/<episode>/v1`, and POSTs
`/chat/completions` there. Requests of all episodes are pooled: the batcher waits until every
live episode has a request in (or `batch_window_s` has passed since the first) and generates
them in one `Engine.generate_from_ids` call, as the tools rollout does.

Token in, token out: the server keeps, per episode, the ids of the conversation so far and
the messages they stand for. A request whose messages extend those (the agent sent back the
replies it got, then new tool results or user turns) continues the same ids: only the new
messages are templated (models/chat.py `observation_ids`, mask 0), then the reply is
sampled (mask 1). A request that rewrites the history starts a new segment from its own
template; the episode keeps its last segment and counts `agent_resets`. Replies carry
parsed `tool_calls` (Hermes format, agents/toolcall.py) and `finish_reason`
`tool_calls`/`stop`/`length`. Sampling uses the run's settings (the loss assumes them):
a request's `temperature` is ignored, its `max_tokens` caps the reply.

Standard library HTTP (ThreadingHTTPServer on 127.0.0.1, an ephemeral port): it is reached
only from this process's agents. Every wait is bounded (`request_timeout_s`).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rftkit.agents.toolcall import parse_turn
from rftkit.models.chat import conversation_ids, observation_ids
from rftkit.rollout.base import SamplingParams
from rftkit.types import Completion

MAX_BODY = 8 << 20


@dataclass
class Segment:
    prompt_ids: list[int]
    known: list[tuple]  # the normalised messages the ids stand for
    messages: list[dict[str, Any]]  # those messages as the agent sent them, plus the replies
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    prompt_len: int = 0  # messages[:prompt_len] are the segment's prompt


@dataclass
class Recording:
    """Everything one episode asked and got."""

    segments: list[Segment] = field(default_factory=list)
    requests: int = 0
    resets: int = 0
    length_cuts: int = 0
    entropy: float = 0.0
    version: int = 0
    has_logprobs: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)  # an agent may send requests in parallel


@dataclass
class _Pending:
    episode: str
    context: list[int]
    max_new_tokens: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Completion | None = None
    error: str | None = None


def _normal(message: dict[str, Any]) -> tuple:
    calls = tuple((c.get("function", {}).get("name"), _args(c.get("function", {}).get("arguments")))
                  for c in message.get("tool_calls") or [])
    return (message.get("role"), message.get("content") or "", calls, message.get("tool_call_id"))


def _args(arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return arguments
    return json.dumps(arguments, sort_keys=True)


class PolicyServer:
    """Serves `engine` (an Engine) to agents; `episode(id)` gives the base URL, `recording(id)` what it saw."""

    def __init__(self, engine, tokenizer, sampling: SamplingParams, batch_window_s: float = 0.05,
                 request_timeout_s: float = 300.0, limits=None):
        self.engine, self.tokenizer, self.sampling, self.limits = engine, tokenizer, sampling, limits  # Limits or None
        self.batch_window_s, self.request_timeout_s = batch_window_s, request_timeout_s
        self.recordings: dict[str, Recording] = {}
        self.live: set[str] = set()  # episodes whose agent is still running
        self._lock = threading.Condition()
        self._pending: list[_Pending] = []
        self._closed = False
        self.batches: list[int] = []  # rows per generate call (for tests and the benchmark)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                server._handle(self)

            def log_message(self, *args):  # no access log on stderr
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 4096  # every episode connects at once (the default backlog of 5 refuses them)
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self._threads = [threading.Thread(target=self.httpd.serve_forever, daemon=True, name="rftkit-agent-http"),
                         threading.Thread(target=self._batch_loop, daemon=True, name="rftkit-agent-batcher")]
        for thread in self._threads:
            thread.start()

    # ---- episodes ----------------------------------------------------------------------
    def open_episode(self) -> str:
        episode = uuid.uuid4().hex[:12]
        with self._lock:
            self.recordings[episode] = Recording()
            self.live.add(episode)
        return episode

    def base_url(self, episode: str) -> str:
        return f"http://127.0.0.1:{self.port}/ep/{episode}/v1"

    def close_episode(self, episode: str) -> None:
        with self._lock:
            self.live.discard(episode)
            self._lock.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for pending in self._pending:
                pending.error = "the policy server closed"
                pending.done.set()
            self._pending.clear()
            self._lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- one request -------------------------------------------------------------------
    def _handle(self, http: BaseHTTPRequestHandler) -> None:
        parts = http.path.strip("/").split("/")
        if len(parts) != 5 or parts[0] != "ep" or parts[2:] != ["v1", "chat", "completions"]:
            return _reply(http, 404, {"error": {"message": f"no such endpoint: {http.path}"}})
        episode = parts[1]
        if episode not in self.recordings:
            return _reply(http, 404, {"error": {"message": f"unknown episode {episode}"}})
        try:
            size = int(http.headers.get("Content-Length") or 0)
            if size > MAX_BODY:
                return _reply(http, 413, {"error": {"message": "request too large"}})
            body = json.loads(http.rfile.read(size))
            messages, tools = body["messages"], body.get("tools")
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise ValueError("messages must be a list of objects")
        except (ValueError, KeyError, TypeError) as exc:
            return _reply(http, 400, {"error": {"message": f"bad request: {exc}"}})
        try:
            with self.recordings[episode].lock:
                context, segment = self._context(episode, messages, tools)
        except Exception as exc:  # noqa: BLE001 - a template that cannot render this conversation
            return _reply(http, 400, {"error": {"message": str(exc)}})
        limits, rec = self.limits, self.recordings[episode]
        if limits is not None and rec.requests >= limits.max_turns:
            return _reply(http, 400, {"error": {"message": f"max_turns ({limits.max_turns}) reached", "code": "max_turns"}})
        room = self.sampling.max_new_tokens
        if limits is not None:
            room = min(room, limits.max_length - len(segment.ids))
            if room <= 0:
                return _reply(http, 400, {"error": {"message": f"max_length ({limits.max_length} tokens) reached",
                                                    "code": "max_length"}})
        asked = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(asked, int) and asked > 0:
            room = min(room, asked)
        pending = _Pending(episode, context, room)
        with self._lock:
            self._pending.append(pending)
            self._lock.notify_all()
        if not pending.done.wait(self.request_timeout_s):
            return _reply(http, 504, {"error": {"message": f"no completion within {self.request_timeout_s:g}s"}})
        if pending.error:
            return _reply(http, 503, {"error": {"message": pending.error}})
        with self.recordings[episode].lock:
            answer = self._record(episode, segment, messages, pending.result)
        _reply(http, 200, answer)

    def _context(self, episode: str, messages: list[dict], tools) -> tuple[list[int], Segment]:
        """The ids to sample from, continuing the episode's segment when the messages extend it."""
        rec = self.recordings[episode]
        normal = [_normal(m) for m in messages]
        last = rec.segments[-1] if rec.segments else None
        new = messages[len(last.known):] if last and normal[: len(last.known)] == last.known else None
        if last is not None and new and all(m.get("role") != "assistant" for m in new):
            obs = observation_ids(self.tokenizer, new, tools)
            last.ids += obs
            last.mask += [0] * len(obs)
            last.logprobs += [0.0] * len(obs)
            last.known, last.messages = normal, list(messages)
            return last.prompt_ids + last.ids, last
        if last is not None:
            rec.resets += 1
        segment = Segment(conversation_ids(self.tokenizer, messages, tools), normal, list(messages),
                          prompt_len=len(messages))
        rec.segments.append(segment)
        return segment.prompt_ids, segment

    def _record(self, episode: str, segment: Segment, messages: list[dict], c: Completion) -> dict:
        rec = self.recordings[episode]
        rec.requests += 1
        start = len(segment.ids)
        segment.ids += c.token_ids
        segment.mask += [1] * len(c.token_ids)
        rec.has_logprobs = rec.has_logprobs and len(c.logprobs) >= len(c.token_ids)
        segment.logprobs += c.logprobs[: len(c.token_ids)] if rec.has_logprobs else [0.0] * len(c.token_ids)
        segment.spans.append((start, len(segment.ids)))
        rec.entropy += c.entropy if c.entropy == c.entropy else 0.0
        rec.version = c.version
        turn = parse_turn(c.text, f"call_{rec.requests - 1}")
        reply = turn.message()
        if c.finish_reason == "length":
            rec.length_cuts += 1
        segment.known = [_normal(m) for m in messages] + [_normal(reply)]
        segment.messages = list(messages) + [reply]
        finish = "length" if c.finish_reason == "length" else "tool_calls" if turn.calls else "stop"
        return {"id": f"chatcmpl-{episode}-{rec.requests}", "object": "chat.completion", "created": int(time.time()),
                "model": "rftkit-policy", "choices": [{"index": 0, "message": reply, "finish_reason": finish}],
                "usage": {"prompt_tokens": len(segment.prompt_ids) + start, "completion_tokens": len(c.token_ids),
                          "total_tokens": len(segment.prompt_ids) + len(segment.ids)}}

    # ---- batching ----------------------------------------------------------------------
    def _batch_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                first = time.monotonic()
                while not self._closed and len({p.episode for p in self._pending}) < len(self.live):
                    left = self.batch_window_s - (time.monotonic() - first)
                    if left <= 0:
                        break
                    self._lock.wait(left)
                batch, self._pending = self._pending, []
            self._generate(batch)

    def _generate(self, batch: list[_Pending]) -> None:
        by_budget: dict[int, list[_Pending]] = {}
        for pending in batch:
            by_budget.setdefault(pending.max_new_tokens, []).append(pending)
        for budget, group in by_budget.items():
            self.batches.append(len(group))
            try:
                sampling = dataclasses.replace(self.sampling, max_new_tokens=budget)
                out = self.engine.generate_from_ids([p.context for p in group], sampling)
                for pending, completion in zip(group, out):
                    pending.result = completion
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the server lives on
                for pending in group:
                    pending.error = f"generation failed: {type(exc).__name__}: {exc}"
            for pending in group:
                pending.done.set()


def _reply(http: BaseHTTPRequestHandler, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    try:
        http.send_response(status)
        http.send_header("Content-Type", "application/json")
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)
    except OSError:
        pass  # the agent hung up

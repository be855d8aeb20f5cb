"""Chat completions for base and tuned models: concurrent requests share one forward pass, models load lazily.

`ModelPool` loads a model the first time a request names it and keeps it until the models loaded
would pass the memory bound (`max_bytes`, counted as the bytes of their weights): then the least
recently used go. `Batcher` is one thread: it takes every request waiting (after a short window
for more to arrive), groups them by model and sampling settings, and generates each group with one
`HFEngine.generate_from_ids` call (a request's `n` choices are n rows of that batch; rows of the
same prompt share their prefill). While a batch decodes, new requests queue for the next one, so
under load every batch is full. Tokens reach a streaming request as they are drawn
(`on_token`), as server-sent events.

`stop` strings cut a reply after it is generated (the row still decodes to its end-of-turn token
or `max_tokens`); a streamed reply holds back text that could still become a stop string.
`add_chat_routes` puts `/v1/models` and `/v1/chat/completions` on a FastAPI app: `rft server`
(project-scoped, the registry's names) and `rft serve MODEL` (one model) both use it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastapi import Depends
from fastapi import Request as HttpRequest
from fastapi.responses import StreamingResponse

from rftkit.rollout.base import SamplingParams

MAX_STOPS = 4


@dataclass
class Loaded:
    tokenizer: Any
    engine: Any  # rollout.hf.HFEngine
    bytes: int
    stop_ids: set[int]


class ModelPool:
    """name -> a loaded model, lazily, under `max_bytes` of weights (least recently used evicted first)."""

    def __init__(self, max_bytes: int, loader: Callable[[str], tuple[Any, Any]] | None = None) -> None:
        self.max_bytes, self.loader = max_bytes, loader or _load
        self.loaded: OrderedDict[str, Loaded] = OrderedDict()
        self.loads = 0  # models loaded so far (a test reads it)
        self._lock = threading.Lock()

    def get(self, key: str, path: str) -> Loaded:
        with self._lock:
            if key in self.loaded:
                self.loaded.move_to_end(key)
                return self.loaded[key]
            need = _weights_bytes(path)
            if need > self.max_bytes:
                raise MemoryError(f"the model needs {need / 2**20:.0f} MB of weights, more than the server's bound of "
                                  f"{self.max_bytes / 2**20:.0f} MB (--max-model-memory-mb)")
            while self.loaded and sum(m.bytes for m in self.loaded.values()) + need > self.max_bytes:
                self.loaded.popitem(last=False)  # a batch still using it keeps its own reference
            from rftkit.rollout.hf import HFEngine

            model, tokenizer = self.loader(path)
            engine = HFEngine(model, tokenizer)
            size = sum(p.numel() * p.element_size() for p in model.parameters())
            self.loaded[key] = Loaded(tokenizer, engine, size, set(engine.stop_ids))
            self.loads += 1
            return self.loaded[key]

    def drop(self, key: str) -> None:
        with self._lock:
            self.loaded.pop(key, None)


def _load(path: str):
    from rftkit.models import load_checkpoint_model, load_model, load_tokenizer

    marker = Path(path) / "checkpoint.json"  # a checkpoint: base + trained weights (written by the server)
    if marker.exists():
        spec = json.loads(marker.read_text())
        model = load_checkpoint_model(spec["base"], spec["weights"], spec.get("lora"))
        return model.eval(), load_tokenizer(spec["base"])
    return load_model(path).eval(), load_tokenizer(path)


def _weights_bytes(path: str) -> int:
    folder = Path(path)
    marker = folder / "checkpoint.json"
    if marker.exists():
        folder = Path(_resolved(json.loads(marker.read_text())["base"]))
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) or sum(f.stat().st_size for f in folder.glob("*.bin"))


def _resolved(spec: str) -> str:
    from rftkit.models import resolve_model_path

    return resolve_model_path(spec)


@dataclass
class Request:
    key: str  # the pool's name for the model
    path: str
    prompt: list[int]
    n: int
    sampling: SamplingParams
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue  # ("token", choice, id) ... then ("done", completions) or ("error", message)
    tokens: list[list[int]] = field(default_factory=list)


class Batcher:
    """One thread generating every waiting request's replies, a batch per model and sampling setting."""

    def __init__(self, pool: ModelPool, window_s: float = 0.005, max_rows: int = 256) -> None:
        self.pool, self.window_s, self.max_rows = pool, window_s, max_rows
        self.batches: list[int] = []  # rows per generate call (for tests and the benchmark)
        self._pending: list[Request] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="rftkit-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeError("the server is stopping")
            self._pending.append(request)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed:
                    for r in self._pending:
                        _send(r, ("error", "the server is stopping"))
                    return
                self._cv.wait(self.window_s)  # let the requests sent together arrive together
                batch, self._pending = self._pending, []
            groups: dict[tuple, list[Request]] = {}
            for r in batch:
                groups.setdefault((r.key, r.sampling), []).append(r)
            for (key, sampling), requests in groups.items():
                for start in range(0, len(requests), self.max_rows):
                    self._generate(requests[start : start + self.max_rows], sampling)

    def _generate(self, requests: list[Request], sampling: SamplingParams) -> None:
        rows = [(r, choice) for r in requests for choice in range(r.n)]
        try:
            model = self.pool.get(requests[0].key, requests[0].path)
            for r in requests:
                r.tokens = [[] for _ in range(r.n)]

            def on_token(batch_rows: list[int], tokens: list[int]) -> None:
                for row, token in zip(batch_rows, tokens):
                    request, choice = rows[row]
                    if token not in model.stop_ids:
                        request.tokens[choice].append(token)
                        _send(request, ("token", choice, model.tokenizer))

            self.batches.append(len(rows))
            out = model.engine.generate_from_ids([r.prompt for r, _ in rows], sampling, on_token=on_token)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error; the server lives on
            for r in requests:
                _send(r, ("error", f"{type(exc).__name__}: {exc}"))
            return
        at = 0
        for r in requests:
            _send(r, ("done", out[at : at + r.n]))
            at += r.n


def _send(request: Request, message: tuple) -> None:
    try:
        request.loop.call_soon_threadsafe(request.queue.put_nowait, message)
    except RuntimeError:
        pass  # the client's event loop is gone (the server is stopping)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """(text before the first stop string, whether one was found)."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def safe_prefix(text: str, stops: list[str]) -> str:
    """The part of a growing text no stop string can still claim: hold back a tail that is a stop's prefix."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold]


# ---- the HTTP side ---------------------------------------------------------------------------------------


def parse_request(body: dict, error: Callable[[str, str], Exception]) -> dict:
    """The checked fields of a chat.completions request (error(message, param) makes the 400)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise error("messages: a non-empty list of {role, content} objects", "messages")
    n = 1 if body.get("n") is None else body["n"]
    if not isinstance(n, int) or not 1 <= n <= 16:
        raise error("n: an integer from 1 to 16", "n")
    temperature = body.get("temperature", 1.0)
    temperature = 1.0 if temperature is None else temperature
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise error("temperature: a number from 0 to 2", "temperature")
    top_p = body.get("top_p", 1.0)
    top_p = 1.0 if top_p is None else top_p
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise error("top_p: a number in (0, 1]", "top_p")
    max_tokens = next((body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None), 256)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise error("max_tokens: a positive integer", "max_tokens")
    stop = body.get("stop") or []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) for s in stops):
        raise error(f"stop: a string or a list of up to {MAX_STOPS} strings", "stop")
    return {"messages": messages, "n": n, "stops": stops, "stream": bool(body.get("stream")),
            "usage_in_stream": bool((body.get("stream_options") or {}).get("include_usage")),
            "sampling": SamplingParams(temperature=float(temperature), top_p=float(top_p),
                                       max_new_tokens=max_tokens)}


def add_chat_routes(app, batcher: Batcher, lookup: Callable[[str, str], tuple[str, str]], listing: Callable[[str], list],
                    who_dependency, api_error: Callable[..., Exception], request_timeout_s: float = 300.0) -> None:
    """`lookup(model name, who) -> (pool key, folder)` (raises the 404); `listing(who) -> model objects`."""
    def bad(message: str, param: str) -> Exception:
        return api_error(400, message, "invalid_request", param)

    @app.get("/v1/models")
    def list_models(who: str = Depends(who_dependency)):
        return {"object": "list", "data": listing(who)}

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest, who: str = Depends(who_dependency)):
        try:
            body = await http.json()
        except ValueError:
            raise api_error(400, "the request body is not JSON", "invalid_json") from None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise bad("model: required, a model id from GET /v1/models", "model")
        name = body["model"]
        key, path = lookup(name, who)
        asked = parse_request(body, bad)
        try:
            loaded = await asyncio.to_thread(batcher.pool.get, key, path)
        except MemoryError as exc:
            raise api_error(507, str(exc), "model_too_large", "model", kind="server_error") from None
        from rftkit.models.chat import conversation_ids

        try:
            prompt = conversation_ids(loaded.tokenizer, asked["messages"], body.get("tools"))
        except Exception as exc:  # noqa: BLE001 - a conversation the chat template cannot render
            raise bad(f"messages: the model's chat template cannot render them ({exc})", "messages") from None
        context = getattr(loaded.engine.model.config, "max_position_embeddings", None) or 1 << 30
        if len(prompt) >= context:
            raise bad(f"messages: {len(prompt)} tokens, the model's context is {context}", "messages")
        asked["sampling"] = dataclasses.replace(asked["sampling"],
                                                max_new_tokens=min(asked["sampling"].max_new_tokens, context - len(prompt)))
        request = Request(key, path, prompt, asked["n"], asked["sampling"], asked["stops"], asyncio.get_running_loop(),
                          asyncio.Queue())
        try:
            batcher.submit(request)
        except RuntimeError as exc:
            raise api_error(503, str(exc), "unavailable", kind="server_error") from None
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": reply_id, "created": created, "model": name}
        if asked["stream"]:
            return StreamingResponse(_events(request, head, asked, request_timeout_s), media_type="text/event-stream")
        completions = await _wait_done(request, request_timeout_s, api_error)
        choices, used = [], 0
        for index, c in enumerate(completions):
            text, stopped = cut_at_stop(c.text, request.stops)
            used += len(c.token_ids)
            choices.append({"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                            "finish_reason": "stop" if stopped or c.finish_reason == "stop" else "length"})
        return {**head, "object": "chat.completion", "choices": choices, "system_fingerprint": None,
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": used, "total_tokens": len(prompt) + used}}


async def _wait_done(request: Request, timeout_s: float, api_error) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            message = await asyncio.wait_for(request.queue.get(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise api_error(504, f"no completion within {timeout_s:g}s", "timeout", kind="server_error") from None
        if message[0] == "done":
            return message[1]
        if message[0] == "error":
            raise api_error(503, f"generation failed: {message[1]}", "generation_failed", kind="server_error")


async def _events(request: Request, head: dict, asked: dict, timeout_s: float):
    """Server-sent events: a role chunk per choice, content deltas as tokens are drawn, a finish chunk, [DONE]."""
    def chunk(choices: list, **extra) -> str:
        return "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": choices, **extra}) + "\n\n"

    n, stops = request.n, request.stops
    sent = [""] * n  # text streamed so far, per choice
    finished = [False] * n
    for index in range(n):
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            message = await asyncio.wait_for(request.queue.get(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            yield "data: " + json.dumps({"error": {"message": f"no completion within {timeout_s:g}s", "type": "server_error",
                                                   "param": None, "code": "timeout"}}) + "\n\n"
            return
        if message[0] == "error":
            yield "data: " + json.dumps({"error": {"message": f"generation failed: {message[1]}", "type": "server_error",
                                                   "param": None, "code": "generation_failed"}}) + "\n\n"
            return
        if message[0] == "token":
            _, index, tokenizer = message
            if finished[index]:
                continue
            text, stopped = cut_at_stop(tokenizer.decode(request.tokens[index], skip_special_tokens=True), stops)
            ready = text if stopped else safe_prefix(text, stops)
            if ready.startswith(sent[index]) and len(ready) > len(sent[index]):
                yield chunk([{"index": index, "delta": {"content": ready[len(sent[index]):]}, "finish_reason": None}])
                sent[index] = ready
            finished[index] = stopped
            continue
        completions = message[1]
        used = 0
        for index, c in enumerate(completions):  # what the token stream left unsaid (held-back text), then the finish
            text, stopped = cut_at_stop(c.text, stops)
            used += len(c.token_ids)
            if text.startswith(sent[index]) and len(text) > len(sent[index]):
                yield chunk([{"index": index, "delta": {"content": text[len(sent[index]):]}, "finish_reason": None}])
            reason = "stop" if stopped or c.finish_reason == "stop" else "length"
            yield chunk([{"index": index, "delta": {}, "finish_reason": reason}])
        if asked["usage_in_stream"]:
            p = len(request.prompt)
            yield chunk([], usage={"prompt_tokens": p, "completion_tokens": used, "total_tokens": p + used})
        yield "data: [DONE]\n\n"
        return

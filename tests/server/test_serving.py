"""Chat completions (server/serving.py) through the official `openai` client against `rft serve`'s app on a real
localhost port: batching of concurrent requests, streaming, n, stop, temperature 0, keys; the model pool's bound."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from rftkit.models import resolve_model_path  # noqa: E402
from rftkit.server.serving import ModelPool, cut_at_stop, safe_prefix  # noqa: E402
from tests.server.test_api import free_port  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 12 + 30 - 7?"}]


@pytest.fixture(scope="module")
def served():
    import uvicorn

    from rftkit.server.standalone import create_serve_app

    app = create_serve_app("tiny", resolve_model_path("bundled:tiny-arith"), api_key="sk-test")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield {"app": app, "client": openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test",
                                               max_retries=0, timeout=60), "port": port}
    server.should_exit = True
    thread.join(timeout=30)


def test_stop_strings_cut_and_a_streamed_tail_is_held_back():
    assert cut_at_stop("12 + 30 = 42. ANSWER: 35", ["ANSWER", "\n"]) == ("12 + 30 = 42. ", True)
    assert cut_at_stop("no stop here", ["ANSWER"]) == ("no stop here", False)
    assert safe_prefix("12 = 42. ANS", ["ANSWER"]) == "12 = 42. "  # "ANS" may become the stop string
    assert safe_prefix("12 = 42. A", ["AB", "ANSWER"]) == "12 = 42. "
    assert safe_prefix("12 = 42.", ["ANSWER"]) == "12 = 42."


def test_concurrent_requests_share_forward_passes(served):
    c, batcher = served["client"], served["app"].state.batcher
    before = len(batcher.batches)
    questions = [[{"role": "user", "content": f"What is {i} + {i + 3}?"}] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda m: c.chat.completions.create(model="tiny", messages=m, max_tokens=24), questions))
    assert all(r.choices[0].message.content and r.object == "chat.completion" for r in replies)
    assert all(r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 5 for r in replies)
    batches = batcher.batches[before:]
    assert sum(batches) == 16 and max(batches) > 1 and len(batches) < 16  # batched, not one at a time


def test_n_temperature_zero_stop_and_streaming(served):
    c = served["client"]
    greedy = c.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=32)
    text = greedy.choices[0].message.content
    assert len(text) > 4
    again = c.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=32, n=3)
    assert [ch.message.content for ch in again.choices] == [text] * 3 and [ch.index for ch in again.choices] == [0, 1, 2]
    stop = text[3:5]
    cut = c.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=32, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    short = c.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    chunks = list(c.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=32, stream=True,
                                            stream_options={"include_usage": True}))
    deltas = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert "".join(deltas) == text and len(deltas) > 3  # token by token, as drawn
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == greedy.usage.completion_tokens
    streamed_cut = c.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=32, stop=[stop],
                                             stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed_cut if ch.choices) == text[: text.index(stop)]


def test_keys_unknown_models_and_bad_requests_are_clear_errors(served):
    import requests

    url = f"http://127.0.0.1:{served['port']}/v1"
    assert requests.post(f"{url}/chat/completions", json={"model": "tiny", "messages": QUESTION}, timeout=30).status_code == 401
    c = served["client"]
    assert [m.id for m in c.models.list().data] == ["tiny"]
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-4o", messages=QUESTION)
    for bad in ({"messages": []}, {"messages": QUESTION, "n": 0}, {"messages": QUESTION, "temperature": 5},
                {"messages": QUESTION, "stop": ["a"] * 5}, {"messages": "hi"}):
        r = requests.post(f"{url}/chat/completions", headers={"Authorization": "Bearer sk-test"},
                          json={"model": "tiny", **bad}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["message"], (bad, r.status_code, r.text[:200])


def test_the_pool_loads_lazily_and_evicts_the_least_recently_used_under_its_bound():
    arith, tools = resolve_model_path("bundled:tiny-arith"), resolve_model_path("bundled:tiny-tools")
    one = ModelPool(max_bytes=1 << 40).get("arith", arith).bytes
    pool = ModelPool(max_bytes=int(one * 1.5))  # room for one of them
    assert pool.loads == 0 and not pool.loaded
    first = pool.get("arith", arith)
    assert pool.get("arith", arith) is first and pool.loads == 1
    pool.get("tools", tools)
    assert list(pool.loaded) == ["tools"] and pool.loads == 2  # arith evicted to stay under the bound
    pool.get("arith", arith)
    assert list(pool.loaded) == ["arith"] and pool.loads == 3
    with pytest.raises(MemoryError, match="max-model-memory-mb"):
        ModelPool(max_bytes=1000).get("arith", arith)

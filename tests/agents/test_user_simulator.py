"""The `user_simulator` environment against a real OpenAI-compatible endpoint on localhost."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rftkit.agents import build_environment
from rftkit.agents.toolcall import parse_turn
from rftkit.errors import ConfigError
from rftkit.types import Item


@pytest.fixture
def simulator():
    """A chat endpoint playing the user: its replies in order; it records what it was sent."""
    seen, replies = [], ["Can you check the order number too?", "Great, thanks! [DONE]"]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if self.headers.get("Authorization") != "Bearer sim-key":
                self.send_response(401)
                self.end_headers()
                return
            text = replies[min(len(seen) - 1, len(replies) - 1)]
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()


def test_endpoint_user_turns_persona_and_stop_phrase(simulator, monkeypatch):
    url, seen = simulator
    monkeypatch.setenv("SIM_KEY", "sim-key")
    env = build_environment({"type": "user_simulator", "base_url": url, "model": "sim", "api_key_env": "SIM_KEY",
                             "max_turns": 5})
    item = Item(id="u", messages=[{"role": "user", "content": "My order arrived broken."}],
                metadata={"persona": "a customer who wants a refund for order 1182"})
    world = env.new()
    world.reset(item)
    first = world.step(parse_turn("Sorry to hear that. I can refund it.", "c0"))
    assert first.observations == [{"role": "user", "content": "Can you check the order number too?"}] and not first.done
    second = world.step(parse_turn("Order 1182: refunded.", "c1"))
    assert second.done and second.observations == []  # the reply held [DONE]
    sent = seen[0]["messages"]
    assert sent[0]["role"] == "system" and "order 1182" in sent[0]["content"]
    # roles swapped: the simulator plays the user, so the policy's turns reach it as `user`
    assert [m["role"] for m in sent[1:]] == ["assistant", "user"]
    assert sent[2]["content"] == "Sorry to hear that. I can refund it."


def test_a_failing_simulator_ends_the_episode_counted(simulator):
    url, _ = simulator  # no key in the environment: the endpoint answers 401
    env = build_environment({"type": "user_simulator", "base_url": url, "model": "sim", "api_key_env": "NO_SUCH_KEY"})
    world = env.new()
    world.reset(Item(id="u", messages=[{"role": "user", "content": "Hi"}]))
    outcome = world.step(parse_turn("Hello!", "c0"))
    assert outcome.done and outcome.counts == {"user_errors": 1} and "HTTP 401" in outcome.errors[0]


def test_config_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one of"):
        build_environment({"type": "user_simulator", "script_field": "t", "base_url": "http://x", "model": "m"})
    with pytest.raises(ConfigError, match="`model` is required"):
        build_environment({"type": "user_simulator", "base_url": "http://x"})


def test_a_local_model_plays_the_user(tmp_path):
    """`model_path`: a local Hugging Face folder writes the user's turns (here the bundled model, so the replies
    are arithmetic: what matters is that they are its samples, inserted as user turns)."""
    from rftkit.agents import run_episodes
    from rftkit.models import load_tokenizer
    from rftkit.rollout.base import SamplingParams
    from tests.agents.conftest import ScriptedEngine

    env = build_environment({"type": "user_simulator", "model_path": "bundled:tiny-arith", "max_turns": 3,
                             "max_new_tokens": 24})
    tokenizer = load_tokenizer("bundled:tiny-arith")
    item = Item(id="u", messages=[{"role": "user", "content": "What is 12 + 5 - 3?"}])
    [group] = run_episodes(ScriptedEngine(tokenizer, lambda ids: "12 + 5 = 17. 17 - 3 = 14. ANSWER: 14"), tokenizer,
                           env, [item], 2, SamplingParams(max_new_tokens=40))
    for c in group.completions:
        users = [m for m in c.trajectory.messages if m["role"] == "user"]
        assert users and all(m["content"].strip() for m in users), c.trajectory.messages
        assert c.finish_reason in ("max_turns", "stop") and c.trajectory.counts.get("user_errors", 0) == 0

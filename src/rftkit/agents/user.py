"""`user_simulator`: the user's turns come from a script in the item or from another model.

    environment:
      type: user_simulator
      script_field: user_turns        # the item's list of user replies, in order (tests, fixed dialogues)
      # or a model behind any OpenAI-compatible endpoint, playing the user:
      base_url: http://localhost:8000/v1
      model: qwen2.5-7b-instruct
      api_key_env: OPENAI_API_KEY     # the key's environment variable (none sent if unset)
      persona_field: persona          # the item's description of the user and their goal
      stop_phrases: ["[DONE]"]        # a user reply containing one ends the episode
      max_turns: 4
      # or a local Hugging Face folder (or bundled:NAME), sampled on this machine:
      model_path: path/to/user-model

After each assistant turn the next user reply is inserted. The episode ends when the script
runs out, the simulated user's reply holds a stop phrase, or `max_turns` is reached. The
simulator sees the conversation with roles swapped (the policy's turns as `user`), after a
system message made of `system_prompt` and the item's persona. A simulator that fails (no
answer within `timeout_s`, an HTTP error, a reply without text) ends the episode, counted
as `env/user_errors`; the run goes on.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from typing import Any, Literal

from pydantic import Field, model_validator

from rftkit.agents.environment import EnvironmentSpec, Limits, Outcome
from rftkit.agents.toolcall import Turn
from rftkit.rollout.base import SamplingParams
from rftkit.types import Item

SYSTEM_PROMPT = ("You are playing a user talking to an assistant. Stay in character; reply with the user's next "
                 "message only. When your goal is met, or the assistant cannot help, end with [DONE].")


class UserSimulatorSpec(Limits):
    type: Literal["user_simulator"] = "user_simulator"
    script_field: str | None = Field(None, description="item field holding the scripted user replies")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint of the simulating model")
    model: str | None = Field(None, description="model name sent to the endpoint")
    api_key_env: str | None = Field(None, description="environment variable holding the endpoint's key")
    model_path: str | None = Field(None, description="a local Hugging Face folder (or bundled:NAME) playing the user")
    max_new_tokens: int = Field(64, gt=0, description="tokens of one simulated user reply (model_path)")
    persona_field: str = Field("persona", description="item field describing the user and their goal")
    system_prompt: str = Field(SYSTEM_PROMPT, description="instructions to the simulating model")
    stop_phrases: list[str] = Field(["[DONE]"], description="a user reply containing one ends the episode")
    timeout_s: float = Field(30.0, gt=0, description="deadline of one simulator request")
    temperature: float = Field(0.7, ge=0)

    @model_validator(mode="after")
    def _one_source(self):
        if sum(x is not None for x in (self.script_field, self.base_url, self.model_path)) != 1:
            raise ValueError("give exactly one of `script_field` (scripted turns), `base_url` (a simulating model behind "
                             "an endpoint) and `model_path` (a local one)")
        if self.base_url and not self.model:
            raise ValueError("`model` is required with `base_url`")
        return self

    def build(self) -> EnvironmentSpec:
        local = LocalUser(self.model_path, self.temperature, self.max_new_tokens) if self.model_path else None
        return EnvironmentSpec(self, lambda: UserSimulator(self, local))


class LocalUser:
    """A local model playing the user; one reply at a time (episodes step in threads, the model is shared)."""

    def __init__(self, path: str, temperature: float, max_new_tokens: int):
        from rftkit.models import load_model, load_tokenizer
        from rftkit.rollout.hf import HFEngine

        self.engine = HFEngine(load_model(path), load_tokenizer(path))
        self.sampling = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
        self.lock = threading.Lock()

    def reply(self, messages: list[dict[str, str]]) -> str:
        with self.lock:
            [group] = self.engine.generate([Item(id="user", messages=messages)], 1, self.sampling)
        return group.completions[0].text


class UserSimulator:
    def __init__(self, spec: UserSimulatorSpec, local: LocalUser | None = None):
        self.spec, self.local = spec, local
        self.item: Item | None = None
        self.history: list[dict[str, Any]] = []
        self.replies = 0

    def tools(self, item: Item) -> None:
        return None

    def reset(self, item: Item) -> list[dict[str, Any]]:
        self.item, self.history, self.replies = item, list(item.messages), 0
        return list(item.messages)

    def step(self, turn: Turn) -> Outcome:
        self.history.append({"role": "assistant", "content": turn.content})
        reply, error = self._scripted() if self.spec.script_field else self._simulated()
        if error:
            return Outcome([], done=True, counts={"user_errors": 1}, errors=[error])
        if reply is None:
            return Outcome([], done=True)
        self.replies += 1
        stopped = any(p in reply for p in self.spec.stop_phrases)
        if stopped:
            return Outcome([], done=True)
        message = {"role": "user", "content": reply}
        self.history.append(message)
        return Outcome([message])

    def _scripted(self) -> tuple[str | None, str | None]:
        script = self.item.field(self.spec.script_field)
        if not isinstance(script, list):
            return None, f"item {self.item.id}: `{self.spec.script_field}` must be a list of user replies"
        if self.replies >= len(script):
            return None, None
        reply = script[self.replies]
        return (reply, None) if isinstance(reply, str) else (None, f"item {self.item.id}: user reply {self.replies} is not text")

    def _simulated(self) -> tuple[str | None, str | None]:
        persona = self.item.field(self.spec.persona_field)
        system = self.spec.system_prompt + (f"\n\nWho you are and what you want: {persona}" if persona else "")
        swapped = {"user": "assistant", "assistant": "user"}
        messages = [{"role": "system", "content": system}]
        messages += [{"role": swapped[m["role"]], "content": m.get("content") or ""} for m in self.history
                     if m.get("role") in swapped]
        if self.local is not None:
            text = self.local.reply(messages)
            return (text.strip(), None) if text.strip() else (None, "the local user model replied with nothing")
        body = json.dumps({"model": self.spec.model, "messages": messages, "temperature": self.spec.temperature,
                           "max_tokens": 256}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.spec.api_key_env or "", "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.spec.base_url.rstrip("/") + "/chat/completions"
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=self.spec.timeout_s) as response:
                data = json.loads(response.read(1 << 20))
            text = data["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as exc:
            return None, f"user simulator at {url}: HTTP {exc.code}"
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            return None, f"user simulator at {url}: {type(exc).__name__}: {str(exc)[:200]}"
        if not isinstance(text, str) or not text.strip():
            return None, f"user simulator at {url}: a reply without text"
        return text.strip(), None


"""`agent`: a black-box agent drives its own loop with the official `openai` client.

    environment:
      type: agent
      entry: my_agent.py:run       # async def run(client, item) -> float | None
      max_turns: 8                 # model requests per episode
      max_length: 1024             # tokens after the first prompt
      episode_timeout_s: 120

    # my_agent.py
    async def run(client, item):
        messages = list(item["messages"])
        reply = await client.chat.completions.create(model="policy", messages=messages)
        ...                        # call tools, ask again, as any agent does
        return None                # None: the grader scores the last answer; a number: that is the reward

For each episode rftkit serves the policy at a base URL of its own (agents/server.py) and
calls `run(client, item)` with an `openai.AsyncOpenAI` pointed there; `item` is the data row
as a dict. All episodes run concurrently on one event loop, and their requests are batched.
The server records the exact prompt and completion ids of every request and stitches them
into the episode's trajectory (token in, token out). Past `max_turns` or `max_length` the
endpoint answers HTTP 400 (the agent's client raises; the episode ends, cut and counted); an
agent that raises ends its episode with `finish_reason` `agent_error` and the error in
`trajectory.errors`; `episode_timeout_s` bounds each `run`.

The entry file is the user's own code and runs in the trainer process (it must reach the
endpoint); it is imported when the run starts, so a missing file or function, or a `run`
that is not `async def run(client, item)`, is a config error before any model loads.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rftkit.agents.environment import EnvironmentSpec, Limits
from rftkit.agents.server import PolicyServer, Recording
from rftkit.errors import ConfigError
from rftkit.models.chat import conversation_ids
from rftkit.rollout.base import SamplingParams
from rftkit.types import Completion, Group, Item, Trajectory


class AgentSpec(Limits):
    type: Literal["agent"] = "agent"
    entry: str = Field(description="FILE.py:FUNCTION, an `async def run(client, item)`")
    batch_window_s: float = Field(0.05, gt=0, description="how long the endpoint waits to batch requests")
    request_timeout_s: float = Field(300.0, gt=0, description="deadline of one model request")

    def build(self) -> EnvironmentSpec:
        run = load_entry(self.entry)
        return EnvironmentSpec(self, new=None, play=lambda engine, tokenizer, items, n, sampling:
                               play_agents(engine, tokenizer, self, run, items, n, sampling))


def load_entry(entry: str):
    path, _, name = entry.rpartition(":")
    if not path or not name:
        raise ConfigError(f"environment.entry: expected FILE.py:FUNCTION (got {entry!r})")
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"environment.entry: {file} not found")
    try:
        import openai  # noqa: F401 - the agents' client
    except ImportError:
        raise ConfigError("environment type `agent` needs the openai package: pip install 'rftkit[agents]'") from None
    spec = importlib.util.spec_from_file_location(f"rftkit_agent_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ConfigError(f"environment.entry: {file}, line {exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import
        raise ConfigError(f"environment.entry: importing {file} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise ConfigError(f"environment.entry: {file} has no {name!r}")
    if not inspect.iscoroutinefunction(fn) or len(inspect.signature(fn).parameters) != 2:
        raise ConfigError(f"environment.entry: {name} in {file} must be `async def {name}(client, item)`")
    return fn


def play_agents(engine, tokenizer, spec: AgentSpec, run, items: list[Item], n: int,
                sampling: SamplingParams) -> list[Group]:
    """n episodes per item, all agents at once; one Group per item."""
    server = PolicyServer(engine, tokenizer, sampling, spec.batch_window_s, spec.request_timeout_s, limits=spec)
    try:
        episodes = [(item, server.open_episode()) for item in items for _ in range(n)]
        outcomes = asyncio.run(_run_all(server, spec, run, episodes))
    finally:
        server.close()
    groups = []
    for g, item in enumerate(items):
        prompt = conversation_ids(tokenizer, item.messages)
        mine = [(episodes[k][1], outcomes[k]) for k in range(g * n, (g + 1) * n)]
        completions = [_completion(server.recordings[ep], outcome, prompt) for ep, outcome in mine]
        groups.append(Group(item=item, prompt_ids=prompt, completions=completions))
    return groups


async def _run_all(server: PolicyServer, spec: AgentSpec, run, episodes) -> list[dict]:
    from openai import AsyncOpenAI

    async def one(item: Item, episode: str) -> dict:
        client = AsyncOpenAI(base_url=server.base_url(episode), api_key="rftkit", max_retries=0,
                             timeout=spec.request_timeout_s)
        row = {**item.metadata, "id": item.id, "messages": item.messages, "reference_answer": item.reference_answer}
        try:
            reward = await asyncio.wait_for(run(client, row), spec.episode_timeout_s)
            if reward is not None and not isinstance(reward, (int, float)):
                return {"finish": "agent_error", "error": f"run returned {type(reward).__name__}, not a number or None"}
            return {"finish": "stop", "reward": None if reward is None else float(reward)}
        except asyncio.TimeoutError:
            return {"finish": "deadline", "error": f"the agent did not finish within {spec.episode_timeout_s:g}s"}
        except Exception as exc:  # noqa: BLE001 - the agent's own failure ends its episode, not the run
            return {"finish": _limit_code(exc) or "agent_error", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        finally:
            server.close_episode(episode)
            await client.close()

    return list(await asyncio.gather(*(one(item, episode) for item, episode in episodes)))


def _limit_code(exc: Exception) -> str | None:
    """`max_turns` / `max_length` when the agent's client raised on the endpoint's limit answer."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        code = error.get("code") if isinstance(error, dict) else None
        return code if code in ("max_turns", "max_length") else None
    return None


def _completion(rec: Recording, outcome: dict[str, Any], prompt: list[int]) -> Completion:
    errors = [outcome["error"]] if outcome.get("error") else []
    finish = outcome["finish"]
    cut = finish in ("max_turns", "max_length", "deadline")
    counts = {"turns": 0, "requests": rec.requests, "agent_resets": rec.resets, "truncated": int(cut),
              "agent_errors": int(finish == "agent_error")}
    if not rec.segments:  # the agent never asked the model
        trajectory = Trajectory([], [], [], counts, errors, reward=outcome.get("reward"))
        return Completion(text="", token_ids=[], logprobs=[], finish_reason=finish, prompt_ids=prompt,
                          trajectory=trajectory)
    seg = rec.segments[-1]
    counts["turns"] = len(seg.spans)
    rewards: list[float | None] = [None] * len(seg.spans)
    reply = seg.messages[-1] if seg.messages and seg.messages[-1].get("role") == "assistant" else {}
    trajectory = Trajectory(seg.messages[seg.prompt_len:], seg.spans, rewards, counts, errors,
                            reward=outcome.get("reward"))
    return Completion(text=reply.get("content") or "", token_ids=seg.ids, logprobs=seg.logprobs if rec.has_logprobs else [],
                      finish_reason="length" if finish == "stop" and rec.length_cuts and not reply else finish,
                      loss_mask=seg.mask, entropy=rec.entropy, version=rec.version, prompt_ids=seg.prompt_ids,
                      trajectory=trajectory)


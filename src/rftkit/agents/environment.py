"""The Environment protocol, the limits of an episode, and the table of environment types.

An environment is one episode's world. The rollout (agents/rollout.py) makes one per
episode with `EnvironmentSpec.new()`, calls `reset(item)` for the conversation the model
starts from, then `step(turn)` after every assistant turn, which answers with the messages
to insert (tool results, the user's next turn), a reward for that turn or None, and whether
the episode is over. `step` never raises for anything the model did: a bad tool call is an
observation. A spec is the `environment:` mapping of a run config (or of an ENV.yaml for
`rft env run`); its options are checked when it is built, before any model loads.

    environment:
      type: tools              # tools | user_simulator (agents/user.py) | agent (agents/agent.py)
      tools: tools.py          # relative to the config file
      max_turns: 4             # assistant turns per episode
      max_length: 512          # tokens after the prompt: model turns plus observations
      tool_timeout_s: 5        # one tool call
      episode_timeout_s: 120   # a whole episode
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rftkit.agents.toolcall import Turn
from rftkit.agents.tools import ToolBox, load_source
from rftkit.errors import ConfigError
from rftkit.types import Item


@dataclass
class Outcome:
    """What the environment answers to one assistant turn."""

    observations: list[dict[str, Any]]  # OpenAI messages to insert: `tool` results, a `user` turn
    reward: float | None = None  # this turn's reward (credit: turn), None if it gives none
    done: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # tool_calls, tool_errors, tool_call_errors
    errors: list[str] = field(default_factory=list)  # why tool calls failed, in words


class Environment(Protocol):
    def reset(self, item: Item) -> list[dict[str, Any]]:
        """The conversation the model answers first (usually `item.messages`); the same for every episode of an item."""
        ...

    def step(self, turn: Turn) -> Outcome:
        """React to the assistant's turn (parsed by agents/toolcall.py)."""
        ...

    def tools(self, item: Item) -> list[dict[str, Any]] | None:
        """The function schemas the chat template shows the model, or None."""
        ...


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_turns: int = Field(4, gt=0, description="assistant turns per episode")
    max_length: int = Field(512, gt=0, description="tokens after the prompt (model turns and observations)")
    episode_timeout_s: float = Field(120.0, gt=0, description="wall-clock budget of one episode")


class ToolsSpec(Limits):
    type: Literal["tools"] = "tools"
    tools: str = Field(description="Python file whose public functions are the tools")
    tool_timeout_s: float = Field(5.0, gt=0, description="deadline of one tool call")
    tool_memory_mb: int = Field(256, gt=0, description="memory of one tool call")
    max_observation_chars: int = Field(2000, gt=0, description="characters of a tool's result the model sees")
    workers: int | None = Field(None, gt=0, description="sandbox worker processes (default: the pool's)")

    def build(self) -> EnvironmentSpec:
        path = Path(self.tools)
        box = ToolBox(load_source(path), path.name, self.tool_timeout_s, self.tool_memory_mb,
                      self.max_observation_chars, self.workers)
        return EnvironmentSpec(self, lambda: ToolsEnvironment(box))


@dataclass
class EnvironmentSpec:
    """A checked `environment:` mapping: its limits and a factory of one episode's environment."""

    limits: Limits
    new: Any  # () -> Environment
    play: Any = None  # a rollout of its own (engine, tokenizer, items, n, sampling) -> groups (the `agent` type)

    @property
    def kind(self) -> str:
        return getattr(self.limits, "type", "tools")


class ToolsEnvironment:
    """The model calls tools until it answers without one; the answer ends the episode."""

    def __init__(self, box: ToolBox):
        self.box = box
        self._schemas: dict[str, dict] = box.by_name

    def tools(self, item: Item) -> list[dict[str, Any]]:
        given = item.metadata.get("tools")
        return given if isinstance(given, list) and given else self.box.schemas

    def reset(self, item: Item) -> list[dict[str, Any]]:
        self._schemas = {t["function"]["name"]: t for t in self.tools(item) if isinstance(t, dict) and "function" in t}
        return list(item.messages)

    def step(self, turn: Turn) -> Outcome:
        if not turn.wants_tools:
            return Outcome([], done=True)
        observations, errors = [], []
        counts = {"tool_calls": len(turn.calls), "tool_errors": 0, "tool_call_errors": len(turn.errors)}
        for call in turn.calls:
            result = self.box.call(call.name, call.arguments, self._schemas)
            if result.error:
                counts["tool_errors"] += 1
                errors.append(result.error)
            observations.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": result.text})
        for bad in turn.errors:
            errors.append(bad.message)
            observations.append({"role": "tool", "tool_call_id": bad.id, "content": f"error: {bad.message}"})
        return Outcome(observations, counts=counts, errors=errors)


def _spec_types() -> dict[str, type[Limits]]:
    from rftkit.agents.agent import AgentSpec
    from rftkit.agents.user import UserSimulatorSpec

    return {"tools": ToolsSpec, "user_simulator": UserSimulatorSpec, "agent": AgentSpec}


def build_environment(spec: Any, root: Path | None = None) -> EnvironmentSpec:
    """Check an `environment:` mapping (paths relative to `root`) and build its factory; ConfigError if wrong."""
    if not isinstance(spec, dict):
        raise ConfigError(f"environment: must be a mapping with a `type` (got {type(spec).__name__})")
    types = _spec_types()
    kind = spec.get("type")
    if kind not in types:
        raise ConfigError(f"environment.type: unknown {kind!r} (types: {', '.join(types)})")
    spec = resolve_paths(spec, root) if root else spec
    try:
        checked = types[kind].model_validate(spec)
    except ValidationError as exc:
        rows = [f"environment.{'.'.join(str(p) for p in e['loc'])}: "
                + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"]) for e in exc.errors()]
        raise ConfigError("invalid environment:\n  " + "\n  ".join(rows)) from None
    return checked.build()


PATH_KEYS = ("tools", "entry")


def resolve_paths(spec: dict[str, Any], root: Path) -> dict[str, Any]:
    """The spec with its file options made relative to `root` (the config file's folder)."""
    out = dict(spec)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str) and not Path(out[key]).is_absolute():
            out[key] = str(root / out[key])
    return out

"""Multi-turn rollouts: every live episode's next turn in one batch, token in, token out.

`run_episodes` plays `n` episodes per item. Each round generates the next assistant turn of
every episode still running in one `Engine.generate_from_ids` call, parses the turns' tool
calls (agents/toolcall.py), and steps the episodes' environments concurrently (a thread per
episode; tool calls run in the sandbox pool's processes). An episode's context grows by the
turn's ids exactly as sampled, then by the ids of what its environment inserted
(models/chat.py `observation_ids`): the training forward later sees exactly these ids, so
the log-probs it computes are those the tokens were sampled with. The loss mask is 1 on
sampled ids and 0 on inserted ones.

An episode ends when its environment says so (an answer without tool calls, a user who is
done) or at a limit, each cut counted in `Trajectory.counts["truncated"]` and named in
`finish_reason`: `max_turns` (the model still wanted tools), `max_length` (tokens after the
prompt), `deadline` (`episode_timeout_s`), `length` (a turn hit `max_new_tokens` without
ending). The Completion's `text` is the last assistant turn's content (what graders score as
`sample.output_text`); `trajectory.messages` holds the conversation after the prompt.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from rftkit.agents.environment import Environment, EnvironmentSpec, Limits, Outcome
from rftkit.agents.toolcall import Turn, parse_turn
from rftkit.models.chat import conversation_ids, observation_ids
from rftkit.rollout.base import SamplingParams
from rftkit.types import Completion, Group, Item, Score, Trajectory

ENV_COUNTS = ("tool_calls", "tool_errors", "tool_call_errors", "user_errors")


@dataclass
class Episode:
    item: Item
    env: Environment
    prompt_ids: list[int]
    tools: list[dict] | None
    started: float
    ids: list[int] = field(default_factory=list)  # after the prompt: turns and observations
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    has_logprobs: bool = True
    messages: list[dict[str, Any]] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    rewards: list[float | None] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    entropy: float = 0.0
    version: int = 0
    answer: str = ""
    finish: str | None = None  # set when the episode is over

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.ids

    def cut(self, reason: str) -> None:
        self.finish = reason
        self.counts["truncated"] += 1

    def add_turn(self, c: Completion, room: int) -> None:
        ids = c.token_ids[:room]
        start = len(self.ids)
        self.ids += ids
        self.mask += [1] * len(ids)
        self.has_logprobs = self.has_logprobs and len(c.logprobs) >= len(ids)
        self.logprobs += c.logprobs[: len(ids)] if self.has_logprobs else [0.0] * len(ids)
        self.spans.append((start, len(self.ids)))
        self.rewards.append(None)
        self.entropy += 0.0 if math.isnan(c.entropy) else c.entropy
        self.version = c.version
        self.counts["turns"] += 1

    def record_turn(self, turn: Turn, limits: Limits, cut: str | None = None) -> bool:
        """The assistant's parsed turn joins the conversation; whether its environment should step."""
        self.messages.append(turn.message())
        self.answer = turn.content
        if cut is None and time.monotonic() - self.started > limits.episode_timeout_s:
            cut = "deadline"
        if cut is None and turn.wants_tools and self.counts["turns"] >= limits.max_turns:
            cut = "max_turns"  # it still wants tools, but has no turn left to read their results
        if cut:
            self.cut(cut)
        return cut is None

    def record_outcome(self, outcome: Outcome, limits: Limits, to_ids=None) -> None:
        """The environment's answer: counts, the turn's reward, and the observations it inserts (as ids via `to_ids`)."""
        self.rewards[-1] = outcome.reward
        for key in ENV_COUNTS:
            self.counts[key] += outcome.counts.get(key, 0)
        self.errors += outcome.errors
        if outcome.done or not outcome.observations:
            self.finish = "stop"
            return
        self.messages += outcome.observations
        if self.counts["turns"] >= limits.max_turns:
            self.cut("max_turns")
            return
        ids = to_ids(outcome.observations) if to_ids else []
        if len(self.ids) + len(ids) >= limits.max_length and to_ids:
            self.cut("max_length")
            return
        self.ids += ids
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def completion(self) -> Completion:
        trajectory = Trajectory(self.messages, self.spans, self.rewards, dict(self.counts), self.errors)
        return Completion(text=self.answer, token_ids=self.ids, logprobs=self.logprobs if self.has_logprobs else [],
                          finish_reason=self.finish or "stop", loss_mask=self.mask, entropy=self.entropy,
                          version=self.version, trajectory=trajectory)


def run_episodes(engine, tokenizer, env: EnvironmentSpec, items: list[Item], n: int, sampling: SamplingParams,
                 threads: ThreadPoolExecutor | None = None) -> list[Group]:
    """`n` episodes per item, all played together; one Group per item, trajectories as Completions."""
    if env.play is not None:  # an environment that drives its own episodes (a black-box agent)
        return env.play(engine, tokenizer, items, n, sampling)
    limits = env.limits
    own = threads is None
    threads = threads or ThreadPoolExecutor(max_workers=16, thread_name_prefix="rftkit-env")
    try:
        groups = []
        episodes: list[Episode] = []
        for item in items:
            first = None
            for _ in range(n):
                world = env.new()
                messages = world.reset(item)
                tools = world.tools(item)
                ids = conversation_ids(tokenizer, messages, tools)
                first = first or ids
                episodes.append(Episode(item, world, ids, tools, time.monotonic()))
            groups.append((item, first))
        _play(engine, tokenizer, episodes, limits, sampling, threads)
        out = []
        for g, (item, prompt) in enumerate(groups):
            mine = episodes[g * n : (g + 1) * n]
            out.append(Group(item=item, prompt_ids=prompt, completions=[e.completion() for e in mine]))
            for e in mine:
                if e.prompt_ids != prompt:
                    raise ValueError(f"item {item.id}: the environment's reset() gave episodes different prompts")
        return out
    finally:
        if own:
            threads.shutdown(wait=False, cancel_futures=True)


def _play(engine, tokenizer, episodes: list[Episode], limits, sampling: SamplingParams, threads) -> None:
    live = list(episodes)
    while live:
        rooms = [limits.max_length - len(e.ids) for e in live]
        budget = dataclasses.replace(sampling, max_new_tokens=max(1, min(sampling.max_new_tokens, max(rooms))))
        turns = engine.generate_from_ids([e.context for e in live], budget, reuse=True)
        stepping = []
        for e, c, room in zip(live, turns, rooms):
            e.add_turn(c, room)
            turn = parse_turn(c.text, f"call_{len(e.spans) - 1}")
            cut_short = c.finish_reason == "length"  # no end-of-turn within the turn's budget
            cut = ("max_length" if len(c.token_ids) > room or (cut_short and len(c.token_ids) >= room) else
                   "length" if cut_short else None)
            if e.record_turn(turn, limits, cut):
                stepping.append((e, threads.submit(e.env.step, turn)))
        for e, future in stepping:
            outcome = _outcome(e, future, limits.episode_timeout_s)
            if outcome is not None:
                e.record_outcome(outcome, limits, lambda obs, e=e: observation_ids(tokenizer, obs, e.tools))
        live = [e for e in live if e.finish is None]


def _outcome(e: Episode, future, timeout_s: float) -> Outcome | None:
    left = timeout_s - (time.monotonic() - e.started)
    try:
        return future.result(timeout=max(left, 0.0))
    except FutureTimeout:
        e.errors.append(f"the episode's {timeout_s:g}s ran out while its environment was stepping")
        e.cut("deadline")
    except Exception as exc:  # noqa: BLE001 - an environment's own bug ends its episode, not the run
        e.errors.append(f"environment error: {type(exc).__name__}: {exc}")
        e.counts["env_errors"] += 1
        e.finish = "env_error"
    return None


def with_episode_rewards(groups: list[Group], scores: list[list[Score]]) -> list[list[Score]]:
    """The grader's scores, except where an episode brought its own reward (a black-box agent's return value)."""
    return [[Score(reward=c.trajectory.reward) if c.trajectory is not None and c.trajectory.reward is not None else s
             for c, s in zip(g.completions, row)] for g, row in zip(groups, scores)]

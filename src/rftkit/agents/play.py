"""One episode with scripted assistant turns and no model: what `rft env run` prints.

The turns are raw assistant texts (tool calls in the Hermes format); each is parsed, the
environment steps, and the episode follows the same rules and limits as in training
(agents/rollout.py `Episode`), except `max_length`, which counts tokens and needs a model.
If the script runs out while the episode still goes on, it ends with `finish_reason`
`script_ended`. A grader, when given, scores the last assistant turn with the whole
conversation (`sample.messages`).
"""

from __future__ import annotations

import time
from typing import Any

from rftkit.agents.environment import EnvironmentSpec
from rftkit.agents.rollout import Episode
from rftkit.agents.toolcall import parse_turn
from rftkit.types import Answer, Item


def play_scripted(env: EnvironmentSpec, item: Item, turns: list[str], grader=None) -> dict[str, Any]:
    world = env.new()
    start = world.reset(item)
    episode = Episode(item, world, [], world.tools(item), time.monotonic())
    for k, text in enumerate(turns):
        episode.counts["turns"] += 1
        episode.rewards.append(None)
        turn = parse_turn(text, f"call_{k}")
        if episode.record_turn(turn, env.limits):
            episode.record_outcome(world.step(turn), env.limits)
        if episode.finish:
            break
    else:
        episode.finish = episode.finish or "script_ended"
    reward, grader_error = None, None
    if grader is not None:
        score = grader.grade(item, Answer.of(episode.answer, episode.messages))
        reward, grader_error = score.reward, score.error
    elif any(r is not None for r in episode.rewards):
        reward = sum(r for r in episode.rewards if r is not None)
    counts = {key: episode.counts.get(key, 0) for key in ("turns", "tool_calls", "tool_errors", "tool_call_errors",
                                                          "truncated", "user_errors")}
    return {"item_id": item.id, "messages": [*start, *episode.messages], "tools": episode.tools,
            "answer": episode.answer, "reward": reward, "grader_error": grader_error,
            "turn_rewards": episode.rewards, "finish_reason": episode.finish, "errors": episode.errors,
            "counts": counts, "seconds": round(time.monotonic() - episode.started, 3)}

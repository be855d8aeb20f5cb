"""Agents: multi-turn episodes with tools and simulated users (docs/AGENTS.md).

- `environment`: the Environment protocol, episode limits, the `environment:` types table;
- `toolcall`: tool calls parsed from generated text (Hermes/Qwen `<tool_call>` JSON);
- `tools`: a tools file's functions as OpenAI schemas, run in the sandbox;
- `user`: the `user_simulator` environment (scripted or model-backed user turns);
- `rollout`: every live episode's next turn in one batch, token in, token out;
- `agent`, `server`: black-box agents with the `openai` client against an endpoint served from the policy.
"""

from rftkit.agents.environment import Environment, EnvironmentSpec, Outcome, build_environment
from rftkit.agents.rollout import run_episodes, with_episode_rewards

__all__ = ["Environment", "EnvironmentSpec", "Outcome", "build_environment", "run_episodes", "with_episode_rewards"]

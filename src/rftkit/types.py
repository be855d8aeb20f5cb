"""The small dataclasses every stage passes around (vocabulary of DESIGN.md).

rollout produces `Group`s of `Completion`s for an `Item`; grading returns a `Score` per
completion, which the step attaches with `Group.scored` (a new Group: nothing is written in
place); advantages are a tensor of their own in the step, so `Score.reward` always says what
the grader said.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass
class Item:
    """One dataset row: an OpenAI-format conversation ending with the user's turn."""

    id: str
    messages: list[dict[str, str]]
    reference_answer: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)  # every other field of the row
    source: str | None = None  # the mixture source it was drawn from (data.train as a list); None: one file

    def field(self, path: str) -> Any:
        """`item.<path>` for graders: top-level attributes first, then metadata (dotted)."""
        head, _, rest = path.partition(".")
        value = getattr(self, head) if head in ("id", "messages", "reference_answer") else self.metadata.get(head)
        for key in rest.split(".") if rest else []:
            value = value.get(key) if isinstance(value, dict) else None
        return value


@dataclass
class Score:
    """What a grader says. `reward=None` means the grading failed: the sample is masked."""

    reward: float | None
    breakdown: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    latency_s: float = 0.0

    @classmethod
    def failed(cls, error: str, latency_s: float = 0.0) -> Score:
        return cls(reward=None, error=error, latency_s=latency_s)


class Answer(str):
    """The text a grader scores. For a multi-turn trajectory also `.messages`: the conversation
    after the prompt (assistant turns with their tool calls, tool results, user turns)."""

    messages: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, text: str, messages: list[dict[str, Any]] | None) -> str:
        if messages is None:
            return text
        answer = cls(text)
        answer.messages = messages
        return answer


@dataclass
class Trajectory:
    """What a multi-turn episode adds to its Completion (agents/rollout.py)."""

    messages: list[dict[str, Any]]  # OpenAI messages after the prompt, tool calls and results included
    turn_spans: list[tuple[int, int]]  # [start, end) of each assistant turn in the completion's token_ids
    turn_rewards: list[float | None]  # the environment's reward for each assistant turn (None: none given)
    counts: dict[str, int] = field(default_factory=dict)  # turns, tool_calls, tool_errors, tool_call_errors, ...
    errors: list[str] = field(default_factory=list)  # failed tool calls and environment errors, in words
    reward: float | None = None  # the episode's own reward (a black-box agent's return value): replaces the grader's


@dataclass
class Completion:
    """One generated answer (or a multi-turn trajectory). Token ids exclude the prompt and any padding."""

    text: str
    token_ids: list[int]
    logprobs: list[float]  # sampling-time log-probs of token_ids (under the sampling distribution); may be empty
    finish_reason: str  # "stop" (end-of-turn token) or "length" (hit max_new_tokens)
    score: Score | None = None
    # 1 where the policy sampled the token (trained on), 0 where it did not (a tool's output in a
    # multi-turn trajectory); None means all ones, the single-turn case
    loss_mask: list[int] | None = None
    entropy: float = float("nan")  # sampling distribution's entropy summed over this completion's tokens
    version: int = 0  # the policy version that sampled it (staleness = learner version - version)
    trajectory: Trajectory | None = None  # a multi-turn episode's messages, turns and counts
    prompt_ids: list[int] | None = None  # its own prompt, when it differs from its group's (a black-box agent's)
    # reasoning models (rollout/thinking.py, set when reasoning.enabled): the thinking, the answer after it (None
    # with grade_thinking: graders see the whole text) and the tokens the thinking took; `text` stays whole
    reasoning: str | None = None
    answer_text: str | None = None
    thinking_tokens: int | None = None

    @property
    def answer(self) -> str:
        """What graders score: the answer part of a split completion, else the text; carrying the episode's
        messages for a trajectory."""
        text = self.text if self.answer_text is None else self.answer_text
        return Answer.of(text, self.trajectory.messages if self.trajectory else None)

    @property
    def model_tokens(self) -> int:
        """Tokens the policy generated (observations inserted by an environment excluded)."""
        return len(self.token_ids) if self.loss_mask is None else sum(self.loss_mask)

    def mask(self) -> list[int]:
        """The per-token loss mask, all ones unless the engine or environment said otherwise."""
        return [1] * len(self.token_ids) if self.loss_mask is None else self.loss_mask

    def with_score(self, score: Score) -> Completion:
        return replace(self, score=score)


@dataclass
class Group:
    """The `num_generations` completions of one item, plus the prompt they share."""

    item: Item
    prompt_ids: list[int]
    completions: list[Completion]

    @property
    def rewards(self) -> list[float | None]:
        return [c.score.reward if c.score else None for c in self.completions]

    def scored(self, scores: list[Score]) -> Group:
        """This group with `scores` (one per completion, in order) attached: a new Group."""
        if len(scores) != len(self.completions):
            raise ValueError(f"{len(scores)} scores for {len(self.completions)} completions")
        return replace(self, completions=[c.with_score(s) for c, s in zip(self.completions, scores)])

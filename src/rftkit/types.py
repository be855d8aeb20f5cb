"""The small dataclasses every stage passes around (vocabulary of DESIGN.md).

rollout produces `Group`s of `Completion`s for an `Item`; grading attaches a `Score` to
each completion; the advantage step fills `Completion.advantage` and never touches
`Score.reward`, so logs always show what the grader said.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Item:
    """One dataset row: an OpenAI-format conversation ending with the user's turn."""

    id: str
    messages: list[dict[str, str]]
    reference_answer: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)  # every other field of the row

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


@dataclass
class Completion:
    """One generated answer. Token ids exclude the prompt and any padding."""

    text: str
    token_ids: list[int]
    logprobs: list[float]  # sampling-time log-probs of token_ids (under the sampling distribution)
    finish_reason: str  # "stop" (end-of-turn token) or "length" (hit max_new_tokens)
    score: Score | None = None
    advantage: float = 0.0
    old_logp: Any = field(default=None, repr=False)  # [len(token_ids)] tensor during a mu > 1 or KL-penalty step


@dataclass
class Group:
    """The `num_generations` completions of one item, plus the prompt they share."""

    item: Item
    prompt_ids: list[int]
    completions: list[Completion]

    @property
    def rewards(self) -> list[float | None]:
        return [c.score.reward if c.score else None for c in self.completions]

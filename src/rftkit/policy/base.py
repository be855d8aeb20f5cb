"""The Policy protocol: the learner a stage trains, local here or in a Ray actor elsewhere.

A stage gives the policy `Row`s (prompt, completion, advantage, loss mask) and a `LossSpec`
and gets metrics back; it never holds the model, the optimizer or the reference model. The
policy's `version` counts optimizer steps, so an engine knows which weights sampled what.
`LocalPolicy` (policy/local.py) owns the module, optimizer, schedule and reference in this
process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class Row:
    """One completion as the update sees it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float | list[float] = 0.0  # one per row, or one per completion token (per-turn credit)
    loss_mask: list[int] = field(default_factory=list)  # per completion token: 1 = trained on; empty = all ones
    old_logp: torch.Tensor | None = None  # [len(completion_ids)] log-probs before this batch's first update (mu > 1)
    behaviour_logp: torch.Tensor | None = None  # [len(completion_ids)] log-probs of the (older) version that sampled it

    def __post_init__(self):
        if not self.loss_mask:
            self.loss_mask = [1] * len(self.completion_ids)

    @property
    def trains(self) -> bool:
        """Whether the policy-gradient term of this row is not zero."""
        return any(a != 0.0 for a in self.advantage) if isinstance(self.advantage, list) else self.advantage != 0.0


@dataclass(frozen=True)
class LossSpec:
    """Everything the GRPO loss needs besides the rows (algorithms/grpo.py holds the maths)."""

    epsilon: float = 0.2  # clip range of the probability ratio (the low side when epsilon_high is set)
    epsilon_high: float | None = None  # upper clip range (DAPO clip-higher); None = epsilon
    beta: float = 0.0  # KL-to-reference coefficient *in the loss* (a KL reward penalty is applied before advantages)
    kl_estimator: str = "k3"  # an algorithms.grpo.KL_ESTIMATORS key
    aggregation: str = "token_mean"  # an algorithms.grpo.AGGREGATIONS key
    temperature: float = 1.0  # log-probs are those of logits / temperature, the distribution sampled from
    max_new_tokens: int = 1  # the `constant` aggregation's length
    is_cap: float = 2.0  # rows with behaviour_logp (asynchronous training): importance weights truncated at this


class Policy(Protocol):
    version: int  # optimizer steps taken; increases with every update

    def logprobs(self, rows: list[Row], temperature: float = 1.0) -> list[torch.Tensor]:
        """Per-token log-probs of each row's completion under the current weights (no gradients)."""
        ...

    def reference_logprobs(self, rows: list[Row], temperature: float = 1.0) -> list[torch.Tensor]:
        """The same under the frozen reference (the starting model)."""
        ...

    def update(self, rows: list[Row], spec: LossSpec) -> dict[str, float]:
        """One optimizer step on the GRPO loss of `rows`; sums for the step's metrics and `grad_norm`."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


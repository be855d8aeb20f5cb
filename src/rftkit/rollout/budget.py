"""An on-policy thinking budget (`reasoning.budget_tokens`): at the budget the engine closes the block itself.

A completion's thinking is what it draws before the close tag (`reasoning.close_tag`). When a
row has drawn `limit` tokens without drawing the close tag's ids, the next `len(close_ids)`
tokens are not sampled: the engine feeds the close tag's ids, then sampling goes on (the
answer). Those inserted tokens are marked, get loss mask 0 and count in no normaliser, so
the update is over sampled tokens only and stays on-policy: the forced tokens are context,
like a tool's output in a multi-turn episode.

The random numbers are drawn as without a budget (one draw per row and step, forced or not),
so a row that never reaches its budget samples exactly what it would have, and a row that
does samples the same first `limit` tokens.
"""

from __future__ import annotations

import torch


class ThinkingBudget:
    """Per batch row of one decode call: whether its thinking block is closed, and where forcing stands."""

    def __init__(self, batch: int, limit: int, close_ids: list[int], max_new_tokens: int, device):
        if limit < 1 or not close_ids:
            raise ValueError("a thinking budget needs limit >= 1 and the close tag's token ids")
        self.limit = limit
        self.close = torch.tensor(close_ids, device=device)
        self.closed = torch.zeros(batch, dtype=torch.bool, device=device)  # [B] closed: sampled or forced
        self.next_forced = torch.full((batch,), -1, dtype=torch.long, device=device)  # [B] index into close; -1 none
        self.forced = torch.zeros(batch, max_new_tokens, dtype=torch.bool, device=device)  # [B, N] inserted tokens

    def apply(self, rows: torch.Tensor, alive: torch.Tensor, nxt: torch.Tensor, step: int) -> torch.Tensor:
        """The tokens rows [b] feed at `step`: what they drew, or the close tag's next id for rows being closed."""
        start = alive & ~self.closed[rows] & (self.next_forced[rows] < 0) & (step == self.limit)
        self.next_forced[rows[start]] = 0
        forcing = alive & (self.next_forced[rows] >= 0)
        if not bool(forcing.any()):
            return nxt
        at = rows[forcing]
        nxt = nxt.clone()
        nxt[forcing] = self.close[self.next_forced[at]]
        self.forced[at, step] = True
        self.next_forced[at] += 1
        finished = at[self.next_forced[at] == len(self.close)]
        self.next_forced[finished] = -1
        self.closed[finished] = True
        return nxt

    def observe(self, rows: torch.Tensor, generated: torch.Tensor, step: int) -> None:
        """After `step`'s tokens are written: rows whose last tokens are the close tag (sampled) are closed."""
        width = len(self.close)
        if step + 1 < width:
            return
        tail = generated[rows, step + 1 - width : step + 1]  # [b, L]
        self.closed[rows] |= (tail == self.close).all(-1)

    def inserted(self, row: int, length: int) -> list[int]:
        """Row's loss mask over its first `length` tokens: 0 where the engine inserted the token."""
        return (~self.forced[row, :length]).int().tolist()

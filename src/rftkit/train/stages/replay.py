"""Replay against forgetting (`replay: {path, weight, loss: sft}`): every GRPO update also backpropagates
`weight` x the SFT loss of `replay.batch_size` conversations of an older skill, in the same optimizer step.

    loss = L_GRPO(new task's rollouts) + weight * NLL(replay answers)   (token mean over the replay answers)

`replay/loss` logs the unweighted NLL (with weight 0 it is measured and nothing is trained on it: a
run's forgetting, in nats, without replay). Rows are OpenAI chat fine-tuning conversations
(data/rows.py), drawn by their own seeded sampler, whose state rides in the stage's checkpoint.
"""

from __future__ import annotations

from rftkit.algorithms.sft import conversation_examples, sft_pairs_loss
from rftkit.data.rows import load_rows
from rftkit.data.sampler import PromptSampler


class Replay:
    def __init__(self, cfg, tokenizer):
        r = cfg.replay
        self.weight, self.batch_size, self.micro, self.sft = r.weight, r.batch_size, cfg.train.micro_batch_size, cfg.sft
        rows = load_rows(r.path, "conversation", cfg.data.skip_bad_lines)
        self.examples = [e for row in rows for e in conversation_examples(tokenizer, row.messages)]
        self.sampler = PromptSampler(len(self.examples), cfg.train.seed + 1, cfg.data.shuffle)

    def loss(self, model) -> dict[str, float]:
        """Backpropagates weight x the replay batch's SFT loss into `model`; the unweighted loss and its tokens."""
        pairs = [self.examples[i] for i in self.sampler.take(self.batch_size)]
        train = self.weight > 0
        weights = [self.weight if train else 1.0] * len(pairs)
        loss, tokens = sft_pairs_loss(model, pairs, self.micro, self.sft.packing, self.sft.pack_length, weights,
                                      backward=train)
        return {"replay/loss": loss / self.weight if train else loss, "replay/tokens": tokens}

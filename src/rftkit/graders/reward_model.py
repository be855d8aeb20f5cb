"""`reward_model`: score a completion with a trained scalar reward model (a Hugging Face
`AutoModelForSequenceClassification` with `num_labels: 1`, e.g. the `final/` folder of an
`algorithm: reward_model` run).

    {"type": "reward_model", "path": "runs/rm/final", "normalize": "sigmoid", "batch_size": 32}

    >>> g = RewardModelGrader(path="runs/rm/final", normalize="sigmoid")  # doctest: +SKIP
    >>> item = Item(id="q", messages=[{"role": "user", "content": "What is 2+2?"}])  # doctest: +SKIP
    >>> score = g.grade(item, "ANSWER: 4")                                  # doctest: +SKIP
    >>> score.reward, score.breakdown                                     # doctest: +SKIP
    (0.849..., {'reward_model': 1.73...})

The scored sequence is the conversation `item.messages` + the completion as the assistant's
turn, tokenised exactly as `rftkit.models.sft_example` does (chat-template prompt ids, then
the answer's ids and eos): a reward model trained on `sft_example` pairs sees the same ids
at grading time. The reward is the raw score (`normalize: none`) or its sigmoid, in (0, 1);
the breakdown always holds the raw score under the grader's name. A model trained by rftkit's
`reward_model` stage stores `score_offset` in its config (the mean score of its training
answers) and scores are taken relative to it, so 0 is an average answer and the sigmoid a
meaningful probability-like scale; other models' scores are used as they are.

How this differs from calling the Hugging Face model:
- We pool ourselves (`score_pairs`): backbone, then the `score` head on the hidden state of
  each row's last real token, found from the row's length. HF's own forward takes the
  rightmost token that is not `config.pad_token_id`; many chat tokenizers pad with eos
  (rftkit's `load_tokenizer` does when a tokenizer has no pad token), and our sequences end
  with eos, so HF would score the token before it. It also runs the head on every
  position; we run it on one per row.
- `max_length` keeps the *last* `max_length` tokens (drops the start of the prompt): the
  score is read at the end of the answer, so that end must survive truncation.

The folder is checked when the grader is built (config, head shape, tokenizer, no weights
read); weights load on the first call, under a lock, as do forwards (the executor calls
from threads). The first call includes that load: give a large model `deadline_s`.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

from rftkit.errors import UserError
from rftkit.models.reward import backbone_and_head, conversation_ids, load_reward_model, score_pairs
from rftkit.types import Item, Score

NORMALIZE = ("none", "sigmoid")
_FIX = ("a reward-model folder holds an AutoModelForSequenceClassification with num_labels=1 and its tokenizer "
        "(the final/ folder of an `algorithm: reward_model` run, or model.save_pretrained(d); "
        "tokenizer.save_pretrained(d))")


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}: must be a positive integer (got {value!r})")
    return value


def check_folder(path: Any):
    """The config of the reward-model folder at `path`; ValueError naming the path and the fix.

    Reads config.json only and builds the model on the meta device (no memory, no weights)
    to check that it has a one-output `score` head.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if not isinstance(path, str) or not path:
        raise ValueError(f"path: must be the folder of a reward model (got {path!r}); {_FIX}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"path: no such folder {str(folder)!r} (a relative path in a grader file is relative to "
                         f"that file, else to the current directory {Path.cwd()}); {_FIX}")
    if not (folder / "config.json").exists():
        lora = (" (it holds a LoRA adapter: merge it with merge_and_unload() and save the full model)"
                if (folder / "adapter_config.json").exists() else "")
        raise ValueError(f"path: {folder} has no config.json{lora}; {_FIX}")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"path: cannot read {folder / 'config.json'}: {exc}") from None
    archs = config.architectures or []
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(f"path: {folder} holds a {', '.join(archs)}, not a sequence-classification reward model; "
                         f"{_FIX}")
    if config.num_labels != 1:
        raise ValueError(f"path: {folder} has num_labels={config.num_labels}, a reward model has one output "
                         f"(num_labels=1: one scalar score per sequence); {_FIX}")
    try:
        with torch.device("meta"):
            skeleton = AutoModelForSequenceClassification.from_config(config)
        backbone_and_head(skeleton)
    except ValueError as exc:
        raise ValueError(f"path: {folder}: {exc}") from None
    return config


class RewardModelGrader:
    """The score a trained reward model gives item.messages + the completion (module docstring)."""

    needs_reference = False
    concurrency = 1  # forwards are serialised by a lock; one lane thread keeps queued calls off the deadline clock

    def __init__(self, path: str, name: str = "reward_model", normalize: str = "none", batch_size: int = 32,
                 device: str = "cpu", max_length: int | None = None, deadline_s: float | None = None):
        """path: the model folder. normalize: `none` (raw score) or `sigmoid` (in (0, 1)).
        batch_size: samples per forward. device: `cpu`, `cuda`, `cuda:1`, ... max_length: keep
        the last this many tokens of a long conversation. deadline_s: per-call deadline
        (default the executor's `grading.timeout_s`); the first call also loads the weights."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: must be a non-empty string (got {name!r})")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize: must be one of {list(NORMALIZE)} (got {normalize!r})")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.max_length = None if max_length is None else _positive_int(max_length, "max_length")
        if deadline_s is not None:
            if isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) or not deadline_s > 0:
                raise ValueError(f"deadline_s: must be a positive number of seconds (got {deadline_s!r})")
            self.deadline_s = float(deadline_s)
        self.device = self._check_device(device)
        self.config = check_folder(path)
        self.path = str(Path(path).expanduser())
        self.tokenizer = self._load_tokenizer()
        self.name, self.normalize = name, normalize
        self._model = None
        self._lock = threading.Lock()

    @staticmethod
    def _check_device(device: Any) -> str:
        import torch

        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device: not a torch device {device!r} (e.g. cpu, cuda, cuda:1)") from None
        if parsed.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} but no GPU is visible here; use device: cpu")
        return str(device)

    def _load_tokenizer(self):
        from rftkit.models import load_tokenizer

        try:
            tokenizer = load_tokenizer(self.path)
        except (UserError, OSError, ValueError, TypeError) as exc:
            raise ValueError(f"path: cannot load the tokenizer of {self.path}: {exc}; "
                             "save it beside the model (tokenizer.save_pretrained(folder))") from None
        vocab = getattr(self.config.get_text_config(), "vocab_size", None)
        if vocab is not None and len(tokenizer) > vocab:
            raise ValueError(f"path: the tokenizer of {self.path} has {len(tokenizer)} tokens but the model only "
                             f"{vocab} embeddings; save the tokenizer the model was trained with")
        return tokenizer

    def model(self):
        """The model, loaded on first use (call with the lock held)."""
        if self._model is None:
            self._model = load_reward_model(self.path, device=self.device, tokenizer=self.tokenizer).eval()
        return self._model

    def grade(self, item: Item, text: str) -> Score:
        return self.grade_batch([(item, text)])[0]

    def grade_batch(self, calls: list[tuple[Item, str]]) -> list[Score]:
        import torch

        raw: list[float] = []
        # The lock covers tokenising too: a HF fast tokenizer is not thread-safe, and a call
        # abandoned at its deadline may still be running beside its replacement.
        with self._lock, torch.inference_mode():
            rows = [conversation_ids(self.tokenizer, item.messages, text) for item, text in calls]
            model = self.model()
            offset = float(getattr(model.config, "score_offset", 0.0) or 0.0)  # set by rftkit's reward_model stage
            for start in range(0, len(rows), self.batch_size):
                raw += (score_pairs(model, rows[start:start + self.batch_size], self.tokenizer.pad_token_id,
                                    self.max_length) - offset).tolist()
        return [Score(reward=self._normalized(r), breakdown={self.name: r}) for r in raw]

    def _normalized(self, raw: float) -> float:
        if self.normalize == "sigmoid":
            return 1.0 / (1.0 + math.exp(-raw)) if raw >= 0 else math.exp(raw) / (1.0 + math.exp(raw))
        return raw

    def close(self) -> None:
        with self._lock:
            self._model = None

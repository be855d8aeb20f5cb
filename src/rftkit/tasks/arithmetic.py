"""The bundled arithmetic task: "What is 47 + 18 - 9?" answered with a worked line.

One generator serves the tiny model's build corpus and the example data files. Every
problem has a fixed *split* given by a hash of its text, so the held-out test and
validation files can never share a problem with the build corpus or the training prompts,
however many of either are drawn.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from rftkit.tasks import SPLITS, distinct_problems



@dataclass(frozen=True)
class Problem:
    a: int
    op1: str
    b: int
    op2: str
    c: int

    @property
    def question(self) -> str:
        return f"What is {self.a} {self.op1} {self.b} {self.op2} {self.c}?"

    @property
    def intermediate(self) -> int:
        return self.a + self.b if self.op1 == "+" else self.a - self.b

    @property
    def answer(self) -> int:
        return self.intermediate + self.c if self.op2 == "+" else self.intermediate - self.c

    @property
    def solution(self) -> str:
        """The worked line the model is trained to write, ending in the Nova-style answer line."""
        mid = self.intermediate
        return f"{self.a} {self.op1} {self.b} = {mid}. {mid} {self.op2} {self.c} = {self.answer}. ANSWER: {self.answer}"

    @property
    def split(self) -> str:
        bucket = int(hashlib.sha256(self.question.encode()).hexdigest(), 16) % 10
        return SPLITS[min(bucket, 2)]


def random_problem(rng: random.Random) -> Problem:
    return Problem(rng.randint(1, 99), rng.choice("+-"), rng.randint(1, 99), rng.choice("+-"), rng.randint(1, 99))


def sample_problems(n: int, split: str, seed: int, exclude: set[str] | None = None) -> list[Problem]:
    """`n` distinct problems of one split, reproducible from `seed`."""
    return distinct_problems(n, split, seed, random_problem, exclude)


def to_item(p: Problem, idx: int, split: str) -> dict:
    """A DESIGN.md JSONL row for the problem."""
    return {
        "id": f"arith-{split}-{idx:05d}",
        "messages": [{"role": "user", "content": p.question}],
        "reference_answer": str(p.answer),
        "solution": p.solution,
    }


EXAMPLE_SIZES = {"train": (4000, 1), "val": (100, 2), "test": (300, 3)}  # split: (items, seed) of examples/arithmetic


def write_example_files(out_dir) -> list:
    """Write {train,val,test}.jsonl into `out_dir`: byte for byte the files in examples/arithmetic/ (tested)."""
    import json
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split, (n, seed) in EXAMPLE_SIZES.items():
        path = out_dir / f"{split}.jsonl"
        path.write_text("".join(json.dumps(to_item(p, i, split)) + "\n" for i, p in enumerate(sample_problems(n, split, seed=seed))))
        written.append(path)
    return written

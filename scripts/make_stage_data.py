"""Write examples/{sft,dpo,reward_model,kto}/{train,val}.jsonl for the offline stages (reproducible; re-run to regenerate).

    python scripts/make_stage_data.py                 # into examples/
    python scripts/make_stage_data.py --out /tmp/x    # somewhere else, same bytes

- sft: OpenAI chat fine-tuning rows, the question and its worked solution as the assistant turn.
- dpo: preference rows, the worked solution as `chosen` and, as `rejected`, the same worked
  line with exactly one arithmetic slip: the intermediate or the final result off by a small
  nonzero amount (+-1, +-2, +-10). A slipped intermediate is carried into the second line and
  the final is computed correctly from it, so the rejected answer is wrong for one reason
  only, the way a model that miscounts once is wrong; a random number would be a pair the
  policy can tell apart by its format or its magnitude rather than by doing the sum.
- kto: unpaired rows, one per problem: a fair coin makes it desirable (`label: true`, the
  worked solution) or undesirable (`label: false`, the same one-slip answer as DPO's rejected).
  No prompt has both, so the file holds no pairs to recover.

Train files draw train-split problems and val files val-split ones, so the hash split of
rftkit.tasks.arithmetic keeps every val question out of every train file. The sampling seeds
differ from make_arithmetic_data.py's (1, 2, 3), so these files hold other problems than
examples/arithmetic's, apart from chance repeats within a split (harmless: a repeat is either
a train prompt seen again or a held-out question that is still held out).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rftkit.tasks.arithmetic import Problem, sample_problems

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# (stage, split): (rows, problem seed); the slip seed of a dpo file is derived from its problem seed
FILES = {
    ("sft", "train"): (2000, 11),
    ("sft", "val"): (200, 12),
    ("dpo", "train"): (2000, 21),
    ("dpo", "val"): (200, 22),
    ("reward_model", "train"): (36000, 41),  # many pairs: see RM_KINDS
    ("reward_model", "val"): (400, 42),
}
# Kept apart from FILES because tests/data/test_stage_data.py pins FILES' folders; main() writes both.
KTO_FILES = {
    ("kto", "train"): (4000, 51),
    ("kto", "val"): (200, 52),
}
# What a reward-model pair's rejected answer gets wrong, drawn uniformly. `slip` alone (the DPO
# pairs) is not learnt by a last-token scalar head on the tiny model (docs/LOG.md); the other
# kinds are the consistency and format faults a preference set also holds. The train file is
# large (36k pairs, ~9k of each kind) because the head learns to check the ANSWER line against
# the work only after ~30k fresh pairs; on 2000 pairs, repeated, it memorised them instead and
# held-out accuracy fell (docs/LOG.md, session 4).
RM_KINDS = ("slip", "answer_mismatch", "no_work", "no_answer_line")
SLIPS = (-10, -2, -1, 1, 2, 10)


def apply(op: str, x: int, y: int) -> int:
    return x + y if op == "+" else x - y


def worked_solution(p: Problem, mid: int, final: int) -> str:
    """The worked line of `p` with the given intermediate and final; (p.intermediate, p.answer) gives p.solution."""
    return f"{p.a} {p.op1} {p.b} = {mid}. {mid} {p.op2} {p.c} = {final}. ANSWER: {final}"


def slipped_solution(p: Problem, rng: random.Random) -> str:
    """`p`'s worked line with one slip, e.g. 47 + 18 - 9 -> "47 + 18 = 66. 66 - 9 = 57. ANSWER: 57".

    The final answer always differs from p.answer: a slipped intermediate shifts the final by
    the same nonzero amount, since the second step adds or subtracts the same c.
    """
    delta = rng.choice(SLIPS)
    if rng.random() < 0.5:
        mid = p.intermediate + delta
        return worked_solution(p, mid, apply(p.op2, mid, p.c))
    return worked_solution(p, p.intermediate, p.answer + delta)


def sft_row(p: Problem, idx: int, split: str) -> dict:
    return {
        "id": f"sft-{split}-{idx:05d}",
        "messages": [{"role": "user", "content": p.question}, {"role": "assistant", "content": p.solution}],
    }


def dpo_row(p: Problem, idx: int, split: str, rng: random.Random) -> dict:
    return {
        "id": f"dpo-{split}-{idx:05d}",
        "messages": [{"role": "user", "content": p.question}],
        "chosen": p.solution,
        "rejected": slipped_solution(p, rng),
        "reference_answer": str(p.answer),
    }


def rejected_of_kind(p: Problem, kind: str, rng: random.Random) -> str:
    """A worse answer to `p`: a slip, an ANSWER line that contradicts the work, the bare answer, or no ANSWER line."""
    if kind == "slip":
        return slipped_solution(p, rng)
    if kind == "answer_mismatch":
        return f"{p.a} {p.op1} {p.b} = {p.intermediate}. {p.intermediate} {p.op2} {p.c} = {p.answer}. ANSWER: {p.answer + rng.choice(SLIPS)}"
    if kind == "no_work":
        return f"ANSWER: {p.answer}"
    return p.solution.rsplit(" ANSWER:", 1)[0]


def rm_row(p: Problem, idx: int, split: str, rng: random.Random) -> dict:
    kind = rng.choice(RM_KINDS)
    return {
        "id": f"rm-{split}-{idx:05d}",
        "messages": [{"role": "user", "content": p.question}],
        "chosen": p.solution,
        "rejected": rejected_of_kind(p, kind, rng),
        "kind": kind,
        "reference_answer": str(p.answer),
    }


def kto_row(p: Problem, idx: int, split: str, rng: random.Random) -> dict:
    desirable = rng.random() < 0.5
    return {
        "id": f"kto-{split}-{idx:05d}",
        "messages": [{"role": "user", "content": p.question}],
        "completion": p.solution if desirable else slipped_solution(p, rng),
        "label": desirable,
        "reference_answer": str(p.answer),
    }


def stage_rows(stage: str, split: str) -> list[dict]:
    n, seed = {**FILES, **KTO_FILES}[(stage, split)]
    problems = sample_problems(n, split, seed=seed)
    if stage == "sft":
        return [sft_row(p, i, split) for i, p in enumerate(problems)]
    # a string seed is hashed with SHA-512 by `random`, so it does not depend on PYTHONHASHSEED
    rng = random.Random(f"slip-{seed}")
    make_row = {"dpo": dpo_row, "kto": kto_row}.get(stage, rm_row)
    return [make_row(p, i, split, rng) for i, p in enumerate(problems)]


def write_stage_data(out: Path, files: dict = FILES) -> dict[Path, int]:
    """Write every file of `files` under `out` (out/<stage>/<split>.jsonl); returns rows written per path."""
    written = {}
    for stage, split in files:
        path = out / stage / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = stage_rows(stage, split)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        written[path] = len(rows)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=EXAMPLES, help="root folder; files go to OUT/{sft,dpo,reward_model,kto}/{train,val}.jsonl")
    args = ap.parse_args()
    for path, n in {**write_stage_data(args.out), **write_stage_data(args.out, KTO_FILES)}.items():
        print(f"wrote {path}: {n} rows")


if __name__ == "__main__":
    main()

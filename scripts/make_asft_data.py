"""Write examples/asft/{train,val}.jsonl: logged (messages, response, reward) rows for A-SFT.

    python scripts/make_asft_data.py        # ~1 min on a 2-core CPU

The "log" is what a deployed model would leave behind: the bundled tiny model's own
sampled answers (temperature 1) to arithmetic prompts, each graded by `answer_match`, then
made noisy the way logged feedback is: each reward is flipped with probability
`--flip` (seeded). Training prompts are train-split problems, validation prompts val-split
ones, with seeds no other example file uses.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from rftkit.data.items import item_from_row
from rftkit.graders.answer import AnswerMatchGrader
from rftkit.models import load_model, load_tokenizer
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine
from rftkit.tasks.arithmetic import sample_problems, to_item

OUT = Path(__file__).resolve().parent.parent / "examples" / "asft"


def logged_rows(items, n: int, flip: float, seed: int, model_spec: str = "bundled:tiny-arith") -> list[dict]:
    torch.manual_seed(seed)
    tokenizer, model = load_tokenizer(model_spec), load_model(model_spec)
    groups = HFEngine(model, tokenizer).generate(items, n, SamplingParams(temperature=1.0, max_new_tokens=48))
    grader, rng, rows = AnswerMatchGrader(), random.Random(seed), []
    for g in groups:
        for j, c in enumerate(g.completions):
            reward = grader.grade(g.item, c.text).reward
            if rng.random() < flip:
                reward = 1.0 - reward
            rows.append({"id": f"{g.item.id}-{j}", "messages": g.item.messages, "response": c.text, "reward": reward,
                         "reference_answer": g.item.reference_answer})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--prompts", type=int, default=1000, help="training prompts (val: a tenth)")
    ap.add_argument("-n", type=int, default=4, help="logged answers per prompt")
    ap.add_argument("--flip", type=float, default=0.1, help="probability that a logged reward is wrong")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, n_prompts, seed in (("train", args.prompts, 31), ("val", max(args.prompts // 10, 1), 32)):
        rows_in = [{**to_item(p, i, split), "id": f"asft-{split}-{i:05d}"} for i, p in enumerate(sample_problems(n_prompts, split, seed=seed))]
        rows = logged_rows([item_from_row(r, split) for r in rows_in], args.n, args.flip, seed)
        with open(args.out / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        mean = sum(r["reward"] for r in rows) / len(rows)
        print(f"wrote {args.out / f'{split}.jsonl'}: {len(rows)} rows, mean logged reward {mean:.3f}")


if __name__ == "__main__":
    main()

"""Write examples/arithmetic/{train,val,test}.jsonl (reproducible; re-run to regenerate).

Test and val problems come from hash buckets the tiny model's build corpus never draws
from; train prompts come from the build corpus's bucket but are only prompts (the
reference answer is what the grader checks, the solution field is for SFT baselines).
"""

from __future__ import annotations

import json
from pathlib import Path

from rftkit.tasks.arithmetic import sample_problems, to_item

OUT = Path(__file__).resolve().parent.parent / "examples" / "arithmetic"
SIZES = {"train": (4000, 1), "val": (100, 2), "test": (300, 3)}  # split: (items, seed)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for split, (n, seed) in SIZES.items():
        problems = sample_problems(n, split, seed=seed)
        with open(OUT / f"{split}.jsonl", "w") as f:
            for i, p in enumerate(problems):
                f.write(json.dumps(to_item(p, i, split)) + "\n")
        print(f"wrote {OUT / f'{split}.jsonl'}: {n} items")


if __name__ == "__main__":
    main()

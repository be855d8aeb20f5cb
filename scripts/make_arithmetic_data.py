"""Write examples/arithmetic/{train,val,test}.jsonl (reproducible; re-run to regenerate).

Test and val problems come from hash buckets the tiny model's build corpus never draws
from; train prompts come from the build corpus's bucket but are only prompts (the
reference answer is what the grader checks, the solution field is for SFT baselines).
The same function writes the demo's data when rftkit is installed without this repository.
"""

from __future__ import annotations

from pathlib import Path

from rftkit.tasks.arithmetic import write_example_files

OUT = Path(__file__).resolve().parent.parent / "examples" / "arithmetic"


def main() -> None:
    for path in write_example_files(OUT):
        print(f"wrote {path}: {sum(1 for _ in open(path))} items")


if __name__ == "__main__":
    main()

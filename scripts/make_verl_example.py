"""Write examples/verl/{train,val}.parquet: the arithmetic Items in verl's parquet layout (reproducible).

    python scripts/make_verl_example.py [--check]

Each Item of examples/arithmetic/{train,val}.jsonl becomes the row verl's own
`examples/data_preprocess/gsm8k.py` would write for it:

    data_source   "arithmetic"
    prompt        the Item's messages (a list of {role, content})
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": reference_answer}
    extra_info    {"split", "index", "answer": the worked solution, "question": the user's turn}

so `rft train examples/verl/grpo.yaml` reads what a verl user already has. `--check` fails if the
files in the repository hold other rows than the script writes (rows, not bytes: pyarrow versions
write their own name into the file).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rftkit.data import load_items

REPO = Path(__file__).resolve().parent.parent
SOURCE, OUT = REPO / "examples" / "arithmetic", REPO / "examples" / "verl"
ROW_GROUP = 1000  # several row groups, as a real dataset has: the loader's row-group index is exercised


def verl_rows(split: str) -> list[dict]:
    return [{"data_source": "arithmetic", "prompt": item.messages, "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": item.reference_answer},
             "extra_info": {"split": split, "index": index, "answer": item.metadata.get("solution"),
                            "question": item.messages[-1]["content"]}}
            for index, item in enumerate(load_items(SOURCE / f"{split}.jsonl"))]


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in ("train", "val"):
        path = out / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(verl_rows(split)), path, row_group_size=ROW_GROUP, compression="zstd")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="regenerate into a temporary folder and compare")
    args = parser.parse_args()
    if not args.check:
        for path in write(OUT):
            print(f"wrote {path}: {pq.ParquetFile(path).metadata.num_rows} rows")
        return
    with tempfile.TemporaryDirectory() as tmp:
        stale = [p.name for p in write(Path(tmp)) if not (OUT / p.name).exists()
                 or not pq.read_table(p).equals(pq.read_table(OUT / p.name))]
    if stale:
        sys.exit(f"examples/verl/{', '.join(stale)} differ from what the script writes: run scripts/make_verl_example.py")
    print("examples/verl is up to date")


if __name__ == "__main__":
    main()

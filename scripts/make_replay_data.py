"""examples/replay/: the new task of the replay example, arithmetic prompts that ask for the answer only.

    python scripts/make_replay_data.py

brief_train.jsonl / brief_val.jsonl are examples/arithmetic/train.jsonl / test.jsonl with the question
prefixed by "Answer only: " (the brevity grader rewards short completions). Deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "Answer only: "


def write(src: Path, dst: Path, limit: int) -> None:
    rows = [json.loads(line) for line in src.read_text().splitlines()[:limit]]
    with dst.open("w") as f:
        for row in rows:
            messages = [{**m, "content": PREFIX + m["content"]} if m["role"] == "user" else m for m in row["messages"]]
            f.write(json.dumps({"id": "brief-" + row["id"], "messages": messages,
                                "reference_answer": row["reference_answer"]}) + "\n")


if __name__ == "__main__":
    out = ROOT / "examples" / "replay"
    out.mkdir(exist_ok=True)
    write(ROOT / "examples" / "arithmetic" / "train.jsonl", out / "brief_train.jsonl", 2000)
    write(ROOT / "examples" / "arithmetic" / "test.jsonl", out / "brief_val.jsonl", 100)
    print(f"wrote {out / 'brief_train.jsonl'} and {out / 'brief_val.jsonl'}")

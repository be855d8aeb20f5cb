"""The fuzz suites (tests/fuzz) with the long Hypothesis profile: 5,000 examples per property.

    python bench/fuzz.py [--examples 5000]

Prints, per property, how many examples passed and what share was accepted (parsed into a
result) versus refused with the project's own error; the last line is `N examples, F failing`.
A failing example is printed by Hypothesis in full (`Falsifying example: ...`).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=5000, help="max_examples of the long profile")
    args = parser.parse_args()
    env = {**os.environ, "HYPOTHESIS_PROFILE": "long", "RFTKIT_FUZZ_EXAMPLES": str(args.examples)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz",
                           "--hypothesis-show-statistics"], cwd=REPO, env=env, capture_output=True, text=True)
    total = failing = 0
    for block in re.split(r"\n(?=tests/fuzz/\S+::\S+:)", done.stdout):
        head = re.match(r"tests/fuzz/(\S+)::(\S+):", block)
        counts = re.search(r"(\d+) passing examples, (\d+) failing examples", block)
        if not head or not counts:
            continue
        passed, failed = int(counts.group(1)), int(counts.group(2))
        total, failing = total + passed + failed, failing + failed
        shares = ", ".join(f"{share} {what}" for share, what in re.findall(r"\* ([\d.]+%), ((?:accepted|refused|built|"
                                                                          r"evaluated|rendered|scored|failed score|"
                                                                          r"\d scored)[^\n]*)", block))
        print(f"{head.group(1)}::{head.group(2)}: {passed} passed, {failed} failing" + (f" ({shares})" if shares else ""))
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:])
    print(f"{total} examples, {failing} failing")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()

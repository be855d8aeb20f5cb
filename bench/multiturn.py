"""Multi-turn rollouts: episodes per second, every live episode batched vs one episode at a time.

    python bench/multiturn.py [--episodes 32] [--group 1] [--repeats 3] [--json]

The bundled tool model on the bundled tool task (examples/tools: calculator and lookup,
1-3 tool calls per problem, tools run in the sandbox), temperature 1. "batched" is
`run_episodes` on all episodes at once (each round one generate call for every live
episode, their tool calls concurrent); "one at a time" is the same function called once
per episode. `--group 8` plays 4 problems x 8 episodes, the shape of a GRPO step (the
episodes of a problem share their first prompt's prefill). Both draw the same problems; the order alternates between repeats so neither
always runs warm. Reported: episodes per second of each (median over repeats), their ratio,
turns and tool calls per episode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from rftkit.agents import build_environment, run_episodes
from rftkit.data import load_items
from rftkit.models import load_model, load_tokenizer
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "examples" / "tools"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group", type=int, default=1, help="episodes per problem (GRPO's num_generations); "
                        "1: every episode a different problem")
    parser.add_argument("--model", default="bundled:tiny-tools")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    env = build_environment({"type": "tools", "tools": str(TASK / "tools.py"), "max_turns": 5, "max_length": 256})
    items = load_items(TASK / "test.jsonl")[: args.episodes // args.group]
    tokenizer = load_tokenizer(args.model)
    engine = HFEngine(load_model(args.model), tokenizer)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=48)

    def batched():
        return run_episodes(engine, tokenizer, env, items, args.group, sampling)

    def one_at_a_time():
        return [g for item in items for _ in range(args.group) for g in run_episodes(engine, tokenizer, env, [item], 1, sampling)]

    run_episodes(engine, tokenizer, env, items[:4], 1, sampling)  # warm the sandbox pool and the kernels
    times = {"batched": [], "one_at_a_time": []}
    turns = {"batched": [], "one_at_a_time": []}
    calls = {"batched": [], "one_at_a_time": []}
    for repeat in range(args.repeats):
        order = [("batched", batched), ("one_at_a_time", one_at_a_time)]
        for name, fn in order if repeat % 2 == 0 else order[::-1]:
            torch.manual_seed(repeat)
            t0 = time.perf_counter()
            groups = fn()
            times[name].append(time.perf_counter() - t0)
            episodes = [c.trajectory for g in groups for c in g.completions]
            turns[name].append(statistics.fmean(t.counts["turns"] for t in episodes))
            calls[name].append(statistics.fmean(t.counts["tool_calls"] for t in episodes))
    per_s = {name: args.episodes / statistics.median(ts) for name, ts in times.items()}
    report = {"episodes": args.episodes, "group": args.group, "repeats": args.repeats, "model": args.model,
              "episodes_per_s": {k: round(v, 2) for k, v in per_s.items()},
              "speedup": round(per_s["batched"] / per_s["one_at_a_time"], 2),
              "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
              "turns_per_episode": {k: round(statistics.fmean(v), 2) for k, v in turns.items()},
              "tool_calls_per_episode": {k: round(statistics.fmean(v), 2) for k, v in calls.items()},
              "torch_threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key}: {value}")
    print(f"batched multi-turn rollouts: {report['speedup']:.1f}x the episodes per second of one at a time")


if __name__ == "__main__":
    main()

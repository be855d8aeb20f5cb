"""Build the bundled reasoning model: src/rftkit/assets/tiny-reason (a variant of tiny-arith).

    python scripts/build_tiny_reasoning_model.py      # a few minutes on a 2-core CPU

tiny-arith fine-tuned with rftkit's SFT loss to answer in a reasoning model's shape:

    <think>18 + 33 = 51. 51 + 64 = 115. check: 18 + 33 = 51. check: 51 + 64 = 115.</think>ANSWER: 115
    CONFIDENCE: 0.7

- the thinking is the worked steps plus 0-4 redundant `check:` lines (uniformly drawn): wasteful,
  variable-length reasoning that token-efficiency training can remove without touching accuracy;
- the stated confidence is drawn uniformly from 0.1 ... 0.9, whatever the answer: uncalibrated,
  which calibration training can fix.

It stops, as tiny-arith's build does, at the first measurement of sampled accuracy (200
validation-split problems, temperature 1) at or above `--target-accuracy`, so the model is still
imperfect. Seeded: a rerun on the same machine gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from rftkit.algorithms.sft import sft_step_loss
from rftkit.graders.answer import AnswerMatchGrader
from rftkit.models import ASSETS, load_model, load_tokenizer, sft_example
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine
from rftkit.rollout.thinking import split_thinking
from rftkit.tasks.arithmetic import Problem, random_problem, sample_problems
from rftkit.types import Item

MAX_CHECKS = 4
CONFIDENCES = [round(0.1 * k, 1) for k in range(1, 10)]


def thinking_answer(p: Problem, rng: random.Random) -> str:
    mid = p.intermediate
    steps = [f"{p.a} {p.op1} {p.b} = {mid}.", f"{mid} {p.op2} {p.c} = {p.answer}."]
    checks = [f"check: {rng.choice(steps)}" for _ in range(rng.randint(0, MAX_CHECKS))]
    thinking = " ".join(steps + checks)
    return f"<think>{thinking}</think>ANSWER: {p.answer}\nCONFIDENCE: {rng.choice(CONFIDENCES)}"


def train_problems(rng: random.Random):
    while True:
        p = random_problem(rng)
        if p.split == "train":
            yield p


def measure(model, tokenizer, problems) -> dict:
    """Sampled accuracy, the share of well-formed answers, and the mean thinking length in characters."""
    items = [Item(id=str(i), messages=[{"role": "user", "content": p.question}], reference_answer=str(p.answer))
             for i, p in enumerate(problems)]
    groups = HFEngine(model, tokenizer).generate(items, 1, SamplingParams(temperature=1.0, max_new_tokens=128))
    grader, right, formed, thinking = AnswerMatchGrader(), 0, 0, []
    for g in groups:
        text = g.completions[0].text
        split = split_thinking(text, "<think>", "</think>")
        right += grader.grade(g.item, split.answer).reward
        formed += split.status == "ok" and "CONFIDENCE:" in split.answer
        thinking.append(len(split.reasoning))
    return {"accuracy": right / len(groups), "well_formed": formed / len(groups),
            "thinking_chars": sum(thinking) / len(thinking)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="bundled:tiny-arith")
    ap.add_argument("--out", type=Path, default=ASSETS / "tiny-reason")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--eval-from", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--target-accuracy", type=float, default=0.3)
    ap.add_argument("--target-format", type=float, default=0.9)
    args = ap.parse_args()

    t0 = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tokenizer, model = load_tokenizer(args.base), load_model(args.base)
    monitor = sample_problems(200, "val", seed=20_000 + args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    warmup, gen, history, seen = 50, train_problems(rng), [], {}
    for step in range(1, args.max_steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / warmup)
        batch = [next(gen) for _ in range(args.batch_size)]
        pairs = [sft_example(tokenizer, [{"role": "user", "content": p.question}], thinking_answer(p, rng)) for p in batch]
        model.train()
        loss = sft_step_loss(model, [a for a, _ in pairs], [b for _, b in pairs], tokenizer.pad_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
        if step >= args.eval_from and step % args.eval_every == 0:
            model.eval()
            seen = measure(model, tokenizer, monitor)
            history.append({"step": step, "loss": round(loss.item(), 4), **seen})
            print(f"  step {step}: {seen}", flush=True)
            if seen["accuracy"] >= args.target_accuracy and seen["well_formed"] >= args.target_format:
                break
    else:
        sys.exit(f"never reached accuracy {args.target_accuracy} with format {args.target_format} (last {seen})")

    if args.out.exists():
        shutil.rmtree(args.out)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    build = {"base": args.base, "seed": args.seed, "steps": step, "batch_size": args.batch_size, "lr": args.lr,
             "max_checks": MAX_CHECKS, "confidences": CONFIDENCES, "build_seconds": round(time.time() - t0, 1),
             "torch": torch.__version__, "history": history}
    (args.out / "build_info.json").write_text(json.dumps(build, indent=2) + "\n")
    print(f"saved {args.out} after {step} steps in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()

"""Build the bundled tiny model: src/rftkit/assets/tiny-arith (a Hugging Face folder).

    python scripts/build_tiny_model.py            # ~10 min on a 2-core CPU

1. Generate a synthetic corpus of train-split arithmetic problems with worked answers
   (rftkit.tasks.arithmetic; test/val problems are excluded by their hash bucket).
2. Train a byte-level BPE tokenizer (digits kept as single tokens) with a ChatML template.
3. Train a 4-layer Llama from scratch with rftkit's own SFT loss.
4. Stop while the model is still imperfect: every `--eval-every` steps, sample answers to
   200 validation-split problems at temperature 1 and stop at the first measurement at or
   above `--target-accuracy`. Learning is abrupt on this task, so the stopping point is
   chosen by measured accuracy, not by step count.

Everything is seeded; a rerun on the same machine produces the same weights.
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
from rftkit.models import ASSETS, sft_example
from rftkit.models.tiny import tiny_llama, train_tokenizer
from rftkit.rollout.hf import HFEngine
from rftkit.rollout.base import SamplingParams
from rftkit.tasks.arithmetic import random_problem, sample_problems
from rftkit.types import Item


def train_problems(rng: random.Random):
    while True:
        p = random_problem(rng)
        if p.split == "train":
            yield p


def tokenizer_corpus(rng: random.Random) -> list[str]:
    gen = train_problems(rng)
    texts = []
    for _ in range(20000):
        p = next(gen)
        texts += [p.question, p.solution]
    return texts


def sampled_accuracy(model, tokenizer, problems, max_new_tokens: int) -> float:
    items = [Item(id=str(i), messages=[{"role": "user", "content": p.question}], reference_answer=str(p.answer)) for i, p in enumerate(problems)]
    groups = HFEngine(model, tokenizer).generate(items, 1, SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens))
    grader = AnswerMatchGrader()
    return sum(grader.grade(g.item, g.completions[0].text).reward for g in groups) / len(groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ASSETS / "tiny-arith")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-steps", type=int, default=4000)
    ap.add_argument("--eval-from", type=int, default=500)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--target-accuracy", type=float, default=0.25)
    ap.add_argument("--vocab-size", type=int, default=320)
    args = ap.parse_args()

    t0 = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tokenizer = train_tokenizer(tokenizer_corpus(rng), args.vocab_size)
    model = tiny_llama(tokenizer, hidden=256, layers=4, heads=4, intermediate=512)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tokenizer: {len(tokenizer)} tokens; model: {n_params / 1e6:.2f}M parameters", flush=True)

    monitor = sample_problems(200, "val", seed=10_000 + args.seed)  # not the shipped val file's seed
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    warmup = 100
    gen = train_problems(rng)
    history = []
    accuracy = 0.0
    for step in range(1, args.max_steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / warmup)
        batch = [next(gen) for _ in range(args.batch_size)]
        pairs = [sft_example(tokenizer, [{"role": "user", "content": p.question}], p.solution) for p in batch]
        model.train()
        loss = sft_step_loss(model, [a for a, _ in pairs], [b for _, b in pairs], tokenizer.pad_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
        if step >= args.eval_from and step % args.eval_every == 0:
            accuracy = sampled_accuracy(model, tokenizer, monitor, max_new_tokens=48)
            history.append({"step": step, "loss": round(loss.item(), 4), "val_sampled_accuracy": accuracy})
            print(f"  step {step}: sampled accuracy on 200 val problems {accuracy:.3f}", flush=True)
            if accuracy >= args.target_accuracy:
                break
    else:
        sys.exit(f"never reached accuracy {args.target_accuracy} in {args.max_steps} steps (last {accuracy:.3f})")

    if args.out.exists():
        shutil.rmtree(args.out)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    build = {
        "seed": args.seed, "steps": step, "batch_size": args.batch_size, "lr": args.lr, "parameters": n_params,
        "build_seconds": round(time.time() - t0, 1), "torch": torch.__version__, "history": history,
    }
    (args.out / "build_info.json").write_text(json.dumps(build, indent=2) + "\n")
    print(f"saved {args.out} after {step} steps in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()

"""Build the bundled tool-using model: src/rftkit/assets/tiny-tools (a Hugging Face folder).

    python scripts/build_tiny_tools_model.py            # ~10 min on a 2-core CPU

1. Worked trajectories of train-split tool problems (rftkit.tasks.tools): the user's
   question, one `<tool_call>` per assistant turn, the tools' results, `ANSWER: n`.
2. A byte-level BPE tokenizer (digits single tokens) with the tool chat template
   (rftkit.models.chat.TOOLS_CHAT_TEMPLATE: ChatML, Hermes tool calls, `tool` turns).
3. A 4-layer Llama trained from scratch with rftkit's SFT loss on the assistant turns only
   (mask 0 on the prompt and on tool results), laid out token for token as a rollout lays
   out an episode (rftkit.models.chat.trajectory_ids).
4. Stopped while still imperfect: every `--eval-every` steps, 200 validation-split problems
   are played as real episodes (tools run in the sandbox) at temperature 1, and the build
   stops at the first measurement at or above `--target-accuracy`.

Everything is seeded; a rerun on the same machine produces the same weights.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from rftkit.agents import build_environment, run_episodes
from rftkit.algorithms.sft import sft_loss
from rftkit.graders.answer import AnswerMatchGrader
from rftkit.models import ASSETS
from rftkit.models.batching import pad_right, token_logprobs
from rftkit.models.chat import TOOLS_CHAT_TEMPLATE, conversation_ids, trajectory_ids
from rftkit.models.tiny import tiny_llama, train_tokenizer
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine
from rftkit.tasks.tools import random_problem, sample_problems, tools_source
from rftkit.types import Item


def train_problems(rng: random.Random):
    while True:
        p = random_problem(rng)
        if p.split == "train":
            yield p


def example(tokenizer, tools, p) -> tuple[list[int], list[int]]:
    """(input ids, target mask over input positions 1..) of one worked trajectory."""
    prompt = conversation_ids(tokenizer, [{"role": "user", "content": p.question}], tools)
    steps = []
    for k, text in enumerate(p.turns):
        obs = [{"role": "tool", "tool_call_id": f"call_{k}-0", "content": p.results[k]}] if k < len(p.results) else []
        steps.append((text, obs))
    ids, mask = trajectory_ids(tokenizer, steps, tools)
    return prompt + ids, ([0] * len(prompt) + mask)[1:]


def accuracy(model, tokenizer, env, problems) -> float:
    items = [Item(id=str(i), messages=[{"role": "user", "content": p.question}], reference_answer=str(p.answer))
             for i, p in enumerate(problems)]
    groups = run_episodes(HFEngine(model, tokenizer), tokenizer, env, items, 1, SamplingParams(1.0, max_new_tokens=48))
    grader = AnswerMatchGrader()
    return sum(grader.grade(g.item, g.completions[0].text).reward for g in groups) / len(groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ASSETS / "tiny-tools")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--eval-from", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--target-accuracy", type=float, default=0.3)
    ap.add_argument("--vocab-size", type=int, default=400)
    args = ap.parse_args()

    t0 = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="rftkit-tiny-tools-"))
    (work / "tools.py").write_text(tools_source())
    env = build_environment({"type": "tools", "tools": str(work / "tools.py"), "max_turns": 5, "max_length": 256})
    tools = env.new().tools(Item(id="-", messages=[]))

    gen = train_problems(rng)
    texts = []
    for _ in range(8000):
        p = next(gen)
        texts += [p.question, *p.turns, *p.results]
    texts += ["tools: calculator, lookup", "assistant\n", "tool\n"] * 200
    tokenizer = train_tokenizer(texts, args.vocab_size)
    tokenizer.chat_template = TOOLS_CHAT_TEMPLATE
    model = tiny_llama(tokenizer, hidden=256, layers=4, heads=4, intermediate=512)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tokenizer: {len(tokenizer)} tokens; model: {n_params / 1e6:.2f}M parameters", flush=True)

    monitor = sample_problems(200, "val", seed=10_000 + args.seed)  # not the shipped val file's seed
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    warmup, history, score = 100, [], 0.0
    for step in range(1, args.max_steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / warmup)
        batch = [example(tokenizer, tools, next(gen)) for _ in range(args.batch_size)]
        input_ids = pad_right([ids for ids, _ in batch], tokenizer.pad_token_id)  # [B, T]
        attention = pad_right([[1] * len(ids) for ids, _ in batch], 0)
        mask = pad_right([m for _, m in batch], 0).float()  # [B, T-1]
        model.train()
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        loss = sft_loss(token_logprobs(logits, input_ids), mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
        if step >= args.eval_from and step % args.eval_every == 0:
            model.eval()
            score = accuracy(model, tokenizer, env, monitor)
            history.append({"step": step, "loss": round(loss.item(), 4), "val_sampled_accuracy": score})
            print(f"  step {step}: task success on 200 val problems (sampled episodes) {score:.3f}", flush=True)
            if score >= args.target_accuracy:
                break
    else:
        sys.exit(f"never reached accuracy {args.target_accuracy} in {args.max_steps} steps (last {score:.3f})")

    if args.out.exists():
        shutil.rmtree(args.out)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    build = {"seed": args.seed, "steps": step, "batch_size": args.batch_size, "lr": args.lr, "parameters": n_params,
             "build_seconds": round(time.time() - t0, 1), "torch": torch.__version__, "history": history}
    (args.out / "build_info.json").write_text(json.dumps(build, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"saved {args.out} after {step} steps in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()

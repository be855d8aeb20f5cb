"""vLLM vs the HF engine on a GPU: rollout tokens/s, GRPO step time and training MFU (issue 17's GPU check).

    python bench/gpu_step.py [--size 0.5b] [--device cuda] [--steps 6] [--peak-tflops 989] [--json]
    python bench/gpu_step.py --size tiny --device cpu --steps 2     # a smoke run of the script itself

A random-initialised Qwen2 model of Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV
heads, MLP 4864; the bundled tokenizer's vocabulary, so ~0.36B parameters rather than 0.49B) is
written to a temporary folder with the bundled chat template. Random weights rarely emit the
end-of-turn token, so every completion runs to its length: both engines do the same work.

1. Rollout: 64 prompts x 8 samples x 128 new tokens, temperature 1, with each engine (bf16 on a
   GPU), after a warm-up call; tokens/s = completion tokens / wall time.
2. GRPO steps: `rft train examples/arithmetic/grpo.yaml` on that model with `rollout.engine=hf`
   and `=vllm` (bf16, 16 prompts x 8, 128 tokens; a regex grader random text passes about half the
   time, so every step has reward variance and trains), median `perf/time_per_step` over steps 2..N.
   MFU of the update = 6 x parameters x trained tokens / (`perf/time_update` x peak FLOP/s).
Not measured here: TRL's GRPOTrainer with its colocated vLLM (the CPU comparison is
bench/grpo_vs_trl.py).
Needs vLLM in the environment it runs in (on CPU: the venv scripts/test_vllm.sh makes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2),
          "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1)}  # head_dim 64: vLLM's CPU attention has no kernel for 16


def make_model(size: str, folder: Path) -> int:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rftkit.models import load_tokenizer

    tok = load_tokenizer("bundled:tiny-arith")
    config = Qwen2Config(vocab_size=len(tok), max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SHAPES[size])
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def rollout_tokens_per_s(kind: str, folder: Path, device: str, dtype: str, prompts: list[list[int]], n: int,
                         max_new: int) -> float:
    from rftkit.models import load_model, load_tokenizer
    from rftkit.rollout.base import SamplingParams

    tok = load_tokenizer(str(folder))
    sampling = SamplingParams(temperature=1.0, max_new_tokens=max_new)
    if kind == "hf":
        from rftkit.rollout.hf import HFEngine

        engine = HFEngine(load_model(str(folder), dtype, device), tok)
    else:
        from rftkit.rollout.vllm import VLLMEngine

        engine = VLLMEngine(str(folder), tok, dtype=dtype, max_model_len=1024, gpu_memory_utilization=0.5)
    rows = [p for p in prompts for _ in range(n)]
    engine.generate_from_ids(rows[:n], sampling)  # warm-up
    start = time.perf_counter()
    out = engine.generate_from_ids(rows, sampling)
    wall = time.perf_counter() - start
    return sum(len(c.token_ids) for c in out) / wall


def grpo_steps(kind: str, folder: Path, device: str, dtype: str, steps: int, params: int, peak: float,
               prompt_len: float) -> dict:
    with tempfile.TemporaryDirectory() as run:
        cmd = [sys.executable, "-m", "rftkit", "train", str(REPO / "examples/arithmetic/grpo.yaml"),
               f"model.path={folder}", f"model.dtype={dtype}", f"model.device={device}", f"rollout.engine={kind}",
               f"train.steps={steps}", "rollout.max_new_tokens=128", "run.eval_interval=0", f"run.dir={run}/r",
               "run.checkpoint_interval=1000", "--quiet",
               # random weights never answer right: a grader that random text passes about half the time, so
               # groups have reward variance and every step trains (answer_match would give no update at all)
               'grader={"type": "regex", "pattern": "7", "mode": "search"}']
        subprocess.run(cmd, check=True, timeout=3600)
        rows = [json.loads(line) for line in Path(run, "r", "metrics.jsonl").read_text().splitlines()][1:]
    step = statistics.median(r["perf/time_per_step"] for r in rows)
    update = statistics.median(r["perf/time_update"] for r in rows)
    tokens = statistics.median(16 * 8 * (r["response_length/mean"] + prompt_len) for r in rows)  # rows x (prompt + reply)
    return {"step_s": step, "update_s": update, "generate_s": statistics.median(r["perf/time_generate"] for r in rows),
            "mfu": 6 * params * tokens / (update * peak * 1e12)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="0.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200: 989)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    from rftkit.models import load_tokenizer, prompt_ids

    tok = load_tokenizer("bundled:tiny-arith")
    lines = (REPO / "examples/arithmetic/test.jsonl").read_text().splitlines()
    prompts = [prompt_ids(tok, json.loads(line)["messages"]) for line in lines[:64]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        params = make_model(args.size, folder)
        result = {"machine": torch.cuda.get_device_name() if args.device.startswith("cuda") else
                  f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                  "size": args.size, "parameters": params, "dtype": dtype,
                  "rollout_tokens_per_s": {k: rollout_tokens_per_s(k, folder, args.device, dtype, prompts, 8, 128)
                                           for k in ("hf", "vllm")},
                  "grpo": {k: grpo_steps(k, folder, args.device, dtype, args.steps, params, args.peak_tflops,
                                         statistics.fmean(map(len, prompts))) for k in ("hf", "vllm")}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    r, g = result["rollout_tokens_per_s"], result["grpo"]
    print(f"{result['machine']}: random Qwen2 ({args.size}, {params / 1e6:.0f}M parameters), {dtype}")
    print(f"  rollout tokens/s: vLLM {r['vllm']:.0f}, HF engine {r['hf']:.0f} ({r['vllm'] / r['hf']:.2f}x)")
    for k in ("hf", "vllm"):
        print(f"  GRPO step ({k}): {g[k]['step_s']:.2f} s (generate {g[k]['generate_s']:.2f} s, update "
              f"{g[k]['update_s']:.2f} s, MFU {100 * g[k]['mfu']:.1f}%)")


if __name__ == "__main__":
    main()

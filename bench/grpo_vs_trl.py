"""Seconds per GRPO step: rftkit against Hugging Face TRL's GRPOTrainer, everything else held equal.

    python bench/grpo_vs_trl.py --steps 30 --rounds 1 [--threads N] [--out docs/bench/grpo_vs_trl.json]

Both tools train the bundled tiny model (`bundled:tiny-arith`) on examples/arithmetic/train.jsonl
with the answer-match grader. The settings come from one place: the rftkit config
`load_config(examples/arithmetic/grpo.yaml, overrides)`; the TRL side is derived from it
(`trl_settings`) and the pairing is printed and saved (`settings`). Beyond setting the knobs,
the script checks that the two runs really are the same experiment:

- prompt token ids: every prompt of the run, tokenised by TRL's own `_tokenize_prompts`, equals
  rftkit's `prompt_ids` (same chat template, same special tokens) -- the run stops otherwise;
- stopping: TRL's end-of-turn ids equal rftkit's `HFEngine.stop_ids`;
- sampling: both tools reseed torch with `--seed` right before their first generation and see
  the same 16 prompts in the same order (TRL's dataset is pre-ordered by rftkit's PromptSampler,
  `shuffle_dataset=False`), so with equal sampling settings step 1's 128 completions must be
  token-for-token identical (`checks.step1_completions_identical`);
- the update: same completions, rewards and loss give the same step-1 gradient norm
  (`checks.step1_grad_norm_rel_diff`, ~1e-6 expected from float summation order);
- the optimiser: lr, betas, eps, weight decay and implementation read back from both live
  optimisers after training.
After step 1 the runs drift apart (float noise changes later samples), so the reward curves are
compared as curves, printed side by side: speed must not come from learning less.

Timing. Each tool runs in its own subprocess, one at a time (never concurrently: on a small
machine two torch processes slow each other far more than 2x), so the RSS high-water mark
(VmHWM, which includes each library's import footprint) is per tool. `--rounds R` repeats the
pair R times in ABBA order (rftkit first in even rounds, TRL first in odd ones) so slow drift on a
shared machine hits both; round r runs both tools with seed `--seed` + r, so the reward curves,
averaged over rounds, average over that many sampling seeds. A step is, for rftkit,
`perf/time_per_step` from the run's metrics.jsonl (prompt sampling, generation, grading, advantages, forward/backward, clipping,
optimiser step); for TRL, on_step_begin -> on_step_end of a TrainerCallback (the same work:
generation, rewards, advantages, forward/backward, clipping, optimiser and scheduler step).
Neither includes metric logging, which is reported separately as `iteration` time (between
consecutive step starts). Step 1 is excluded from every median as warm-up (allocator, first-call
paths); the first step of every round is dropped. Rollout tokens/s = completion tokens generated
(end-of-turn token included, as both tools count it) / generation time, summed over the measured
steps; TRL's generation time is timed around GRPOTrainer._generate (tokenise, generate, decode),
rftkit's is `perf/time_generate` (the same three things).

The last line printed is exactly `speedup: X.XX` = TRL's median s/step / rftkit's.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "arithmetic" / "grpo.yaml"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}


# ---- shared helpers ---------------------------------------------------------------------------


def rftkit_config(args, run_dir: str | None = None):
    """The one source of truth for both tools' settings."""
    from rftkit.config import load_config

    rows = args.prompts_per_step * args.num_generations
    overrides = [
        f"train.steps={args.steps}", f"train.threads={args.threads}", f"train.seed={args.seed}",
        f"train.prompts_per_step={args.prompts_per_step}", f"rollout.num_generations={args.num_generations}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        # TRL forwards the whole 128-row batch at once (per_device_train_batch_size=128, no accumulation);
        # rftkit's shipped config uses 64-row micro-batches. Same work either way; matched here.
        f"train.micro_batch_size={rows}",
        "model.device=cpu", "model.dtype=float32",
        "run.checkpoint_interval=0", "run.sample_interval=0", "run.eval_interval=0",
        f"run.dir={run_dir or tempfile.gettempdir() + '/unused'}",
        *args.set,
    ]
    cfg = load_config(CONFIG, overrides)
    # What the TRL side cannot mirror must have the value whose TRL twin is set below.
    assert cfg.algorithm.advantage == "group_mean_std", "TRL twin is scale_rewards='group' only for group_mean_std"
    assert cfg.algorithm.loss_aggregation == "token_mean", "TRL twin is loss_type='dapo' only for token_mean"
    assert cfg.algorithm.beta == 0.0, "beta > 0 would load a reference model in both; this bench keeps beta = 0"
    assert not cfg.lora.enabled, "full fine-tuning only"
    assert cfg.train.warmup_steps == 0, "both schedules are constant with no warmup"
    return cfg


def adamw_defaults() -> dict:
    """rftkit builds torch.optim.AdamW(params, lr=, weight_decay=): betas and eps are torch's defaults."""
    import torch

    sig = inspect.signature(torch.optim.AdamW).parameters
    return {"betas": tuple(sig["betas"].default), "eps": sig["eps"].default}


def trl_settings(cfg) -> dict:
    """GRPOConfig keyword arguments matching `cfg` (see the table printed by `settings_table`)."""
    adam = adamw_defaults()
    rows = cfg.train.prompts_per_step * cfg.rollout.num_generations
    return dict(
        max_steps=cfg.train.steps,
        # TRL 1.16: per_device_train_batch_size counts completions; generation_batch_size =
        # per_device * steps_per_generation = 128 = prompts_per_step * num_generations.
        per_device_train_batch_size=rows, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=cfg.rollout.num_generations, num_iterations=1,
        max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, min_p=None,
        repetition_penalty=1.0,  # rftkit's HFEngine always passes 1.0
        learning_rate=cfg.train.lr, optim="adamw_torch",  # torch.optim.AdamW, as rftkit (HF's default is the fused one)
        adam_beta1=adam["betas"][0], adam_beta2=adam["betas"][1], adam_epsilon=adam["eps"],
        weight_decay=cfg.train.weight_decay, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=cfg.train.max_grad_norm,
        beta=cfg.algorithm.beta, epsilon=cfg.algorithm.epsilon, loss_type="dapo", scale_rewards="group",
        mask_truncated_completions=False,
        use_vllm=False, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False,  # TRL defaults to True (recomputes activations); rftkit does not checkpoint
        seed=cfg.train.seed, shuffle_dataset=False,  # the dataset is already in rftkit's prompt order
        logging_steps=1, logging_strategy="steps", save_strategy="no", report_to="none", disable_tqdm=True,
        log_completions=False, dataloader_num_workers=0, dataloader_pin_memory=False, remove_unused_columns=False,
    )


def settings_table(cfg) -> list[tuple[str, str, str]]:
    """(setting, rftkit option = value, TRL option = value) rows: what the report prints and saves."""
    t = trl_settings(cfg)
    rows = cfg.train.prompts_per_step * cfg.rollout.num_generations
    adam = adamw_defaults()
    return [
        ("prompts per step", f"train.prompts_per_step={cfg.train.prompts_per_step}",
         f"per_device_train_batch_size/num_generations={t['per_device_train_batch_size']}/{t['num_generations']}"),
        ("generations per prompt", f"rollout.num_generations={cfg.rollout.num_generations}", f"num_generations={t['num_generations']}"),
        ("completions per optimizer step", f"{rows}", f"per_device_train_batch_size={rows}, gradient_accumulation_steps=1, steps_per_generation=1"),
        ("rows per forward/backward", f"train.micro_batch_size={cfg.train.micro_batch_size}", f"per_device_train_batch_size={rows}"),
        ("updates per batch (mu)", "1 (fixed)", "num_iterations=1"),
        ("max new tokens", f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}", f"max_completion_length={t['max_completion_length']}"),
        ("temperature", f"rollout.temperature={cfg.rollout.temperature}", f"temperature={t['temperature']}"),
        ("top_p / top_k / min_p", f"rollout.top_p={cfg.rollout.top_p}, top_k={cfg.rollout.top_k} (off)", f"top_p={t['top_p']}, top_k={t['top_k']}, min_p=None"),
        ("repetition penalty", "1.0 (HFEngine passes it)", "repetition_penalty=1.0"),
        ("stop tokens", "HFEngine.stop_ids (tokenizer eos + generation_config eos)", "eos_token_ids (same rule; checked equal)"),
        ("learning rate", f"train.lr={cfg.train.lr}", f"learning_rate={t['learning_rate']}"),
        ("optimizer", f"torch AdamW betas={adam['betas']} eps={adam['eps']}", f"optim=adamw_torch adam_beta1/2={t['adam_beta1']}/{t['adam_beta2']} adam_epsilon={t['adam_epsilon']}"),
        ("weight decay", f"train.weight_decay={cfg.train.weight_decay}", f"weight_decay={t['weight_decay']}"),
        ("schedule", f"constant, train.warmup_steps={cfg.train.warmup_steps}", "lr_scheduler_type=constant, warmup_steps=0"),
        ("max grad norm", f"train.max_grad_norm={cfg.train.max_grad_norm}", f"max_grad_norm={t['max_grad_norm']}"),
        ("KL coefficient", f"algorithm.beta={cfg.algorithm.beta}", f"beta={t['beta']} (no reference model)"),
        ("clip epsilon", f"algorithm.epsilon={cfg.algorithm.epsilon}", f"epsilon={t['epsilon']} (epsilon_high=epsilon)"),
        ("advantage", f"algorithm.advantage={cfg.algorithm.advantage}", "scale_rewards=group ((r-mean)/(std+1e-4), unbiased std)"),
        ("loss aggregation", f"algorithm.loss_aggregation={cfg.algorithm.loss_aggregation}", "loss_type=dapo (sum / step's completion tokens)"),
        ("truncated completions", "kept in the loss", "mask_truncated_completions=False"),
        ("weights", "full fine-tuning (lora.enabled=false)", "no peft_config"),
        ("precision / device", f"model.dtype={cfg.model.dtype}, model.device=cpu", "bf16=False, fp16=False, use_cpu=True"),
        ("gradient checkpointing", "none", "gradient_checkpointing=False (TRL default True)"),
        ("generation engine", "rftkit decode loop (rollout/decode.py; HF generate for other layouts)", "use_vllm=False (transformers generate)"),
        ("grader", "answer_match", "reward fn: rftkit extract_answer, abs_tol 1e-6 (asserted = AnswerMatchGrader)"),
        ("data order", f"PromptSampler(seed={cfg.train.seed})", "same order, shuffle_dataset=False"),
        ("seed", f"train.seed={cfg.train.seed}", f"seed={t['seed']}; torch reseeded before step 1's generation in both"),
        ("threads", f"train.threads={cfg.train.threads}", f"torch.set_num_threads({cfg.train.threads})"),
        ("logging / saving", "metrics.jsonl every step; no checkpoints, samples or validation", "logging_steps=1, save_strategy=no, report_to=none, disable_tqdm=True"),
    ]


def prompt_order(cfg, n_items: int) -> list[int]:
    """The item indices rftkit's Trainer trains on, step after step."""
    from rftkit.data.sampler import PromptSampler

    sampler = PromptSampler(n_items, cfg.train.seed, cfg.data.shuffle)
    return [i for _ in range(cfg.train.steps) for i in sampler.take(cfg.train.prompts_per_step)]


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def digest(token_rows: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(token_rows).encode()).hexdigest()[:16]


# ---- the two children -------------------------------------------------------------------------


def child_rftkit(args) -> dict:
    import torch
    from rftkit.models import stop_token_ids
    from rftkit.train.loop import Callback, Trainer
    from rftkit.train.sinks import read_jsonl

    work = Path(tempfile.mkdtemp(prefix="bench-rftkit-"))
    cfg = rftkit_config(args, str(work / "run"))

    class Bench(Callback):
        """Reseeds before step 1 (to compare samples with TRL) and records what the metrics lack."""

        def __init__(self):
            self.starts, self.tokens, self.threads, self.digests = [], [], [], []
            self.rss_at_start = None

        def on_step_begin(self, step):
            self.starts.append(time.perf_counter())
            if step == 1:
                self.rss_at_start = rss_mb()
                torch.manual_seed(cfg.train.seed)

        def on_step_end(self, step, result):
            rows = [c.token_ids for g in result.groups for c in g.completions]
            self.tokens.append(sum(len(r) for r in rows))
            self.threads.append(torch.get_num_threads())
            self.digests.append(digest(rows))
            if args.sync_rng:  # draw what TRL's shuffle_sequence_dict draws between generations (torch.randperm)
                torch.randperm(len(rows))

    bench = Bench()
    trainer = Trainer(cfg, quiet=True, callbacks=[bench])
    trainer.train()
    rows = read_jsonl(work / "run" / "metrics.jsonl")
    opt = trainer.policy.optimizer.param_groups[0]
    return {
        "tool": "rftkit",
        "step_s": [r["perf/time_per_step"] for r in rows],
        "generate_s": [r["perf/time_generate"] for r in rows],
        "grade_s": [r["perf/time_grade"] for r in rows],
        "update_s": [r["perf/time_update"] for r in rows],
        "iteration_s": [b - a for a, b in zip(bench.starts, bench.starts[1:])],
        "completion_tokens": bench.tokens,
        "mean_completion_length": [r["response_length/mean"] for r in rows],
        "reward": [r["critic/rewards/mean"] for r in rows],
        "grad_norm": [r["actor/grad_norm"] for r in rows],
        "entropy": [r["actor/entropy"] for r in rows],
        "peak_rss_mb": peak_rss_mb(),
        "rss_at_train_start_mb": bench.rss_at_start,
        "threads": sorted(set(bench.threads)),
        "stop_ids": stop_token_ids(trainer.tokenizer, trainer.policy.module),
        "step1_completions_digest": bench.digests[0],
        "completions_digests": bench.digests,
        "optimizer": {"type": type(trainer.policy.optimizer).__name__, **{k: opt.get(k) for k in ("lr", "betas", "eps", "weight_decay", "amsgrad", "foreach", "fused")}},
    }


def child_trl(args) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rftkit.data import load_items
    from rftkit.graders.answer import AnswerMatchGrader, extract_answer
    from rftkit.models import load_model, load_tokenizer, prompt_ids, stop_token_ids
    from rftkit.types import Item

    torch.set_num_threads(args.threads)  # rftkit does this from train.threads; TRL leaves torch's default
    cfg = rftkit_config(args)
    items = load_items(cfg.data.train, require_reference=True)
    ordered = [items[i] for i in prompt_order(cfg, len(items))]
    dataset = Dataset.from_list([{"prompt": it.messages, "reference_answer": str(it.reference_answer)} for it in ordered])
    tokenizer = load_tokenizer(cfg.model.path)
    torch.manual_seed(cfg.train.seed)
    model = load_model(cfg.model.path, "float32", "cpu")
    rftkit_stop_ids = stop_token_ids(tokenizer, model)  # computed as HFEngine does, before TRL touches the model
    grader = AnswerMatchGrader()
    rewards_seen = []

    def answer_match(completions, reference_answer, **kwargs) -> list[float]:
        """rftkit's answer_match for TRL: 1.0 if the number after the last `ANSWER:` equals the reference."""
        out = []
        for completion, ref in zip(completions, reference_answer):
            text = completion[0]["content"] if isinstance(completion, list) else completion
            answer = extract_answer(text)
            reward = float(answer is not None and math.isclose(answer, float(ref), abs_tol=1e-6))
            assert reward == grader.grade(Item(id="-", messages=[], reference_answer=ref), text).reward
            out.append(reward)
        rewards_seen.append(statistics.fmean(out))
        return out

    class Clock(TrainerCallback):
        def __init__(self):
            self.begins, self.ends, self.logs, self.threads = [], [], [], []
            self.rss_at_start = None

        def on_train_begin(self, args_, state, control, **kw):
            self.rss_at_start = rss_mb()

        def on_step_begin(self, args_, state, control, **kw):
            self.begins.append(time.perf_counter())

        def on_step_end(self, args_, state, control, **kw):
            self.ends.append(time.perf_counter())
            self.threads.append(torch.get_num_threads())

        def on_log(self, args_, state, control, logs=None, **kw):
            self.logs.append({"step": state.global_step, **(logs or {})})

    class BenchGRPOTrainer(GRPOTrainer):
        """GRPOTrainer, plus: reseed before the first generation and time generation and rewards."""

        def __init__(self, *a, **k):
            self.gen_s, self.gen_tokens, self.reward_s, self.digests = [], [], [], []
            super().__init__(*a, **k)

        def _generate(self, prompts):
            first = not self.gen_s
            if first:
                torch.manual_seed(cfg.train.seed)
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            self.gen_s.append(time.perf_counter() - t0)
            completion_ids = out[1]
            self.gen_tokens.append(sum(len(c) for c in completion_ids))
            self.digests.append(digest([list(c) for c in completion_ids]))
            return out

        def _calculate_rewards(self, *a, **k):
            t0 = time.perf_counter()
            out = super()._calculate_rewards(*a, **k)
            self.reward_s.append(time.perf_counter() - t0)
            return out

    work = tempfile.mkdtemp(prefix="bench-trl-")
    config = GRPOConfig(output_dir=work, **trl_settings(cfg))
    clock = Clock()
    trainer = BenchGRPOTrainer(model=model, reward_funcs=answer_match, args=config, train_dataset=dataset,
                               processing_class=tokenizer, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # one printed dict per step otherwise

    # Fairness checks before any step: identical prompt ids (TRL's own tokenisation path) and stop ids.
    trl_ids, _, _ = trainer._tokenize_prompts([row["prompt"] for row in dataset])
    ours = [prompt_ids(tokenizer, it.messages) for it in ordered]
    mismatched = [i for i, (a, b) in enumerate(zip(trl_ids, ours)) if list(a) != list(b)]
    if mismatched or len(trl_ids) != len(ours):
        raise SystemExit(f"prompt token ids differ between TRL and rftkit at rows {mismatched[:5]}: "
                         f"TRL {list(trl_ids[mismatched[0]])} vs rftkit {ours[mismatched[0]]}")
    gen = trainer.generation_config
    trainer.train()

    logs = [row for row in clock.logs if "reward" in row]
    opt = trainer.optimizer.param_groups[0]
    n = len(clock.ends)
    return {
        "tool": "trl",
        "step_s": [b - a for a, b in zip(clock.begins, clock.ends)],
        "generate_s": trainer.gen_s[:n],
        "grade_s": trainer.reward_s[:n],
        "iteration_s": [b - a for a, b in zip(clock.begins, clock.begins[1:])],
        "completion_tokens": trainer.gen_tokens[:n],
        "mean_completion_length": [row["completions/mean_length"] for row in logs],
        "reward": [row["reward"] for row in logs],
        "reward_from_reward_fn": rewards_seen[:n],
        "grad_norm": [row.get("grad_norm") for row in logs],
        "entropy": [row.get("entropy") for row in logs],
        "peak_rss_mb": peak_rss_mb(),
        "rss_at_train_start_mb": clock.rss_at_start,
        "threads": sorted(set(clock.threads)),
        "stop_ids": sorted(trainer.eos_token_ids),
        "rftkit_stop_ids": rftkit_stop_ids,
        "prompt_ids_checked": len(ours),
        "prompt_ids_identical": True,
        "generation_config": {k: getattr(gen, k) for k in ("do_sample", "temperature", "top_p", "top_k", "min_p",
                                                           "repetition_penalty", "max_new_tokens", "eos_token_id", "pad_token_id")},
        "step1_completions_digest": trainer.digests[0],
        "completions_digests": trainer.digests,
        "optimizer": {"type": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer).__name__,
                      **{k: opt.get(k) for k in ("lr", "betas", "eps", "weight_decay", "amsgrad", "foreach", "fused")}},
        "trl_version": trl.__version__,
    }


# ---- the parent: run, check, summarise --------------------------------------------------------


def machine() -> dict:
    import torch
    import transformers
    import trl

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "rftkit_commit": commit, "loadavg_start": os.getloadavg()}


def run_child(tool: str, args, log_dir: Path, round_: int) -> dict:
    result = log_dir / f"{tool}-{round_}.json"
    log = log_dir / f"{tool}-{round_}.log"
    cmd = [sys.executable, __file__, "--child", tool, "--result", str(result), "--steps", str(args.steps),
           "--threads", str(args.threads), "--seed", str(args.seed + round_), "--prompts-per-step", str(args.prompts_per_step),
           "--num-generations", str(args.num_generations), "--max-new-tokens", str(args.max_new_tokens)]
    for pair in args.set:
        cmd += ["--set", pair]
    if args.sync_rng:
        cmd.append("--sync-rng")
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print(f"round {round_ + 1}/{args.rounds}: {tool} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=None if args.verbose else f, stderr=subprocess.STDOUT if not args.verbose else None)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:] if log.exists() else ""
        raise SystemExit(f"{tool} child failed (exit {proc.returncode}); log {log}:\n{tail}")
    out = json.loads(result.read_text())
    out["round"], out["wall_s"] = round_, time.perf_counter() - t0
    print(f"  {tool}: median {statistics.median(out['step_s'][1:] or out['step_s']):.3f} s/step, "
          f"wall {out['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return out


def summarise(runs: list[dict]) -> dict:
    """Pool the measured steps (step 1 of each round dropped) of one tool's rounds."""
    def measured(key):
        return [v for r in runs for v in r[key][1:]]

    steps, gen, tokens = measured("step_s"), measured("generate_s"), measured("completion_tokens")
    n_steps = min(len(r["reward"]) for r in runs)
    return {
        "median_s_per_step": statistics.median(steps),
        "per_round_median_s_per_step": [statistics.median(r["step_s"][1:]) for r in runs],
        "median_generate_s": statistics.median(gen),
        "median_grade_s": statistics.median(measured("grade_s")),
        "median_rest_of_step_s": statistics.median([s - g - r for run in runs for s, g, r in
                                                    zip(run["step_s"][1:], run["generate_s"][1:], run["grade_s"][1:])]),
        "median_iteration_s": statistics.median([v for r in runs for v in r["iteration_s"][1:]]),
        "rollout_tokens_per_s": sum(tokens) / sum(gen),
        "completion_tokens_per_step_s": sum(tokens) / sum(steps),  # tokens per second of whole step
        "mean_completion_length": statistics.fmean([v for r in runs for v in r["mean_completion_length"]]),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "rss_at_train_start_mb": max(r["rss_at_train_start_mb"] or 0 for r in runs),
        "reward_curve": [statistics.fmean(r["reward"][i] for r in runs) for i in range(n_steps)],
        "measured_steps": len(steps),
    }


def t975(df: int) -> float:
    """Two-sided 95% Student t quantile (Cornish-Fisher expansion of the normal's; within 0.01 for df >= 5)."""
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def reward_gap(rft: list[dict], trl_runs: list[dict]) -> dict:
    """Per seed (round): rftkit's mean reward over the run minus TRL's, with the mean gap and its 95% t interval."""
    by_round = {r["round"]: r for r in trl_runs}
    gaps = [statistics.fmean(a["reward"]) - statistics.fmean(by_round[a["round"]]["reward"]) for a in rft if a["round"] in by_round]
    out = {"per_seed": gaps, "seeds": len(gaps), "mean": statistics.fmean(gaps) if gaps else float("nan")}
    if len(gaps) > 1:
        se = statistics.stdev(gaps) / math.sqrt(len(gaps))
        t = t975(len(gaps) - 1)
        out.update({"se": se, "ci95": [out["mean"] - t * se, out["mean"] + t * se]})
    return out


def checks(rft: list[dict], trl_runs: list[dict], rows: int) -> dict:
    a, b = rft[0], trl_runs[0]
    g1, g2 = a["grad_norm"][0], b["grad_norm"][0]
    opt_keys = ("lr", "betas", "eps", "weight_decay", "amsgrad", "foreach", "fused")
    return {
        "prompt_ids_identical": b["prompt_ids_identical"], "prompt_ids_checked": b["prompt_ids_checked"],
        "stop_ids_equal": sorted(b["stop_ids"]) == sorted(a["stop_ids"]) == sorted(b["rftkit_stop_ids"]),
        "stop_ids": {"rftkit": a["stop_ids"], "trl": b["stop_ids"]},
        "trl_generation_config": b["generation_config"],
        "step1_completions_identical": a["step1_completions_digest"] == b["step1_completions_digest"],
        # steps from the start whose completions are token-identical in both tools (with --sync-rng, many)
        "identical_leading_steps": next((i for i, (x, y) in enumerate(zip(a["completions_digests"], b["completions_digests"]))
                                         if x != y), min(len(a["completions_digests"]), len(b["completions_digests"]))),
        "step1_reward": {"rftkit": a["reward"][0], "trl": b["reward"][0]},
        "step1_grad_norm": {"rftkit": g1, "trl": g2},
        "step1_grad_norm_rel_diff": abs(g1 - g2) / max(abs(g1), 1e-12) if g1 is not None and g2 is not None else None,
        # the tokens this script counts for TRL's tokens/s agree with TRL's own completions/mean_length
        "trl_token_count_matches_logged_length": all(abs(tok - length * rows) < 0.5 for r in trl_runs
                                                     for tok, length in zip(r["completion_tokens"], r["mean_completion_length"])),
        "trl_logged_reward_equals_reward_fn": all(math.isclose(x, y, abs_tol=1e-6) for r in trl_runs
                                                  for x, y in zip(r["reward"], r["reward_from_reward_fn"])),
        "optimizer": {"rftkit": a["optimizer"], "trl": b["optimizer"],
                      "equal": all(a["optimizer"].get(k) == b["optimizer"].get(k) for k in opt_keys)},
        "threads": {"rftkit": sorted({t for r in rft for t in r["threads"]}), "trl": sorted({t for r in trl_runs for t in r["threads"]})},
        "reward_gap": reward_gap(rft, trl_runs),
    }


def report(cfg, summary: dict, chk: dict, args) -> None:
    r, t = summary["rftkit"], summary["trl"]
    width = max(len(s) for s, _, _ in settings_table(cfg))
    print("matched settings (rftkit option <-> TRL option):")
    for name, ours, theirs in settings_table(cfg):
        print(f"  {name:<{width}}  {ours}  <->  {theirs}")
    print("\nfairness checks:")
    print(f"  prompt token ids identical ({chk['prompt_ids_checked']} prompts): {chk['prompt_ids_identical']}")
    print(f"  stop ids equal: {chk['stop_ids_equal']} {chk['stop_ids']}")
    print(f"  step-1 completions token-identical (same seed): {chk['step1_completions_identical']}; "
          f"identical leading steps: {chk['identical_leading_steps']}")
    if "ci95" in (gap := chk["reward_gap"]):
        print(f"  mean reward, rftkit - TRL, per seed over {gap['seeds']} seeds: {gap['mean']:+.4f} "
              f"(s.e. {gap['se']:.4f}, 95% CI [{gap['ci95'][0]:+.4f}, {gap['ci95'][1]:+.4f}])")
    rel, norms = chk["step1_grad_norm_rel_diff"], chk["step1_grad_norm"]
    print(f"  step-1 grad norm rftkit {norms['rftkit']} vs TRL {norms['trl']}" + (f" (rel diff {rel:.1e})" if rel is not None else ""))
    print(f"  TRL token count = completions/mean_length x {args.prompts_per_step * args.num_generations}: {chk['trl_token_count_matches_logged_length']}; "
          f"TRL logged reward = reward fn mean: {chk['trl_logged_reward_equals_reward_fn']}")
    print(f"  optimizer settings equal: {chk['optimizer']['equal']}; threads rftkit {chk['threads']['rftkit']} TRL {chk['threads']['trl']}")
    rows = [("median s/step (step 1 excluded)", "median_s_per_step", "{:.3f}"), ("  generation s", "median_generate_s", "{:.3f}"),
            ("  grading s", "median_grade_s", "{:.4f}"), ("  rest (advantages + update) s", "median_rest_of_step_s", "{:.3f}"),
            ("median s/iteration (incl. logging)", "median_iteration_s", "{:.3f}"),
            ("rollout tokens/s (tokens / gen time)", "rollout_tokens_per_s", "{:.0f}"),
            ("mean completion length (tokens)", "mean_completion_length", "{:.1f}"),
            ("peak RSS MB (VmHWM)", "peak_rss_mb", "{:.0f}"), ("RSS at train start MB", "rss_at_train_start_mb", "{:.0f}")]
    print(f"\n{'':38} {'rftkit':>10} {'TRL':>10}")
    for label, key, fmt in rows:
        print(f"{label:38} {fmt.format(r[key]):>10} {fmt.format(t[key]):>10}")
    print(f"(rounds {args.rounds}, measured steps per tool {r['measured_steps']}, threads {args.threads}; "
          f"per-round medians rftkit {[round(x, 3) for x in r['per_round_median_s_per_step']]} "
          f"TRL {[round(x, 3) for x in t['per_round_median_s_per_step']]})")
    print("\nmean reward per step (mean over rounds):")
    print(f"{'step':>5} {'rftkit':>8} {'TRL':>8}")
    for i, (x, y) in enumerate(zip(r["reward_curve"], t["reward_curve"]), 1):
        print(f"{i:>5} {x:8.3f} {y:8.3f}")
    half = max(len(r["reward_curve"]) // 2, 1)
    print(f"{'mean':>5} {statistics.fmean(r['reward_curve']):8.3f} {statistics.fmean(t['reward_curve']):8.3f}")
    print(f"{'2nd half':>5} {statistics.fmean(r['reward_curve'][half:] or r['reward_curve']):8.3f} "
          f"{statistics.fmean(t['reward_curve'][half:] or t['reward_curve']):8.3f}")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run (step 1 is warm-up)")
    p.add_argument("--rounds", type=int, default=1, help="rftkit/TRL pairs, ABBA order; round r uses seed + r for both")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the full JSON here (e.g. docs/bench/grpo_vs_trl.json)")
    p.add_argument("--prompts-per-step", type=int, default=16, help="smoke tests only; the benchmark is 16")
    p.add_argument("--num-generations", type=int, default=8, help="smoke tests only; the benchmark is 8")
    p.add_argument("--max-new-tokens", type=int, default=48, help="smoke tests only; the benchmark is 48")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra rftkit config override; TRL's settings follow it where they are derived from it")
    p.add_argument("--sync-rng", action="store_true",
                   help="rftkit also draws torch.randperm(rollouts) after each step, as TRL's shuffle_sequence_dict does, "
                        "so both tools sample step k from the same random stream (docs/LOG.md: the reward gap)")
    p.add_argument("--verbose", action="store_true", help="stream the children's output instead of logging it")
    p.add_argument("--child", choices=["rftkit", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be >= 2 (step 1 is warm-up and excluded)")
    if args.threads < 1 or args.rounds < 1:
        p.error("--threads and --rounds must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    if args.child:
        os.environ.update(OFFLINE_ENV)
        out = child_rftkit(args) if args.child == "rftkit" else child_trl(args)
        args.result.write_text(json.dumps(out))
        return
    cfg = rftkit_config(args)
    info = machine()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-grpo-vs-trl-"))
    runs = {"rftkit": [], "trl": []}
    for round_ in range(args.rounds):
        for tool in (("rftkit", "trl") if round_ % 2 == 0 else ("trl", "rftkit")):
            runs[tool].append(run_child(tool, args, log_dir, round_))
    info["loadavg_end"] = os.getloadavg()
    summary = {tool: summarise(r) for tool, r in runs.items()}
    chk = checks(runs["rftkit"], runs["trl"], args.prompts_per_step * args.num_generations)
    speedup = summary["trl"]["median_s_per_step"] / summary["rftkit"]["median_s_per_step"]
    report(cfg, summary, chk, args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": info,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "settings": [{"setting": s, "rftkit": a, "trl": b} for s, a, b in settings_table(cfg)],
            "trl_grpo_config": trl_settings(cfg), "checks": chk, "summary": summary, "runs": runs,
            "speedup": speedup, "logs": str(log_dir),
        }, indent=1, default=str))
        print(f"\nwrote {args.out}")
    print(f"speedup: {speedup:.2f}")


if __name__ == "__main__":
    main()

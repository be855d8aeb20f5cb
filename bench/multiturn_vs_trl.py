"""GRPO step time on the tool task: rftkit against TRL's tool-calling GRPOTrainer, one after the other.

    python bench/multiturn_vs_trl.py [--steps 6] [--json]

Both train the bundled tool model (`bundled:tiny-tools`) on examples/tools/train.jsonl with
its tools (calculator, lookup): 16 prompts x 8 episodes per step, temperature 1, lr 3e-4, at
most 256 completion tokens per episode, reward 1 for the right `ANSWER:`. rftkit runs
examples/tools/grpo.yaml (tools in the sandbox, 48 tokens per turn, at most 5 turns); TRL
runs GRPOTrainer(tools=[calculator, lookup]) with the same functions called in-process, its
`max_completion_length` 256 over the whole episode, and the Qwen3 response template set on
the tokenizer so TRL can parse the bundled model's `<tool_call>` blocks (its template is not
one TRL recognises). Each tool runs in its own subprocess, never both at once; step 1 is left
out as warm-up. Reported: median seconds per step, mean reward, tool calls and completion
length per episode of each, and the ratio.

Not the same experiment in every detail: TRL's tools run in the trainer process, unconfined,
and TRL counts tool results inside its completion length; rftkit sandboxes each call and
counts model tokens only. The figures say how the two compare as a user would run them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TRL_CHILD = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1] + "/examples/tools")
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
import trl.chat_template_utils as templates
from rftkit.models import load_model, load_tokenizer
import tools as task

def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression of integers with + - * and parentheses.

    Args:
        expression: for example "4821 * 37"
    """
    return task.calculator(expression)

def lookup(name: str) -> int:
    """The code filed under a name.

    Args:
        name: the name, for example "lonu"
    """
    return task.lookup(name)

def reward(completions, answer, **kw):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if f"ANSWER: {a}" in (t or "") else 0.0 for t, a in zip(texts, answer)]

class Clock(TrainerCallback):
    def __init__(self):
        self.begins, self.ends, self.logs = [], [], []
    def on_step_begin(self, *a, **k):
        self.begins.append(time.perf_counter())
    def on_step_end(self, *a, **k):
        self.ends.append(time.perf_counter())
    def on_log(self, args, state, control, logs=None, **k):
        self.logs.append(dict(logs or {}))

steps = int(sys.argv[2])
rows = [json.loads(line) for line in open(sys.argv[1] + "/examples/tools/train.jsonl")][: steps * 16]
dataset = Dataset.from_list([{"prompt": r["messages"], "answer": r["reference_answer"]} for r in rows])
tokenizer, model = load_tokenizer("bundled:tiny-tools"), load_model("bundled:tiny-tools")
tokenizer.response_template = templates.qwen3_template
config = GRPOConfig(output_dir=sys.argv[3], per_device_train_batch_size=128, num_generations=8, max_completion_length=256,
                    temperature=1.0, max_steps=steps, learning_rate=3e-4, logging_steps=1, report_to=[], use_cpu=True,
                    save_strategy="no", shuffle_dataset=False)
clock = Clock()
trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tokenizer,
                      tools=[calculator, lookup], callbacks=[clock])
trainer.train()
logs = [l for l in clock.logs if "reward" in l]
print(json.dumps({"step_s": [b - a for a, b in zip(clock.begins, clock.ends)],
                  "reward": [float(l["reward"]) for l in logs],
                  "tool_calls": [float(l.get("tools/call_frequency", "nan")) for l in logs],
                  "length": [float(l.get("completions/mean_length", "nan")) for l in logs]}))
'''


def rftkit_run(steps: int, work: Path) -> dict:
    run = work / "rftkit"
    cmd = [sys.executable, "-m", "rftkit", "train", str(REPO / "examples" / "tools" / "grpo.yaml"), f"train.steps={steps}",
           "run.eval_interval=0", "run.checkpoint_interval=0", "run.sample_interval=0", f"run.dir={run}", "--quiet"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, timeout=3600)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"step_s": [r["perf/time_per_step"] for r in rows], "reward": [r["critic/rewards/mean"] for r in rows],
            "tool_calls": [r["env/tool_calls_mean"] for r in rows], "length": [r["response_length/mean"] for r in rows]}


def trl_run(steps: int, work: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", TRL_CHILD, str(REPO), str(steps), str(work / "trl")], check=True,
                         capture_output=True, text=True, cwd=REPO, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(run: dict) -> dict:
    measured = slice(1, None)  # step 1 is warm-up
    return {"median_step_s": round(statistics.median(run["step_s"][measured]), 3),
            "reward_mean": round(statistics.fmean(run["reward"][measured]), 3),
            "tool_calls_per_episode": round(statistics.fmean(run["tool_calls"][measured]), 2),
            "completion_tokens_per_episode": round(statistics.fmean(run["length"][measured]), 1),
            "step_s": [round(s, 2) for s in run["step_s"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rftkit-mt-trl-") as tmp:
        ours, theirs = summary(rftkit_run(args.steps, Path(tmp))), summary(trl_run(args.steps, Path(tmp)))
    report = {"steps": args.steps, "rftkit": ours, "trl": theirs,
              "speedup": round(theirs["median_step_s"] / ours["median_step_s"], 2)}
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key}: {value}")
    print(f"rftkit GRPO step on the tool task: {report['speedup']:.2f}x TRL's speed")


if __name__ == "__main__":
    main()

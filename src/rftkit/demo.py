"""The README's demos: does RFT make a bundled model better on a held-out task?

baseline eval on the held-out test file -> GRPO on the training prompts -> the same eval of
the trained model -> a before/after table (also written to DIR/summary.md and .json) and the
run's HTML report (DIR/grpo/report.html). Tasks (`--task`):

- `arithmetic`: the bundled tiny-arith model answers "What is 47 + 18 - 9?";
- `tools`: the bundled tiny-tools model calls a calculator and a lookup table over several
  turns (docs/AGENTS.md); its evaluations play whole episodes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from rftkit.agents import build_environment
from rftkit.config import load_config
from rftkit.errors import UserError
from rftkit.eval.run import run_eval
from rftkit.models import ASSETS
from rftkit.report import write_report
from rftkit.tasks import arithmetic, tools
from rftkit.train.loop import Trainer

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EVAL_SAMPLES = 8


@dataclass(frozen=True)
class Task:
    examples: str  # folder under examples/
    packaged_config: Path  # the same file as examples/<folder>/grpo.yaml (tested)
    write_files: Callable[[Path], None]  # the task's data (and tools) for an installed package


TASKS = {
    "arithmetic": Task("arithmetic", ASSETS / "demo" / "grpo.yaml", arithmetic.write_example_files),
    "tools": Task("tools", ASSETS / "demo" / "tools.yaml", tools.write_example_files),
}
PACKAGED_CONFIG = TASKS["arithmetic"].packaged_config


def _examples_dir(task: Task, out_dir: Path, console: Console) -> Path:
    """examples/<task>/ of a clone (or the current folder); from an installed package, the same files
    written into OUT/data by the task generator, next to the packaged config."""
    for candidate in (Path("examples") / task.examples, REPO_EXAMPLES / task.examples):
        if (candidate / "grpo.yaml").exists():
            return candidate
    if not task.packaged_config.exists():
        raise UserError(f"the demo's config {task.packaged_config} is missing from this installation; reinstall rftkit")
    data = out_dir / "data"
    task.write_files(data)
    shutil.copyfile(task.packaged_config, data / "grpo.yaml")
    console.print(f"examples/{task.examples}/ not found here: wrote the demo's data and config to {data}")
    return data


def _fresh_dir(base: Path) -> Path:
    if not base.exists() or not any(base.iterdir()):
        return base
    n = 1
    while (base.parent / f"{base.name}-{n}").exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


def run_demo(out_dir: Path | None, config: Path | None, console: Console, quiet: bool = False,
             overrides: list[str] | None = None, task: str = "arithmetic") -> dict:
    """`overrides` are config key=value pairs, as for `rft train` (e.g. train.steps=20 for a short demo)."""
    if task not in TASKS:
        raise UserError(f"unknown demo task {task!r} (tasks: {', '.join(TASKS)})")
    out_dir = _fresh_dir(Path(out_dir or ("runs/demo" if task == "arithmetic" else f"runs/demo-{task}")))
    examples = _examples_dir(TASKS[task], out_dir, console)
    config = config or examples / "grpo.yaml"
    test_file = examples / "test.jsonl"
    cfg = load_config(config, [*(overrides or []), f"run.dir={out_dir / 'grpo'}"])
    environment = build_environment(cfg.environment) if cfg.environment else None
    t0 = time.time()

    console.rule("1/3 baseline: the bundled model on the held-out test set")
    before = run_eval(cfg.model.path, str(test_file), cfg.grader, EVAL_SAMPLES, cfg.rollout.temperature,
                      cfg.rollout.max_new_tokens, out=out_dir / "eval_base.json", environment=environment)
    console.print(f"pass@1 {before['pass@1']:.3f}  pass@{EVAL_SAMPLES} {before[f'pass@{EVAL_SAMPLES}']:.3f}  ({time.time() - t0:.0f}s)")

    console.rule(f"2/3 GRPO: {cfg.train.steps} steps x {cfg.train.prompts_per_step} prompts x {cfg.rollout.num_generations} answers")
    final = Trainer(cfg, console, quiet).train()

    console.rule("3/3 the trained model on the same held-out test set")
    after = run_eval(str(final), str(test_file), cfg.grader, EVAL_SAMPLES, cfg.rollout.temperature,
                     cfg.rollout.max_new_tokens, out=out_dir / "eval_tuned.json", environment=environment)

    keys = ["pass@1", f"pass@{EVAL_SAMPLES}", "reward_mean"]
    table = Table(title=f"held-out test set: {before['n_items']} items, {EVAL_SAMPLES} samples each, temperature {cfg.rollout.temperature}")
    for col in ("metric", f"before ({cfg.model.path})", "after (GRPO)", "change"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for k in keys:
        table.add_row(k, f"{before[k]:.3f}", f"{after[k]:.3f}", f"{after[k] - before[k]:+.3f}")
    console.print(table)
    summary = {"before": before, "after": after, "final_model": str(final), "seconds": round(time.time() - t0, 1)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = ["| metric | before | after | change |", "|---|---|---|---|"]
    md += [f"| {k} | {before[k]:.3f} | {after[k]:.3f} | {after[k] - before[k]:+.3f} |" for k in keys]
    (out_dir / "summary.md").write_text("\n".join(md) + "\n")
    report = write_report(Path(final).parent)
    console.print(f"report with plots: {report}")
    console.print(f"demo finished in {time.time() - t0:.0f}s; results in {out_dir}")
    return summary

"""The README's demo: does RFT make the bundled model better at held-out arithmetic?

baseline eval on the held-out test file -> GRPO on the training prompts -> the same eval of
the trained model -> a before/after table (also written to DIR/summary.md and .json) and the
run's HTML report (DIR/grpo/report.html).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rftkit.config import load_config
from rftkit.errors import UserError
from rftkit.eval.run import run_eval
from rftkit.models import ASSETS, DEFAULT_MODEL
from rftkit.report import write_report
from rftkit.tasks.arithmetic import write_example_files
from rftkit.train.loop import Trainer

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "arithmetic"
PACKAGED_CONFIG = ASSETS / "demo" / "grpo.yaml"  # the same file as examples/arithmetic/grpo.yaml (tested)
EVAL_SAMPLES = 8


def _examples_dir(out_dir: Path, console: Console) -> Path:
    """examples/arithmetic/ of a clone (or the current folder); from an installed package, the same files
    written into OUT/data by the task generator, next to the packaged config."""
    for candidate in (Path("examples/arithmetic"), REPO_EXAMPLES):
        if (candidate / "grpo.yaml").exists():
            return candidate
    if not PACKAGED_CONFIG.exists():
        raise UserError(f"the demo's config {PACKAGED_CONFIG} is missing from this installation; reinstall rftkit")
    data = out_dir / "data"
    write_example_files(data)
    shutil.copyfile(PACKAGED_CONFIG, data / "grpo.yaml")
    console.print(f"examples/arithmetic/ not found here: wrote the demo's data and config to {data}")
    return data


def _fresh_dir(base: Path) -> Path:
    if not base.exists() or not any(base.iterdir()):
        return base
    n = 1
    while (base.parent / f"{base.name}-{n}").exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


def run_demo(out_dir: Path | None, config: Path | None, console: Console, quiet: bool = False,
             overrides: list[str] | None = None) -> dict:
    """`overrides` are config key=value pairs, as for `rft train` (e.g. train.steps=20 for a short demo)."""
    out_dir = _fresh_dir(Path(out_dir or "runs/demo"))
    examples = _examples_dir(out_dir, console)
    config = config or examples / "grpo.yaml"
    test_file = examples / "test.jsonl"
    cfg = load_config(config, [*(overrides or []), f"run.dir={out_dir / 'grpo'}"])
    t0 = time.time()

    console.rule("1/3 baseline: the bundled model on the held-out test set")
    before = run_eval(cfg.model.path, str(test_file), cfg.grader, EVAL_SAMPLES, cfg.rollout.temperature,
                      cfg.rollout.max_new_tokens, out=out_dir / "eval_base.json")
    console.print(f"pass@1 {before['pass@1']:.3f}  pass@{EVAL_SAMPLES} {before[f'pass@{EVAL_SAMPLES}']:.3f}  ({time.time() - t0:.0f}s)")

    console.rule(f"2/3 GRPO: {cfg.train.steps} steps x {cfg.train.prompts_per_step} prompts x {cfg.rollout.num_generations} answers")
    final = Trainer(cfg, console, quiet).train()

    console.rule("3/3 the trained model on the same held-out test set")
    after = run_eval(str(final), str(test_file), cfg.grader, EVAL_SAMPLES, cfg.rollout.temperature,
                     cfg.rollout.max_new_tokens, out=out_dir / "eval_tuned.json")

    keys = ["pass@1", f"pass@{EVAL_SAMPLES}", "reward_mean"]
    table = Table(title=f"held-out test set: {before['n_items']} items, {EVAL_SAMPLES} samples each, temperature {cfg.rollout.temperature}")
    for col in ("metric", f"before ({DEFAULT_MODEL if cfg.model.path == DEFAULT_MODEL else cfg.model.path})", "after (GRPO)", "change"):
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

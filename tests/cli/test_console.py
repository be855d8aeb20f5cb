"""What a user sees on the console: no deprecation noise from our calls, and a --quiet run that fits a screen."""

from __future__ import annotations

import pytest

from tests.conftest import EXAMPLES, run_cli

SMALL = ["train.prompts_per_step=2", "rollout.num_generations=2", "rollout.max_new_tokens=16", "run.eval_interval=0",
         "run.sample_interval=0"]


@pytest.mark.slow
def test_a_quiet_lora_run_prints_no_future_warning_and_fits_a_screen(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", str(EXAMPLES / "grpo.yaml"), "lora.enabled=true", "algorithm.beta=0.1", "train.steps=40",
                   f"run.dir={run_dir}", *SMALL, "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "FutureWarning" not in output and "deprecated" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) <= 40, "\n".join(lines)  # a terminal screen
    assert f"run directory: {run_dir}" in output and "resolved config" not in output.replace("(resolved config:", "")
    assert sum(line.startswith("train step ") for line in lines) >= 10  # the ~5% one-line summaries
    assert (run_dir / "config.yaml").exists()


@pytest.mark.slow
def test_without_quiet_the_resolved_config_is_printed(tmp_path):
    proc = run_cli("train", str(EXAMPLES / "grpo.yaml"), "train.steps=1", f"run.dir={tmp_path / 'run'}", *SMALL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resolved config" in proc.stderr and "prompts_per_step: 2" in proc.stderr

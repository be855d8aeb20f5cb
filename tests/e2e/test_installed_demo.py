"""`pip install rftkit` (a wheel, no source tree) and then `rft demo` works.

The wheel ships the bundled model and the demo's config (assets/); the demo's data is written
by the task generator, byte for byte the repository's examples/arithmetic/ files (checked here,
so the installed demo trains and evaluates on exactly what the README's numbers were measured on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv

import pytest

from rftkit.tasks.arithmetic import write_example_files
from tests.conftest import EXAMPLES, REPO


def test_generated_demo_data_and_packaged_config_are_the_examples(tmp_path):
    for path in write_example_files(tmp_path):
        assert path.read_bytes() == (EXAMPLES / path.name).read_bytes(), path.name
    packaged = REPO / "src" / "rftkit" / "assets" / "demo" / "grpo.yaml"
    assert packaged.read_bytes() == (EXAMPLES / "grpo.yaml").read_bytes(), "assets/demo/grpo.yaml must equal examples/arithmetic/grpo.yaml"


def test_generated_tool_task_files_and_packaged_config_are_the_examples(tmp_path):
    from rftkit.tasks import tools

    tools.write_example_files(tmp_path)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "tools.py", "env.yaml"):
        assert (tmp_path / name).read_bytes() == (REPO / "examples" / "tools" / name).read_bytes(), name
    packaged = REPO / "src" / "rftkit" / "assets" / "demo" / "tools.yaml"
    assert packaged.read_bytes() == (REPO / "examples" / "tools" / "grpo.yaml").read_bytes()


def _run(cmd, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_demo_from_a_wheel_in_a_fresh_virtualenv(tmp_path):
    wheels, env_dir, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)])
    wheel = next(wheels.glob("rftkit-*.whl"))
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"])  # the README's order: the CPU wheel first
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)])
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run([str(py), "-c", "import rftkit, sys; print(rftkit.__file__)"], cwd=work, env=clean).stdout
    assert str(env_dir) in where and str(REPO) not in where, where  # the installed package, not the source tree
    done = _run([str(env_dir / "bin" / "rft"), "demo", "--out", str(work / "demo"), "--quiet", "train.steps=3",
                 "train.prompts_per_step=4", "run.eval_interval=0", "run.checkpoint_interval=0"], cwd=work, env=clean)
    summary = json.loads((work / "demo" / "summary.json").read_text())
    assert summary["before"]["n_items"] == summary["after"]["n_items"] == 300
    assert "after (GRPO)" in done.stderr + done.stdout and (work / "demo" / "grpo" / "report.html").exists()

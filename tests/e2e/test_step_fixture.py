"""The training step behaves as it did before the architecture refactor (issue 13).

`scripts/make_step_fixture.py` wrote tests/e2e/fixtures/step_fixture.json from seeded 10-step CPU
runs of every stage (GRPO and its variants, LoRA with a KL loss, SFT, DPO, A-SFT, reward model,
rejection sampling) before the refactor: per-step rewards and losses and a sha256 of the final
weights. Replaying them must give the same numbers bit for bit; a run that changed for a
measured cause is listed under `explained` in the fixture (and in docs/LOG.md) with its new numbers.
The runs pin one thread and the PyTorch decode path, and run in a fresh process so that
RFTKIT_NATIVE=0 takes effect.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "make_step_fixture.py"
FIXTURE = REPO / "tests" / "e2e" / "fixtures" / "step_fixture.json"


def test_fixture_covers_every_stage_and_was_made_before_it_could_be_rewritten():
    fixture = json.loads(FIXTURE.read_text())
    from rftkit.train.stages import STAGES

    configs = {run["config"].split("/")[0] for run in fixture["runs"].values()}
    assert {"arithmetic", "sft", "dpo", "asft", "reward_model", "rejection_sampling"} <= configs
    assert len(fixture["runs"]) >= len(STAGES)
    for name, run in fixture.get("explained", {}).items():
        assert name in fixture["runs"] and run.get("cause"), f"{name}: an explained change must say its cause"


@pytest.mark.slow
def test_seeded_runs_reproduce_the_fixture():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=900, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line and not line.startswith(" ")]
    assert done.returncode == 0 and lines[-1] == "identical", "\n".join(lines[-12:]) + done.stderr[-2000:]

"""Starting and joining Ray: a one-line message and exit 2 for each mistake, before any model loads, never a hang."""

from __future__ import annotations

import socket
import time

import pytest

from rftkit.distributed.runtime import WorkerRequest, check_fits, connect
from rftkit.errors import ConfigError

from tests.conftest import EXAMPLES, run_cli


def test_check_fits_names_the_resource_and_the_fix():
    check_fits({"CPU": 4.0}, [WorkerRequest("rollout", 2, 1.0, 0.0), WorkerRequest("grader", 4, 0.5, 0.0)])
    with pytest.raises(ConfigError, match=r"need 5 CPUs \(2 rollout x 2, 2 grader x 0.5\) but the Ray cluster has 4"):
        check_fits({"CPU": 4.0}, [WorkerRequest("rollout", 2, 2.0, 0.0), WorkerRequest("grader", 2, 0.5, 0.0)])
    with pytest.raises(ConfigError, match=r"need 2 GPUs .* has 0: .*gpus_per_"):
        check_fits({"CPU": 8.0}, [WorkerRequest("rollout", 2, 1.0, 1.0)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_an_address_nothing_answers_on_fails_at_once(address):
    address = address.format(port=free_port())
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="nothing answers there.*ray start --head"):
        connect(address, [WorkerRequest("rollout", 1, 1.0, 0.0)], timeout_s=5)
    assert time.monotonic() - t0 < 10


def test_a_malformed_address_is_named():
    with pytest.raises(ConfigError, match="expected auto, HOST:PORT"):
        connect("not-an-address", [], timeout_s=5)


def rft_train(*overrides: str, tmp_path, pre: str = ""):
    """`rft train` of the arithmetic example in a subprocess; `pre` runs first (to hide Ray)."""
    import subprocess
    import sys

    args = ["train", str(EXAMPLES / "grpo.yaml"), f"run.dir={tmp_path / 'run'}", "train.steps=2", *overrides]
    if not pre:
        return run_cli(*args, timeout=120)
    code = f"import sys; {pre}; from rftkit.cli import main; sys.argv = ['rft'] + {args!r}; main()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_without_ray_installed_the_message_names_the_extra(tmp_path):
    out = rft_train("runtime.backend=ray", tmp_path=tmp_path, pre="sys.modules['ray'] = None")
    assert out.returncode == 2, out.stderr
    assert 'pip install -e ".[ray]"' in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_cli_exits_2_for_an_unreachable_address_and_for_gpus_it_cannot_place(tmp_path):
    out = rft_train("runtime.backend=ray", f"runtime.address=127.0.0.1:{free_port()}", tmp_path=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "nothing answers there" in out.stderr + out.stdout and "Traceback" not in out.stderr
    out = rft_train("runtime.backend=ray", "runtime.rollout_workers=2", "runtime.gpus_per_rollout_worker=1",
                    tmp_path=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "GPUs" in out.stderr + out.stdout and "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before any training

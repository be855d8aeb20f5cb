"""Hostile code through both sandboxed graders (`python` and `code`), all at once, plus pool mechanics.

Every hostile program is written so that a breach would earn 1.0: it returns 1.0 only if
its attack got through (read the secret, reached the server, ...). Each must end as
reward None or 0.0 with a reason; meanwhile benign samples graded in the same batch must
get their right rewards, nothing may be left running, and no temp dir may be left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rftkit.graders import build_grader, sandbox
from rftkit.types import Item

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1.5
WORKERS = 4  # more workers than cores: most hostile calls wait for their deadline, not for a core

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

# the python grader's process, or the code grader's candidate process (separate from its tests), ended early
GONE = r"without reporting a result|candidate's process ended"
# name -> (function body; a breach returns 1.0, expected reason pattern)
HOSTILE: dict[str, tuple[str, str]] = {
    "infinite_loop": ("while True:\n    pass", r"within|CPU time limit"),
    "sleep_forever": ("time.sleep(3600)", r"within"),
    "fork_bomb": ("while True:\n    try:\n        os.fork()\n    except OSError:\n        pass", r"within|CPU time limit"),
    # touching 512 MB can take longer than the deadline on a busy 2-core machine
    "memory_bomb": ("hog = []\nwhile True:\n    hog.append(bytearray(10**7))", r"memory limit 512 MB exceeded|within"),
    "memory_bomb_at_once": ("bytearray(8 * 2**30)", r"memory limit 512 MB exceeded"),
    "memory_bomb_mmap": ("import mmap\nmmap.mmap(-1, 2**32)", r"memory limit 512 MB exceeded"),
    "print_gigabytes": ("while True:\n    print('x' * 100_000)", r"output file size limit"),
    "write_fd1_gigabytes": ("while True:\n    os.write(1, b'x' * 2**20)", r"output file size limit"),
    # /tmp is an empty private tmpfs in the sandbox: files there do not exist for it
    "read_secret_0600": ("assert open(SECRET).read() == 'TOPSECRET'", r"PermissionError|FileNotFoundError"),
    # (FileNotFoundError where the checkout is under /tmp, which is private to the sandbox)
    "read_world_readable_readme": ("open(README).read()", r"PermissionError|FileNotFoundError"),
    "read_etc_passwd": ("open('/etc/passwd').read()", r"PermissionError"),
    "read_host_environ": ("open(f'/proc/{HOST_PID}/environ').read()", r"PermissionError"),
    "write_outside_tmpdir": ("open(OUTSIDE, 'w').write('pwned')", r"PermissionError|FileNotFoundError"),
    "modify_stdlib": ("open(os.__file__, 'a').write('# pwned')", r"PermissionError|OSError"),
    "tcp_connect_localhost": ("socket.create_connection(('127.0.0.1', PORT), timeout=1).sendall(b'hi')",
                              r"PermissionError|OSError|TimeoutError"),
    "udp_send_localhost": ("socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hi', ('127.0.0.1', PORT))",
                           r"OSError|PermissionError"),
    # the parent (the worker) is outside the PID namespace: getppid() is 0, so this kills its own group
    "kill_parent": ("os.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(0.2)", r"killed by SIGKILL|PermissionError"),
    "kill_namespace_init": ("os.kill(1, signal.SIGKILL)\ntime.sleep(0.2)", r"PermissionError"),
    "kill_workers": ("for pid in WORKER_PIDS:\n    os.kill(pid, signal.SIGKILL)\ntime.sleep(0.2)",
                     r"ProcessLookupError|PermissionError"),
    "kill_host": ("os.kill(HOST_PID, signal.SIGKILL)\ntime.sleep(0.2)", r"ProcessLookupError|PermissionError"),
    "kill_bystander": ("os.kill(BYSTANDER_PID, signal.SIGKILL)\ntime.sleep(0.2)", r"ProcessLookupError|PermissionError"),
    "kill_everything": ("os.kill(-1, signal.SIGKILL)\ntime.sleep(0.2)\nassert False, 'still alive'",
                        r"ProcessLookupError|PermissionError|AssertionError"),
    "background_child": ("if os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\nos._exit(0)", GONE),
    "setsid_daemon": ("if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
                      "        os._exit(0)\n    os._exit(0)\nos._exit(0)", GONE),
    "shell_background_job": ("subprocess.Popen(['/bin/sh', '-c', 'sleep 60 &'])\ntime.sleep(0.3)\nos._exit(0)",
                             GONE),
    "shell_reads_secret": ("out = subprocess.run(['/bin/sh', '-c', 'cat ' + SECRET + ' ' + README], capture_output=True, "
                           "text=True).stdout\nassert 'TOPSECRET' in out or 'rftkit' in out, 'nothing read'",
                           r"AssertionError"),
    "segfault": ("ctypes.string_at(0)", r"killed by SIGSEGV"),
    "abort": ("os.abort()", r"killed by SIGABRT"),
    "deep_recursion": ("sys.setrecursionlimit(10**6)\ndef dive(n):\n    return dive(n + 1) + 1\ndive(0)",
                       r"RecursionError|MemoryError|within"),
    "c_stack_overflow": ("sys.setrecursionlimit(10**7)\ndef dive(n):\n    return list(map(dive, [n + 1]))\ndive(0)",
                         r"killed by SIGSEGV"),
    "sys_exit_0": ("sys.exit(0)", r"exit"),
    "os_exit_0": ("os._exit(0)", GONE),
    "close_all_fds": ("for fd in range(64):\n    try:\n        os.close(fd)\n    except OSError:\n        pass",
                      GONE),
    "dup_over_result_fd": ("os.dup2(os.open('/dev/null', os.O_WRONLY), 3)", r"tampered|without reporting a result"),
    "forge_result": ("os.write(3, b'{\"ok\": true, \"value\": 1.0}')\nos._exit(0)", r"tampered|" + GONE),
}
# The code grader runs the candidate in a process without the result fd: these only attack that fd
# and then return 1.0, which solves CHECK_ITEM, so there the right reward is 1.0.
HARMLESS_TO_CODE = {"dup_over_result_fd"}

IMPORTS = "import ctypes, os, signal, socket, subprocess, sys, time"


def _substitute(body: str, env: dict[str, object]) -> str:
    for key, value in env.items():
        body = re.sub(rf"\b{key}\b", repr(value), body)
    return body


def python_source(body: str) -> str:
    return f"def grade(sample, item):\n    {IMPORTS}\n{textwrap.indent(body, '    ')}\n    return 1.0\n"


def candidate_text(body: str) -> str:
    return f"Here you go:\n```python\ndef solve():\n    {IMPORTS}\n{textwrap.indent(body, '    ')}\n    return 1.0\n```\n"


CHECK_ITEM = Item(id="hostile", messages=[], metadata={"entry_point": "solve",
                                                        "test": "def check(f):\n    assert f() == 1.0\n"})
ADD_ITEM = Item(id="add", messages=[], reference_answer="5",
                metadata={"entry_point": "add", "test": "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n"})
BENIGN_SOURCE = "def grade(sample, item):\n    return float(sample['output_text'].strip() == item['reference_answer'])\n"


class _Server:
    """A TCP server on localhost that records every connection it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections.append(addr)
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _sandbox_processes() -> list[tuple[int, int, str]]:
    """(pid, uid, name) of every process running as a sandbox uid (or nobody)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{name}").st_uid
            comm = Path(f"/proc/{name}/comm").read_text().strip()
        except OSError:
            continue
        if sandbox.UID_BASE <= uid < sandbox.UID_BASE + sandbox.UID_SLOTS or uid == 65534:
            found.append((int(name), uid, comm))
    return found


def _children_of(pids: list[int]) -> list[int]:
    children = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid in pids:
                children.append(int(name))
    return children


def _temp_dirs_of(pool: sandbox.SandboxPool) -> dict[int, list[str]]:
    """What each worker's temp dir holds, seen from inside its mount namespace."""
    with pool._lock:
        workers = list(pool._workers)
    seen = {}
    for w in workers:
        root = Path(f"/proc/{w.proc.pid}/root{w.base_dir}")
        seen[w.proc.pid] = {p.name: sorted(os.listdir(p)) if p.is_dir() else None for p in root.iterdir()}
    return seen


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    secret = tmp_path_factory.mktemp("host") / "secret.txt"
    secret.write_text("TOPSECRET")
    secret.chmod(0o600)
    open_dir = Path(tempfile.mkdtemp(prefix="rftkit-test-open-"))
    open_dir.chmod(0o777)  # world-writable: only Landlock stands between the sandbox and this dir
    outside = open_dir / "pwned.txt"
    server = _Server()
    bystander = subprocess.Popen(["sleep", "120"])
    env = {"SECRET": str(secret), "README": str(REPO / "README.md"), "OUTSIDE": str(outside),
           "PORT": server.port, "HOST_PID": os.getpid(), "BYSTANDER_PID": bystander.pid}
    pool = sandbox.get_pool(WORKERS)
    workers_before = sorted(pool.worker_pids())
    env["WORKER_PIDS"] = workers_before
    before = _sandbox_processes()

    code = build_grader({"type": "code", "timeout_s": TIMEOUT_S, "workers": WORKERS})
    benign_python = build_grader({"type": "python", "source": BENIGN_SOURCE, "timeout_s": TIMEOUT_S, "workers": WORKERS})
    jobs = {}
    for name, (body, _) in HOSTILE.items():
        body = _substitute(body, env)
        grader = build_grader({"type": "python", "name": name, "source": python_source(body),
                               "timeout_s": TIMEOUT_S, "workers": WORKERS})
        jobs[(name, "python")] = (grader, CHECK_ITEM, "")
        jobs[(name, "code")] = (code, CHECK_ITEM, candidate_text(body))
    for i in range(8):  # benign samples interleaved with the hostile ones; half right, half wrong
        right = i % 2 == 0
        jobs[(f"benign{i}", "python")] = (benign_python, ADD_ITEM, "5" if right else "6")
        jobs[(f"benign{i}", "code")] = (code, ADD_ITEM, "def add(a, b):\n    return a + b" if right else
                                        "def add(a, b):\n    return a - b")
    keys = list(jobs)
    keys.sort(key=lambda k: hash(k) % 97)  # interleave
    start = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as threads:
        futures = {k: threads.submit(jobs[k][0].grade, jobs[k][1], jobs[k][2]) for k in keys}
        scores = {k: f.result() for k, f in futures.items()}
    elapsed = time.monotonic() - start
    time.sleep(0.2)
    after = {
        "elapsed": elapsed,
        "host_alive": True,  # we are still here
        "bystander_alive": bystander.poll() is None,
        "connections": list(server.connections),
        "outside_exists": outside.exists(),
        "workers_before": workers_before,
        "workers_after": sorted(pool.worker_pids()),
        "sandbox_processes_before": before,
        "sandbox_processes_after": _sandbox_processes(),
        "worker_children": {pid: _children_of([pid]) for pid in pool.worker_pids()},
        "temp_dirs": _temp_dirs_of(pool),
    }
    yield scores, after
    server.close()
    bystander.kill()
    bystander.wait()
    outside.unlink(missing_ok=True)
    open_dir.rmdir()


def test_there_are_enough_hostile_programs():
    assert len(HOSTILE) >= 15


@pytest.mark.parametrize("grader", ["python", "code"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_is_contained(battery, name, grader):
    scores, _ = battery
    score = scores[(name, grader)]
    if grader == "code" and name in HARMLESS_TO_CODE:
        assert score.reward == 1.0 and score.error is None, score
        return
    assert score.reward in (None, 0.0), f"{name} via {grader}: reward {score.reward} (a breach)"
    assert score.error, f"{name} via {grader}: no reason given"
    assert re.search(HOSTILE[name][1], score.error), f"{name} via {grader}: unexpected reason {score.error!r}"
    if grader == "python":  # the user's own grader failing is a failed grading, masked
        assert score.reward is None and score.error.startswith(("python_grader_runtime_error", "unresponsive_reward_error"))
    else:  # model-written code that misbehaves earns a real 0
        assert score.reward == 0.0


def test_timeouts_use_the_openai_flag(battery):
    scores, _ = battery
    assert scores[("sleep_forever", "python")].error.startswith("unresponsive_reward_error")
    assert scores[("sleep_forever", "code")].error.startswith("timeout:")


def test_benign_samples_in_the_same_batch_are_graded_right(battery):
    scores, _ = battery
    for i in range(8):
        want = 1.0 if i % 2 == 0 else 0.0
        assert scores[(f"benign{i}", "python")].reward == want
        assert scores[(f"benign{i}", "code")].reward == want


def test_host_and_bystanders_unharmed(battery):
    _, after = battery
    assert after["bystander_alive"]
    assert after["connections"] == [], "the localhost server was reached"
    assert not after["outside_exists"]
    assert after["workers_after"] == after["workers_before"], "a worker died or was replaced"


def test_nothing_left_running_or_on_disk(battery):
    _, after = battery
    before = {pid for pid, _, _ in after["sandbox_processes_before"]}
    assert [p for p in after["sandbox_processes_after"] if p[0] not in before] == []
    # each worker has one child, its zygote (pid 1 of its PID namespace), and that one has none
    assert all(len(children) == 1 for children in after["worker_children"].values()), after["worker_children"]
    assert _children_of([c for children in after["worker_children"].values() for c in children]) == []
    assert all(entries == {"io": []} for entries in after["temp_dirs"].values()), after["temp_dirs"]


def test_battery_is_concurrent(battery):
    _, after = battery
    # ~12 programs run into the 1.5 s deadline, twice each; one at a time that alone would be 36 s
    assert after["elapsed"] < 25, after["elapsed"]


# ---------------------------------------------------------------- pool mechanics


def test_capabilities_here():
    caps = sandbox.capabilities()
    if os.geteuid() != 0:
        pytest.skip("full protections are checked as root (CI); non-root machines degrade")
    for layer in ("pid_namespace", "net_namespace", "mount_namespace", "uid_drop", "landlock_fs", "rlimits"):
        assert caps[layer], f"{layer} is off: {caps}"


def test_dead_worker_is_replaced():
    with sandbox.SandboxPool(1) as pool:
        [pid] = pool.worker_pids()
        assert pool.run("python_grade", {"source": "def grade(s, i): return 2", "sample": {}, "item": {}}).runs[0].ok
        os.kill(pid, signal.SIGKILL)
        while Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":  # dead (not yet reaped)
            time.sleep(0.01)
        call = pool.run("python_grade", {"source": "def grade(s, i): return 3", "sample": {}, "item": {}})
        assert call.error is None and call.runs[0].result["value"] == 3.0
        assert pool.worker_pids() != [pid]


def test_wedged_worker_is_replaced_at_the_host_deadline(monkeypatch):
    monkeypatch.setattr(sandbox, "HOST_SLACK_S", 0.5)
    with sandbox.SandboxPool(1) as pool:
        [pid] = pool.worker_pids()
        pool.capabilities()  # started
        os.kill(pid, signal.SIGSTOP)
        call = pool.run("python_grade", {"source": "def grade(s, i): return 1", "sample": {}, "item": {}},
                        timeout_s=0.5)
        assert call.error and "did not answer" in call.error
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        again = pool.run("python_grade", {"source": "def grade(s, i): return 1", "sample": {}, "item": {}})
        assert again.runs[0].ok


def test_close_leaves_no_process_and_no_temp_dir():
    pool = sandbox.SandboxPool(2)
    for _ in range(2):
        pool.capabilities()
    pids = pool.worker_pids()
    with pool._lock:
        dirs = [w.base_dir for w in pool._workers]
    assert pool.run("check", {"code": "def f(): return 1", "test": "def check(c): assert c() == 1",
                              "entry_point": "f"}).runs[0].ok
    inits = _children_of(pids)  # the pid 1 of each worker's namespace
    assert len(inits) == 2
    pool.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids + inits)  # exited and reaped: no zombies
    assert not any(Path(d).exists() for d in dirs)
    assert pool.run("python_grade", {"source": "", "sample": {}, "item": {}}).error == "the sandbox pool is closed"


def test_many_threads_share_the_pool():
    source = "def grade(sample, item):\n    return len(sample['output_text'])\n"
    grader = build_grader({"type": "python", "source": source})
    texts = ["x" * n for n in range(40)]
    with ThreadPoolExecutor(8) as threads:
        rewards = list(threads.map(lambda t: grader.grade(ADD_ITEM, t).reward, texts))
    assert rewards == [float(n) for n in range(40)]


def test_fallback_without_namespaces_still_kills_leftovers():
    """No PID namespace: INIT is a subreaper that kills whatever the code left behind."""
    with sandbox.SandboxPool(1, _disable=("namespaces",)) as pool:
        caps = pool.capabilities()
        assert not caps["pid_namespace"] and caps["subreaper"]
        marker = f"rftkit-fallback-{os.getpid()}"
        body = (f"import os, time, subprocess\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                f"        os.execvp('sleep', ['sleep', '60', '{marker}'])\n    os._exit(0)\ntime.sleep(0.2)\n"
                f"def grade(s, i): return 1")
        call = pool.run("python_grade", {"source": body, "sample": {}, "item": {}}, timeout_s=2)
        assert call.runs[0].ok
        time.sleep(0.1)
        leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).endswith(marker)]
        assert leftovers == []


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- not root


NON_ROOT_SCRIPT = r'''
import json, os, sys, time
from rftkit.graders import sandbox
marker = sys.argv[1]
body = ("def grade(sample, item):\n    import os, socket, subprocess, time\n"
        "    subprocess.Popen(['sleep', '60', MARKER], start_new_session=True)\n"
        "    try:\n        open(README).read()\n        return 1.0\n    except (PermissionError, FileNotFoundError):\n        pass\n"
        "    try:\n        socket.create_connection(('127.0.0.1', 9), timeout=1)\n        return 2.0\n"
        "    except OSError:\n        pass\n    return -os.getuid()\n")
body = body.replace("MARKER", repr(marker)).replace("README", repr(sys.argv[2]))
out = {}
for label, disable in (("user_namespace", ()), ("no_namespaces", ("namespaces",))):
    with sandbox.SandboxPool(1, _disable=disable) as pool:
        caps = pool.capabilities()
        run = pool.run("python_grade", {"source": body, "sample": {}, "item": {}}, timeout_s=3).runs[0]
        out[label] = {"caps": caps, "result": run.result}
print(json.dumps(out))
'''


def _as_nobody(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run `script` as uid 65534 in a private mount namespace where the Python installation is reachable."""
    prefix = Path(sys.base_prefix).resolve()
    closed = next((p for p in reversed(prefix.parents) if p != Path("/") and not os.stat(p).st_mode & 0o001), None)
    steps, keep = ["set -e"], None
    if closed is not None:  # e.g. pyenv under /root (0700): show only the installation, as the sandbox does
        keep = tempfile.mkdtemp(prefix="rftkit-keep-")
        inner = prefix.relative_to(closed).parts[0]
        steps += [f"mount --bind {closed / inner} {keep}", f"mount -t tmpfs -o mode=755 tmpfs {closed}",
                  f"mkdir -p {closed / inner}", f"mount --bind {keep} {closed / inner}"]
    steps.append('exec setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH=/usr/bin:/bin HOME=/tmp '
                 f'PYTHONPATH={REPO / "src"} {sys.executable} -c "$0" "$@"')
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(steps),
                               script, *args], capture_output=True, text=True, timeout=60, cwd="/tmp")
    finally:
        if keep:
            os.rmdir(keep)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
                    reason="needs root to become an unprivileged user (setpriv, unshare)")
def test_unprivileged_user_degrades_gracefully():
    """As a plain user: namespaces through a user namespace if allowed, else a subreaper; Landlock either way."""
    marker = f"rftkit-nonroot-{os.getpid()}"
    done = _as_nobody(NON_ROOT_SCRIPT, marker, str(REPO / "README.md"))
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    time.sleep(0.2)
    assert [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).endswith(marker)] == []
    for label, seen in out.items():
        caps, result = seen["caps"], seen["result"]
        assert not caps["root"] and not caps["uid_drop"], (label, caps)
        assert result["ok"] and result["value"] <= 0, (label, result)  # 1.0: README was read; 2.0: port reached
        assert caps["landlock_fs"] and caps["landlock_net"], (label, caps)
    if out["user_namespace"]["caps"]["user_namespace"]:
        assert out["user_namespace"]["caps"]["pid_namespace"] and out["user_namespace"]["caps"]["net_namespace"]
    assert out["no_namespaces"]["caps"]["subreaper"] and not out["no_namespaces"]["caps"]["pid_namespace"]


def test_a_dead_zygote_gets_the_worker_replaced_and_the_call_still_runs():
    with sandbox.SandboxPool(1) as pool:
        pool.capabilities()
        [worker] = pool.worker_pids()
        [zygote] = _children_of([worker])
        os.kill(zygote, signal.SIGKILL)
        time.sleep(0.1)
        call = pool.run("python_grade", {"source": "def grade(s, i):\n    import os\n    return os.getpid()",
                                         "sample": {}, "item": {}})
        assert call.error is None and call.runs[0].result == {"ok": True, "value": 2.0}  # pid 2: the zygote is 1
        assert pool.worker_pids() != [worker] and len(pool.worker_pids()) == 1

"""A pool of pre-started sandbox workers that run untrusted Python (user graders, model-written code).

Both the `python` grader (the user's `grade(sample, item)`) and the `code` grader (the
model's program against test cases) send their calls here. A call blocks the calling
thread until its result or its deadline; one call per worker at a time; a dead worker is
replaced, and a pool refills itself after a failed start. Each worker is `python -I
_sandbox_worker.py` (standard library and libseccomp's bindings only); before it reads any
request it forks a ZYGOTE, and every run is a fork of that zygote, so a run costs a few
milliseconds instead of an interpreter start and holds nothing of earlier calls.

The layers, each when the host allows it (`capabilities()`, `rft grader capabilities`, and
docs/GRADERS.md, which lists what holds with and without root, cgroups, Landlock, seccomp):

- **Fresh memory**: the zygote never receives a call's data; a run reads its own request
  after the fork. Nothing of call N (test programs, other samples' inputs) is in call N+1.
- **A verdict the candidate cannot forge** (`code`, `check`): the candidate's code runs in one
  process, the test program in another; `candidate(...)` in the tests is a proxy that gets
  back plain data (a pickle of builtin types only); the candidate's process holds neither the
  result fd nor its nonce. stdin->stdout tests are compared on the host.
- **Deadline**: the zygote SIGKILLs the run at `timeout_s` (the whole call's budget); the host
  replaces a worker that has not answered `HOST_SLACK_S` later. The call returns by then.
- **Nothing outlives the call**: the zygote is pid 1 of the worker's PID namespace and kills
  and reaps every other process in it after each run; if the worker dies, so does the zygote,
  and the kernel kills the rest.
- **No network**: a network namespace per worker (a down loopback only); Landlock denies TCP
  bind/connect (ABI >= 4); seccomp refuses socket families other than AF_UNIX/INET/INET6.
- **Files**: empty private /tmp, /var/tmp, /run, /dev/shm; Landlock gives read-only access to
  the Python installation, `sys.path`, /usr and /lib*, read-write only to the run's temp dir
  (its cwd, HOME and TMPDIR: its own tmpfs, `disk_mb` and 16384 names at most, unmounted
  after the run).
- **IPC**: a fresh IPC namespace per run: SysV shared memory, queues, semaphores die with it.
- **Signals**: Landlock scopes (ABI >= 6), another uid and the PID namespace.
- **Unprivileged**: as root, setuid to a uid no other process on the host uses (a lock file
  per uid, held by the worker), no groups, no_new_privs.
- **Memory**: a cgroup per worker (v2 where delegated, else v1 memory + pids) counts all the
  call holds (memfd, tmpfs, page cache) against `memory_mb`; RLIMIT_AS per process as well.
- **Syscalls**: a seccomp deny list (`_sandbox_seccomp.py`): namespaces, mounts, chroot,
  ptrace, keyrings, io_uring, bpf, perf, kexec, modules, memfd where no cgroup counts it, ...
- **Resources**: RLIMIT_CPU, RLIMIT_FSIZE (`output_mb` per file), RLIMIT_NPROC, no core files.
- **Host memory**: the worker reads at most `max_stdout` bytes of stdout, 64 KiB of stderr
  and 1 MiB of result; garbage on the result channel is a `sandbox_protocol_error` result.

    >>> pool = get_pool()
    >>> call = pool.run("python_grade", {"source": "def grade(s, i): return 1", "sample": {}, "item": {}})
    >>> call.runs[0].result
    {'ok': True, 'value': 1.0}
"""

from __future__ import annotations

import atexit
import fcntl
import itertools
import json
import math
import os
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER_PATH = Path(__file__).with_name("_sandbox_worker.py")
UID_BASE = 64000  # a worker runs its calls as a uid/gid in [UID_BASE, UID_BASE + UID_SLOTS) (root only)
UID_SLOTS = 1000
UID_LOCK_DIRS = ("/run/lock/rftkit-sandbox-uids", "/tmp/.rftkit-sandbox-uids")  # one lock file per uid in use
ACQUIRE_TIMEOUT_S = 120.0  # a call that finds no free worker for this long fails (as a sandbox failure)
START_TIMEOUT_S = 30.0  # a worker that has not said "ready" by then is replaced
HOST_SLACK_S = 5.0  # past timeout_s the host stops waiting for a worker and replaces it
DISK_MB = 256  # per worker: total size of the files its calls may write (when it can mount a tmpfs)

_pools: weakref.WeakSet = weakref.WeakSet()
_shared: SandboxPool | None = None
_shared_lock = threading.Lock()


class SandboxError(Exception):
    """The sandbox itself failed (a worker died or could not start); not the code's fault."""


@dataclass
class RunResult:
    """One run of untrusted code: how it ended, what it returned, a bounded view of its output."""

    result: dict | None = None  # what the harness in the sandbox reported ({"ok": ...}), None if it never did
    timed_out: bool = False
    skipped: bool = False  # the call's time was used up before this run started
    signal: str | None = None  # e.g. "SIGSEGV" when the process was killed by a signal
    exit_code: int | None = None
    stdout: str = ""  # at most `max_stdout` bytes
    stdout_bytes: int = 0  # full size of what it wrote
    stderr_tail: str = ""
    output_limit_hit: bool = False
    wall_s: float | None = None
    cpu_s: float | None = None
    oom_killed: bool = False  # the call's cgroup hit its memory limit and the kernel killed a process
    candidate: dict | None = None  # check harness: how the candidate's process ended on its own ({"signal": ...})
    cleanup_s: float = 0.0  # time taken to remove the run's temp dir
    cleanup_error: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.result and self.result.get("ok") is True)

    def reason(self, timeout_s: float, memory_mb: int, output_mb: int) -> str:
        """Why a run that is not `ok` failed, in words: 'killed by SIGSEGV', 'ValueError: x (line 3, in grade)'."""
        res = self.result or {}
        cpu_limit = max(1, math.ceil(timeout_s))
        if self.skipped:
            return f"not run: the call's {timeout_s:g}s were used up"
        if self.timed_out:
            return f"did not finish within {timeout_s:g}s (killed)"
        if self.signal == "SIGXCPU" or (self.signal == "SIGKILL" and (self.cpu_s or 0) >= cpu_limit):
            return f"CPU time limit ({cpu_limit} s) exceeded"
        if self.signal == "SIGXFSZ" or (self.output_limit_hit and (res.get("errno") == 27 or not res)):
            return f"output file size limit ({output_mb} MB) exceeded"
        if res.get("error_type") == "MemoryError" or res.get("errno") == 12:  # ENOMEM from mmap and friends
            return f"memory limit {memory_mb} MB exceeded ({res['error_type']})"
        if self.oom_killed:
            return f"memory limit {memory_mb} MB exceeded (the call's cgroup; killed by the kernel)"
        if self.signal:
            return f"killed by {self.signal}"
        if res.get("phase") == "candidate_gone":
            fate = self.candidate or {}
            how = (f"killed by {fate['signal']}" if fate.get("signal") else
                   f"exited with status {fate['exit_code']}" if "exit_code" in fate else "still running")
            if fate.get("signal") == "SIGXCPU":
                how = f"CPU time limit ({cpu_limit} s) exceeded"
            return f"{res.get('message')} ({how})"
        if not res:
            tail = self.stderr_tail.strip().splitlines()
            said = f"; stderr: {tail[-1][:200]}" if tail else ""
            return f"exited with status {self.exit_code} without reporting a result{said}"
        if res.get("phase") in ("return", "exit", "sandbox", "result", "entry_point", "harness"):
            return res.get("message") or res.get("phase")
        where = f" ({res['where']})" if res.get("where") else ""
        message = f": {res['message']}" if res.get("message") else ""
        return f"{res.get('error_type', 'error')}{message}{where}"


@dataclass
class CallResult:
    runs: list[RunResult] = field(default_factory=list)
    error: str | None = None  # set when the sandbox failed (SandboxError text); runs is then empty


def default_workers() -> int:
    """Two workers per core, 32 at most: a call spends much of its time waiting on fork, exit and
    pipes, not on a core (measured on 2 cores: 4 workers grade ~1.5x the calls/s of 2)."""
    return min(32, 2 * (os.cpu_count() or 1))


class SandboxedGrader:
    """What the executor reads from a grader that runs its calls here (python, code)."""

    SLACK_S = 1.0  # the executor's deadline is this much later than the sandbox's own kill
    timeout_s: float
    _workers: int | None

    @property
    def concurrency(self) -> int:
        """The executor runs at most this many calls at once: one per sandbox worker."""
        return self._workers or default_workers()

    @property
    def deadline_s(self) -> float:
        return self.timeout_s + self.SLACK_S


def _poll(fd: int, events: int, deadline: float) -> bool:
    """Whether `fd` is ready (or hung up) before `deadline`; poll, not select: the host may hold > 1024 fds."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))


def _worker_env() -> dict[str, str]:
    """Workers never see the host's environment (API keys of judge graders live there)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    if "LD_LIBRARY_PATH" in os.environ:  # some Python builds need it to start at all
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


def _claim_uid() -> tuple[int, int | None]:
    """A uid no other worker on this host uses, and the lock fd that holds it (root only).

    Each uid in use has a lock file held (flock) by its worker for the worker's life, so two
    rftkit processes never share a uid, and with it RLIMIT_NPROC counts. The search starts at
    a place derived from our pid, so concurrent processes rarely contend for the same files.
    """
    if os.geteuid() != 0:
        return os.getuid(), None  # calls keep our uid: nothing to share
    for lock_dir in UID_LOCK_DIRS:
        try:
            os.makedirs(lock_dir, 0o700, exist_ok=True)
            break
        except OSError:
            continue
    else:
        raise SandboxError(f"no directory for the sandbox uid locks ({', '.join(UID_LOCK_DIRS)})")
    start = (os.getpid() * 7919 + next(_claims)) % UID_SLOTS
    for k in range(UID_SLOTS):
        uid = UID_BASE + (start + k) % UID_SLOTS
        fd = os.open(os.path.join(lock_dir, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except OSError:
            os.close(fd)
    raise SandboxError(f"all {UID_SLOTS} sandbox uids from {UID_BASE} are in use on this host")


_claims = itertools.count()


def _remove_tree(path: str, timeout_s: float = 30.0) -> None:
    """Remove a directory whatever is in it (deep trees included), within `timeout_s`; never raises."""
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except (OSError, RecursionError):
        pass
    try:
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        pass


class _Worker:
    """The host's handle on one worker process."""

    def __init__(self, disk_mb: int, disable: tuple[str, ...] = ()) -> None:
        self.uid, self._uid_lock = _claim_uid()
        self.capabilities: dict[str, Any] | None = None
        try:
            self.base_dir = tempfile.mkdtemp(prefix="rftkit-sandbox-")
            os.chmod(self.base_dir, 0o711)  # the sandbox uid must traverse it to reach its own temp dir
            self.proc = subprocess.Popen(
                [sys.executable, "-I", str(WORKER_PATH), self.base_dir, str(self.uid), str(disk_mb), ",".join(disable)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_worker_env(), cwd="/",
                close_fds=True, pass_fds=() if self._uid_lock is None else (self._uid_lock,),
                start_new_session=True)  # Ctrl-C is the host's; the worker holds the uid lock too
        except BaseException:
            self._release_uid()
            raise
        os.set_blocking(self.proc.stdin.fileno(), False)  # writes wait with a deadline (see call)
        self._buf = b""
        self.calls = 0

    def _release_uid(self) -> None:
        if self._uid_lock is not None:
            os.close(self._uid_lock)
            self._uid_lock = None

    def ready(self) -> dict[str, Any]:
        if self.capabilities is None:
            hello = self._read(time.monotonic() + START_TIMEOUT_S)
            if not hello.get("ready"):
                raise SandboxError(f"sandbox worker failed to start: {hello.get('error')}")
            self.capabilities = hello["capabilities"]
        return self.capabilities

    def call(self, request: dict[str, Any], wait_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + wait_s
        data = json.dumps(request).encode() + b"\n"
        fd = self.proc.stdin.fileno()
        while data:  # a large request to a wedged worker must not block us past the deadline
            if not _poll(fd, select.POLLOUT, deadline):
                raise SandboxError("sandbox worker did not take the request in time")
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                continue
            except OSError as exc:
                raise SandboxError(f"sandbox worker is gone ({exc})") from None
        self.calls += 1
        return self._read(deadline)

    def _read(self, deadline: float) -> dict[str, Any]:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            if time.monotonic() >= deadline:
                raise SandboxError("sandbox worker did not answer in time")
            if _poll(fd, select.POLLIN, deadline):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = self.proc.poll()
                    raise SandboxError(f"sandbox worker died (exit status {code})")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            answer = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise SandboxError(f"sandbox worker sent a bad answer ({type(exc).__name__})") from None
        if not isinstance(answer, dict):
            raise SandboxError("sandbox worker sent a bad answer (not an object)")
        return answer

    def stop(self, kill: bool = False) -> None:
        """End the worker (EOF on stdin makes it clean up; SIGKILL if it does not), remove its temp dir and
        cgroup, and free its uid. Never raises."""
        try:
            if self.proc.poll() is None and not kill:
                try:
                    self.proc.stdin.close()
                    self.proc.wait(timeout=5.0)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if self.proc.poll() is None:
                self.proc.kill()  # its zygote has PDEATHSIG=SIGKILL, so the running call's namespace dies too
                self.proc.wait(timeout=10.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        for path in (self.capabilities or {}).get("cgroup_dirs", []):  # left by a worker that was killed
            for _ in range(20):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
        _remove_tree(self.base_dir)
        self._release_uid()


class SandboxPool:
    """Pre-started sandbox workers; thread-safe. `run(...)` blocks until the call's result or its deadline."""

    def __init__(self, workers: int | None = None, disk_mb: int = DISK_MB, _disable: tuple[str, ...] = ()):
        """disk_mb: size of each worker's private tmpfs holding its calls' temp dirs (root/user namespace only).

        `_disable` switches layers off ("namespaces", "landlock", "uid_drop") to test the fallbacks.
        """
        self.size, self.disk_mb, self._disable = int(workers or default_workers()), int(disk_mb), tuple(_disable)
        if self.size < 1:
            raise ValueError(f"workers must be >= 1 (got {workers})")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.closed = False
        self.owner_pid = os.getpid()  # a forked child (multiprocessing) must not talk to our workers
        self.spawn_error: str | None = None  # why the last worker start failed (the pool retries on the next call)
        for _ in range(self.size):
            self._idle.put(self._spawn())
        _pools.add(self)

    def _spawn(self) -> _Worker:
        worker = _Worker(self.disk_mb, self._disable)
        with self._lock:
            self._workers.add(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        with self._lock:
            self._workers.discard(worker)
        worker.stop(kill=True)

    def _refill(self) -> None:
        """Start workers until the pool has `size` again (after a start failed); never raises."""
        while not self.closed:
            with self._lock:
                if len(self._workers) >= self.size:
                    return
            try:
                self._idle.put(self._spawn())
                self.spawn_error = None
            except (OSError, SandboxError, subprocess.SubprocessError) as exc:
                self.spawn_error = str(exc)
                return

    def _replace(self, worker: _Worker) -> None:
        self._retire(worker)
        self._refill()

    def grow(self, workers: int) -> None:
        """Add workers until the pool has `workers` of them."""
        with self._lock:
            extra, self.size = max(0, workers - self.size), max(self.size, workers)
        for _ in range(extra):
            self._idle.put(self._spawn())

    def capabilities(self) -> dict[str, Any]:
        """The protections the workers apply to every call (see the module docstring)."""
        worker = self._acquire()
        try:
            return dict(worker.ready())
        finally:
            self._release(worker)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._workers]

    def _acquire(self) -> _Worker:
        if self.closed:
            raise SandboxError("the sandbox pool is closed")
        if self.owner_pid != os.getpid():
            raise SandboxError("this sandbox pool belongs to the parent process; use get_pool() after fork")
        deadline = time.monotonic() + ACQUIRE_TIMEOUT_S
        while True:
            self._refill()
            try:
                worker = self._idle.get(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    why = f" (last start failure: {self.spawn_error})" if self.spawn_error else ""
                    raise SandboxError(f"no sandbox worker became free within {ACQUIRE_TIMEOUT_S:g}s{why}") from None
                continue
            if worker.proc.poll() is None:
                return worker
            self._retire(worker)  # died while idle: replace it before any code runs on it

    def _release(self, worker: _Worker) -> None:
        if self.closed:
            self._retire(worker)
        else:
            self._idle.put(worker)

    def run(self, kind: str, payload: dict[str, Any], runs: list[dict[str, Any]] | None = None, *,
            timeout_s: float = 5.0, memory_mb: int = 512, output_mb: int = 16, max_procs: int = 32,
            max_stdout: int = 0) -> CallResult:
        """Run `kind` once per entry of `runs` ({"stdin": str}).

        kind: "python_grade", "script", "check" (candidate and tests in separate processes) or
        "check_inprocess" (in one, as HumanEval: faster, forgeable by the candidate).

        `timeout_s` is the budget of the whole call (all its runs). A sandbox failure
        comes back as `CallResult.error`, never as an exception.
        """
        request = {**payload, "kind": kind, "runs": runs or [{}], "timeout_s": float(timeout_s),
                   "memory_mb": int(memory_mb), "output_mb": int(output_mb), "max_procs": int(max_procs),
                   "max_stdout": int(max_stdout)}
        for attempt in range(2):
            result, retry = self._run_once(request)
            if not retry:
                break
        return result

    def _run_once(self, request: dict[str, Any]) -> tuple[CallResult, bool]:
        """One try on one worker: (result, whether nothing ran and the call may go to another worker)."""
        try:
            worker = self._acquire()
        except SandboxError as exc:
            return CallResult(error=str(exc)), False
        request["id"] = next(self._ids)
        healthy = False
        try:
            worker.ready()
            answer = worker.call(request, request["timeout_s"] + HOST_SLACK_S)
            if answer.get("error"):
                return CallResult(error=f"sandbox worker error: {answer['error']}"), answer.get("retry") is True
            healthy = True
            return CallResult(runs=[_run_result(r) for r in answer["runs"]]), False
        except SandboxError as exc:
            return CallResult(error=str(exc)), False
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            return CallResult(error=f"sandbox worker sent a bad answer ({type(exc).__name__}: {exc})"), False
        finally:
            if healthy:
                self._release(worker)
            else:
                self._replace(worker)

    def close(self) -> None:
        """Stop every worker (a call in flight ends as a SandboxError) and remove their temp dirs."""
        self.closed = True
        if self.owner_pid != os.getpid():
            return  # inherited through fork: the workers belong to the parent
        with self._lock:
            workers = list(self._workers)
            self._workers.clear()
        for worker in workers:
            worker.stop()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _run_result(raw: dict[str, Any]) -> RunResult:
    known = RunResult.__dataclass_fields__
    return RunResult(**{k: v for k, v in raw.items() if k in known})


def get_pool(workers: int | None = None) -> SandboxPool:
    """The process-wide pool, started on first use and grown to `workers` when asked for more."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.closed or _shared.owner_pid != os.getpid():
            _shared = SandboxPool(workers)
        elif workers and workers > _shared.size:
            _shared.grow(workers)
        return _shared


def capabilities() -> dict[str, Any]:
    """Which protections are active on this machine (asks a worker of the shared pool)."""
    return get_pool().capabilities()


# layer (a key of capabilities()) -> what it guarantees when on
LAYERS = {
    "fresh_process_per_run": "each run is a fork of a zygote that never held a call's data: nothing of call N in N+1",
    "pid_namespace": "nothing a call starts outlives it (pid 1 kills and reaps the rest after each run)",
    "subreaper": "fallback without a PID namespace: leftovers parented to the zygote are killed",
    "net_namespace": "no network: a down loopback only",
    "private_dirs": "/tmp, /run and /dev/shm are empty private tmpfs: no host Unix sockets or files there",
    "per_call_tmpfs": "each run's temp dir is its own tmpfs (size and file count bounded), freed at once",
    "ipc_namespace": "SysV shared memory, queues and semaphores are per run and die with it",
    "uid_drop": "runs as an unprivileged uid no other process on the host uses",
    "landlock_fs": "files: read-only Python installation and system libraries, read-write only the temp dir",
    "landlock_net": "TCP bind and connect are refused",
    "landlock_scope": "no signals and no abstract Unix sockets beyond the run's own processes",
    "cgroup": "memory_mb counts everything the call holds (memfd, tmpfs, page cache); max_procs as pids.max",
    "seccomp": "namespaces, mounts, ptrace, keyrings, io_uring, bpf, perf, kexec, other socket families refused",
    "rlimits": "CPU time, address space, file size, process count, no core files",
}


def describe_capabilities(caps: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(layer, active, what it guarantees) for each layer, in the order of LAYERS; the cgroup's version,
    the uid and what happens to memfd are folded into the text."""
    rows = []
    for layer, text in LAYERS.items():
        value = caps.get(layer, False)
        if layer == "subreaper" and caps.get("pid_namespace"):
            continue  # only the fallback of the PID namespace
        if layer == "cgroup":
            text = f"{text} ({value})" if value else f"{text} (off: {caps.get('cgroup_error', 'not available')})"
        if layer == "uid_drop" and value:
            text = f"{text} (uid {caps.get('uid')})"
        if layer == "seccomp":
            text += f"; memfd: {caps.get('memfd', 'uncounted')}"
            if not value and caps.get("seccomp_error"):
                text += f" (off: {caps['seccomp_error']})"
        if layer == "private_dirs" and value:
            text = text.replace("/tmp, /run and /dev/shm", ", ".join(value))
        rows.append((layer, bool(value), text))
    return rows


@atexit.register
def _close_all() -> None:
    for pool in list(_pools):
        pool.close()


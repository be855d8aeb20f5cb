"""A sandbox worker process: runs untrusted Python, one call at a time, for `sandbox.SandboxPool`.

Started by the host as `python -I _sandbox_worker.py BASE_DIR UID DISK_MB [DISABLED]`; imports
only the standard library (and libseccomp's bindings), never rftkit or torch, so it starts
fast and a fork of it is small. Protocol: one JSON request per line on stdin, one JSON
response per line on stdout; the first line it writes is `{"ready": true, "capabilities": {...}}`.
EOF on stdin (the host closed the pool or died) makes it clean up and exit, even mid-call.

At start the worker enters its own network, mount and IPC-probing namespaces (a down loopback
only; empty private /tmp, /run, /dev/shm; a size-limited tmpfs on BASE_DIR), makes its cgroup
and seccomp filter, and forks the ZYGOTE, pid 1 of a new PID namespace, *before it reads any
request*. Per run:

    worker ── reads the request, writes the run's files (request, stdin) into its io dir,
       │      asks the zygote to run, reads the result and output files, answers the host
       └── ZYGOTE (pid 1; trusted; never holds a call's data): forks the run's process(es),
              each of which opens its own files and confines itself (`_confine`), waits for
              them up to the deadline, then kills and reaps everything else in the namespace

A run's process is a fork of the zygote, so it holds nothing of earlier calls: not their
test programs, not other samples' inputs or code. The `check` harness forks two: the
candidate's process and the test's process (see `_sandbox_harness.py`). The zygote dies
with the worker (PDEATHSIG), and the kernel then kills everything in its namespace.
Without namespaces the zygote is a subreaper and kills whatever it finds parented to it.
See the docstring of sandbox.py for what is and is not guaranteed.
"""

import json
import os
import select
import signal
import socket
import stat
import sys
import time

# Common modules preloaded so that a forked run does not pay for importing them.
import collections  # noqa: F401
import functools  # noqa: F401
import itertools  # noqa: F401
import pickle  # noqa: F401
import re  # noqa: F401
import string  # noqa: F401

# The confinement and the harnesses, from the files next to this one. Under -I this directory
# is not on sys.path; it is put there only for these imports, so that it is not among the
# directories (sys.path) the sandboxed code may read.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import _sandbox_harness as harness
    from _sandbox_confine import (PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, Plan, _confine, _kill_descendants,
                                  _libc, fcntl_dup, kill_namespace, make_work_dir, new_ipc_namespace,
                                  remove_work_dir)
finally:
    del sys.path[0]

RESULT_CAP = 1 << 20  # bytes of the result channel the worker reads
STDERR_TAIL = 2000  # characters of stderr sent back (for error messages)
PROTOCOL_ERROR = "sandbox_protocol_error"
IO_FILES = ("request", "test", "candidate", "stdin", "stdout", "stderr", "result")
CANDIDATE_GRACE_S = 0.2  # after the test's process ends, how long the candidate's may take to be reaped


# ---------------------------------------------------------------- the zygote


def _run_process(plan, cmd, role, sock):
    """In a fresh fork of the zygote: open this role's files, confine, read the request, run, report."""
    io = plan.io_dir
    rd, wr = os.O_RDONLY | os.O_CLOEXEC, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    nonce = None
    try:
        stdin = os.open(os.path.join(io, "stdin") if cmd["stdin"] and role != "candidate" else os.devnull, rd)
        fds = [stdin, os.open(os.path.join(io, "stdout"), wr), os.open(os.path.join(io, "stderr"), wr),
               os.open(os.path.join(io, "result") if role != "candidate" else os.devnull, os.O_WRONLY | os.O_CLOEXEC),
               os.open(os.path.join(io, {"single": "request"}.get(role, role)), rd)]
        if sock is not None:
            fds.append(sock.fileno())
        work = cmd["work"] + ("-candidate" if role == "candidate" else "")
        _confine(plan, cmd, fds, work, role)
        req = harness.read_request(4)
        nonce = req.pop("nonce", None)
    except BaseException as exc:  # noqa: BLE001 - refuse to run unconfined
        _emit({"ok": False, "phase": "sandbox", "message": f"sandbox set-up failed: {type(exc).__name__}: {exc}"},
              nonce)
        os._exit(71)
    if role == "candidate":
        try:
            harness.serve_candidate(req, harness.channel(5))
        finally:
            harness.flush_streams({})  # what it printed is shown in reasons
            os._exit(0)
    if role == "test":
        result = harness.run_check_test(req, harness.channel(5))
    else:
        result = harness.SINGLE[cmd["kind"]](req)
    _emit(harness.flush_streams(result), nonce)
    os._exit(0)


def _emit(result, nonce):
    """Write the result to fd 3 with this run's nonce (a bare forged `{"ok": true}` is rejected)."""
    try:
        data = json.dumps({**result, "nonce": nonce}).encode()
    except BaseException:  # noqa: BLE001
        data = json.dumps({"ok": False, "phase": "result", "message": "result not serialisable", "nonce": nonce}).encode()
    try:
        os.lseek(3, 0, os.SEEK_SET)
        while data:
            data = data[os.write(3, data):]
    except OSError:
        pass


def _fork(plan, cmd, role, sock, other):
    pid = os.fork()
    if pid == 0:
        try:
            if other is not None:
                other.close()
            _run_process(plan, cmd, role, sock)
        finally:
            os._exit(70)
    return pid


def _wait(pid, timeout, also=None):
    """(wait status, rusage) of child `pid`, or (None, None) if it is still running after `timeout` s
    (or, with `also`, as soon as that other child has ended; it is not reaped here)."""
    end = time.monotonic() + timeout
    pidfds = []
    try:
        for watched in (pid, also) if also is not None else (pid,):
            try:
                pidfds.append(os.pidfd_open(watched))
            except (AttributeError, OSError):
                pidfds = []
                break
        while True:
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got == pid:
                return status, usage
            if also is not None and os.waitid(os.P_PID, also, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return None, None
            left = end - time.monotonic()
            if left <= 0:
                return None, None
            if pidfds:
                select.select(pidfds, [], [], left)
            else:
                time.sleep(min(0.005, left))
    finally:
        for fd in pidfds:
            os.close(fd)


def _describe(status):
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return {"signal": signal.Signals(number).name}
        except ValueError:
            return {"signal": f"signal {number}"}
    return {"exit_code": os.WEXITSTATUS(status)}


def _zygote_run(plan, cmd):
    """One run: its process(es), the deadline, the clean-up; what happened (no data of the call)."""
    if plan.cgroup is not None:
        plan.cgroup.limit(cmd["memory_mb"], cmd["max_procs"])
    ooms = plan.cgroup.oom_kills() if plan.cgroup is not None else 0
    pair = cmd["kind"] == "check"
    works = [cmd["work"]] + ([cmd["work"] + "-candidate"] if pair else [])
    for work in works:
        make_work_dir(plan, work, cmd["disk_mb"])
    new_ipc_namespace(plan)
    start = time.monotonic()
    candidate = None
    if pair:
        test_end, candidate_end = socket.socketpair()
        candidate = _fork(plan, cmd, "candidate", candidate_end, test_end)
        pid = _fork(plan, cmd, "test", test_end, candidate_end)
        candidate_end.close()
        # Kept open: if the candidate's process ends first (leaving a child that holds its end of the
        # channel), shutting the socket down wakes the test's process at once instead of at the deadline.
        c_status, c_usage = _wait(candidate, cmd["budget"], also=pid)
        if c_status is not None:
            test_end.shutdown(socket.SHUT_RDWR)
        test_end.close()
    else:
        pid = _fork(plan, cmd, "single", None, None)
    status, usage = _wait(pid, cmd["budget"] - (time.monotonic() - start))
    timed_out = status is None
    if timed_out:
        os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
    out = {"timed_out": timed_out, "wall_s": time.monotonic() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
           **_describe(status)}
    if candidate is not None:
        if c_status is None:
            c_status, c_usage = _wait(candidate, 0 if timed_out else CANDIDATE_GRACE_S)
        if c_status is None:
            os.kill(candidate, signal.SIGKILL)
            _, c_status, c_usage = os.wait4(candidate, 0)
        else:
            out["candidate"] = _describe(c_status)  # how it ended on its own (killed by SIGSEGV, exited 0, ...)
        out["cpu_s"] += c_usage.ru_utime + c_usage.ru_stime
    if plan.caps["pid_namespace"]:
        kill_namespace()
    else:
        _kill_descendants()
    if plan.cgroup is not None and plan.cgroup.oom_kills() > ooms:
        out["oom_killed"] = True
    cleanup_s, errors = 0.0, []
    for work in works:
        took, error = remove_work_dir(plan, work)
        cleanup_s += took
        if error:
            errors.append(error)
    out["cleanup_s"] = cleanup_s
    if errors:
        out["cleanup_error"] = "; ".join(errors)
    return out


def _zygote_main(plan, cmd_fd, answer_fd):
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if not plan.caps["pid_namespace"]:
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    import gc

    gc.freeze()  # forked runs then share the zygote's objects instead of copying pages on write
    reader = os.fdopen(cmd_fd, "rb")
    while True:
        line = reader.readline()
        if not line:
            os._exit(0)
        try:
            out = _zygote_run(plan, json.loads(line))
        except BaseException as exc:  # noqa: BLE001 - infrastructure trouble; the worker reports it
            out = {"error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(out).encode() + b"\n"
        while data:
            data = data[os.write(answer_fd, data):]


class Zygote:
    """The worker's handle on its zygote."""

    def __init__(self, plan):
        cmd_r, cmd_w = os.pipe()
        ans_r, ans_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(cmd_w)
                os.close(ans_r)
                _zygote_main(plan, cmd_r, ans_w)
            finally:
                os._exit(70)
        os.close(cmd_r)
        os.close(ans_w)
        self.pid, self.cmd, self.ans, self._buf = pid, cmd_w, ans_r, b""

    def run(self, cmd, host_fd):
        """Ask for one run; its answer, or None as soon as the host goes away (EOF on `host_fd`)."""
        os.write(self.cmd, json.dumps(cmd).encode() + b"\n")  # small: a pipe buffer holds it
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self.ans, host_fd], [], [])
            if host_fd in ready:
                return None
            chunk = os.read(self.ans, 1 << 16)
            if not chunk:
                raise OSError("the zygote died")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def alive(self):
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (OSError, ChildProcessError):
            pass


# ---------------------------------------------------------------- the worker's side of a call


def _read_file(path, limit):
    """Up to `limit` bytes of a regular file we created (never follows links); (bytes, full size)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return b"", 0
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return b"", 0
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), info.st_size
    finally:
        os.close(fd)


def parse_result(raw, nonce):
    """The run's result from the bytes of its result channel: any garbage is a protocol error, never a raise."""
    if not raw:
        return None
    try:
        result = json.loads(raw)
    except (ValueError, RecursionError, MemoryError) as exc:  # e.g. "[" * 100000
        return {"ok": False, "phase": "result", "message": f"{PROTOCOL_ERROR}: the result channel held no valid "
                                                           f"JSON ({type(exc).__name__})"}
    if not isinstance(result, dict):
        return {"ok": False, "phase": "result", "message": f"{PROTOCOL_ERROR}: the result channel held no JSON object"}
    if result.pop("nonce", None) != nonce:
        return {"ok": False, "phase": "result", "message": f"{PROTOCOL_ERROR}: the result channel was tampered with"}
    return result


class HostGone(Exception):
    pass


class ZygoteGone(Exception):
    """The zygote died between calls; a new one cannot be forked (it would carry our memory): replace us."""


def _write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _one_run(plan, zygote, req, run, work, budget, host_fd):
    io = plan.io_dir
    paths = {name: os.path.join(io, name) for name in IO_FILES}
    nonce = os.urandom(16).hex()
    kind = req["kind"]
    if kind == "check":  # the candidate's process gets the code only; the nonce and the tests stay on the other side
        _write_private(paths["candidate"], json.dumps({"code": req["code"], "entry_point": req["entry_point"]}).encode())
        _write_private(paths["test"], json.dumps({"test": req["test"], "entry_point": req["entry_point"],
                                                  "nonce": nonce}).encode())
    else:
        body = {k: v for k, v in req.items() if k not in ("runs", "id")}
        _write_private(paths["request"], json.dumps({**body, "nonce": nonce}).encode())
    if run.get("stdin"):
        _write_private(paths["stdin"], run["stdin"].encode())
    for name in ("stdout", "stderr", "result"):
        _write_private(paths[name], b"")
    cmd = {"kind": kind, "work": work, "budget": budget, "stdin": bool(run.get("stdin")),
           "disk_mb": plan.disk_mb, **{k: req[k] for k in ("timeout_s", "memory_mb", "output_mb", "max_procs")}}
    try:
        out = zygote.run(cmd, host_fd)
        if out is None:
            raise HostGone()
        if out.get("error"):
            raise OSError(out["error"])
        raw, _ = _read_file(paths["result"], RESULT_CAP)
        out["result"] = parse_result(raw, nonce)
        stdout, out_size = _read_file(paths["stdout"], req.get("max_stdout", 0))
        err, err_size = _read_file(paths["stderr"], 1 << 16)
        out["stdout"] = stdout.decode("utf-8", "replace")
        out["stdout_bytes"] = out_size
        out["stderr_tail"] = err.decode("utf-8", "replace")[-STDERR_TAIL:]
        out["output_limit_hit"] = max(out_size, err_size) >= req["output_mb"] << 20
        return out
    finally:
        for path in paths.values():  # up to output_mb each, on a tmpfs: do not keep them until the next call
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _handle(plan, zygote, req, host_fd):
    """One request: its runs one after the other, each in a fresh temp dir, within the call's time."""
    end = time.monotonic() + req["timeout_s"]
    if not zygote.alive():
        raise ZygoteGone("the zygote died before the call")
    runs = []
    for index, run in enumerate(req.get("runs") or [{}]):
        budget = end - time.monotonic()
        if budget <= 0:
            runs.append({"skipped": True, "timed_out": True})
            continue
        work = os.path.join(plan.base_dir, f"call{int(req['id'])}-{index}")
        runs.append(_one_run(plan, zygote, req, run, work, budget, host_fd))
    return {"id": req["id"], "runs": runs}


def main():
    base_dir, uid, disk_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    disabled = sys.argv[4].split(",") if len(sys.argv) > 4 and sys.argv[4] else ()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Protocol on private fds; 0-2 point at /dev/null so nothing can write into the protocol.
    host_in = fcntl_dup(0)
    host_out = fcntl_dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    reader = os.fdopen(host_in, "rb")
    writer = os.fdopen(host_out, "wb")

    def send(obj):
        writer.write(json.dumps(obj).encode() + b"\n")
        writer.flush()

    plan = zygote = None
    try:
        try:
            plan = Plan(base_dir, uid, disk_mb, disabled)
            zygote = Zygote(plan)  # before any request: it never sees a call's data
        except BaseException as exc:  # noqa: BLE001
            send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
            return
        send({"ready": True, "pid": os.getpid(), "capabilities": plan.caps})
        while True:
            line = reader.readline()
            if not line:
                return
            try:
                req = json.loads(line)
            except ValueError:
                send({"id": None, "error": "bad request"})
                continue
            try:
                send(_handle(plan, zygote, req, host_in))
            except HostGone:
                return
            except ZygoteGone as exc:  # nothing of the call ran: the host may send it to another worker
                send({"id": req.get("id"), "error": str(exc), "retry": True})
                return
            except BaseException as exc:  # noqa: BLE001 - infrastructure trouble: report it; the host replaces us
                send({"id": req.get("id"), "error": f"{type(exc).__name__}: {exc}"})
                return
    finally:
        if zygote is not None:
            zygote.kill()  # the namespace and everything in it dies with it
        if plan is not None and plan.cgroup is not None:
            for _ in range(50):  # the kernel frees a cgroup a moment after its last process is reaped
                plan.cgroup.remove()
                if not any(os.path.isdir(d) for d in plan.cgroup.dirs.values()):
                    break
                time.sleep(0.01)
        if plan is not None:
            remove_work_dir(plan, base_dir, 10.0)


if __name__ == "__main__":
    main()

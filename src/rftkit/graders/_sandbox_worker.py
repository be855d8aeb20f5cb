"""A sandbox worker process: runs untrusted Python, one call at a time, for `sandbox.SandboxPool`.

Started by the host as `python -I _sandbox_worker.py BASE_DIR UID DISK_MB [DISABLED]`; imports
only the standard library (never rftkit, never torch), so it starts fast and a fork of it is
small. Protocol: one JSON request per line on stdin, one JSON response per line on stdout;
the first line it writes is `{"ready": true, "capabilities": {...}}`. EOF on stdin (the host
closed the pool or died) makes it clean up and exit, even in the middle of a call.

At start the worker enters its own network and mount namespaces (a down loopback only; a
size-limited tmpfs on BASE_DIR for the calls' temp dirs) and starts INIT, pid 1 of a PID
namespace that the worker's later forks land in. Per run:

    worker ── CODE (forked into the namespace: setsid, fds 0-3 = stdin/stdout/stderr/result
       │            files, rlimits, cwd = fresh temp dir, no_new_privs, Landlock, uid dropped)
       │            -> user code; killed by the worker at the deadline
       └── INIT (pid 1; trusted, never runs user code): after each run, kill(-1, SIGKILL) and
                 reap until nothing else is left in the namespace (daemons, fork bombs)

INIT dies with the worker (PDEATHSIG), and the kernel then kills everything in its namespace.
Without namespaces the worker is a subreaper and kills whatever it finds parented to it.
See the docstring of sandbox.py for what is and is not guaranteed.
The confinement itself (namespaces, INIT, rlimits, Landlock, uid and capability drop) lives in
the sibling `_sandbox_confine.py`, loaded from this file's directory without importing rftkit
(under -I, that directory is not on sys.path); this file holds the run protocol: reading
requests, forking and running the user code, and writing the answers.
"""

import json
import math
import numbers
import os
import reprlib
import select
import shutil
import signal
import stat
import sys
import time

# Common modules preloaded so that a forked call does not pay for importing them.
import collections  # noqa: F401
import functools  # noqa: F401
import itertools  # noqa: F401
import re  # noqa: F401
import string  # noqa: F401

# The confinement, from the file next to this one. Under -I this directory is not on sys.path;
# it is put there only for this import, so that it is not among the directories (sys.path)
# the sandboxed code may read.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from _sandbox_confine import Plan, _confine, _kill_descendants, fcntl_dup
finally:
    del sys.path[0]

RESULT_CAP = 1 << 20  # bytes of the result channel the worker reads
STDERR_TAIL = 2000  # characters of stderr sent back (for error messages)


# ---------------------------------------------------------------- inside CODE


def _short(value, limit=200):
    try:
        text = reprlib.repr(value)
    except BaseException:  # noqa: BLE001 - a hostile __repr__
        text = f"<{type(value).__name__}>"
    return text[:limit]


def _exc_info(exc, filenames):
    """{'error_type', 'message', 'where'} of an exception, `where` in the user's own code."""
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001
        message = "<unprintable>"
    where, tb = None, exc.__traceback__
    while tb is not None:  # by hand: extract_tb would format every frame of a 10**6-deep recursion
        code = tb.tb_frame.f_code
        if code.co_filename in filenames:
            where = f"line {tb.tb_lineno}, in {code.co_name}"
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename in filenames:
        where = f"line {exc.lineno}"
    out = {"error_type": type(exc).__name__, "message": message[:500], "where": where}
    if isinstance(exc, OSError):
        out["errno"] = exc.errno
    return out


def _run_python_grade(req):
    ns = {"__name__": "__grader__", "__builtins__": __builtins__}
    try:
        exec(compile(req["source"], "<grader>", "exec"), ns)
        value = ns["grade"](req["sample"], req["item"])
    except SystemExit as exc:
        return {"ok": False, "phase": "exit", "error_type": "SystemExit",
                "message": f"called exit({_short(exc.code)}) instead of returning"}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "phase": "grade", **_exc_info(exc, ("<grader>",))}
    if isinstance(value, numbers.Real):
        try:
            number = float(value)
        except BaseException:  # noqa: BLE001 - e.g. an int too large for a float
            number = None
        if number is not None and math.isfinite(number):
            return {"ok": True, "value": number}
        if number is not None:
            return {"ok": False, "phase": "return", "message": f"grade returned {number}, not a finite number"}
    return {"ok": False, "phase": "return", "message": f"grade returned {_short(value)}, not a number"}


def _run_check(req):
    """HumanEval: exec the candidate, then the test program in the same namespace, then check(entry_point)."""
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    phase = "candidate"
    try:
        exec(compile(req["code"], "<candidate>", "exec"), ns)
        phase = "test"
        exec(compile(req["test"], "<test>", "exec"), ns)
        phase = "entry_point"
        if req["entry_point"] not in ns:
            return {"ok": False, "phase": phase, "message": f"the code defines no {req['entry_point']!r}"}
        phase = "check"
        ns["check"](ns[req["entry_point"]])
    except SystemExit as exc:
        return {"ok": False, "phase": "exit", "error_type": "SystemExit",
                "message": f"called exit({_short(exc.code)}) during the {phase}"}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "phase": phase, **_exc_info(exc, ("<candidate>", "<test>"))}
    return {"ok": True}


def _run_script(req):
    """A whole program as __main__, stdin from the test's input; sys.exit(0) is a normal end."""
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(req["code"], "<candidate>", "exec"), ns)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            return {"ok": False, "phase": "exit", "error_type": "SystemExit",
                    "message": f"exit status {_short(exc.code)}"}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "phase": "script", **_exc_info(exc, ("<candidate>",))}
    return {"ok": True}


HARNESSES = {"python_grade": _run_python_grade, "check": _run_check, "script": _run_script}


def _code_main(plan, req, fds, work, nonce):
    try:
        _confine(plan, req, fds, work)
    except BaseException as exc:  # noqa: BLE001 - refuse to run unconfined
        _emit({"ok": False, "phase": "sandbox", "message": f"sandbox set-up failed: {exc}"}, nonce)
        os._exit(71)
    result = HARNESSES[req["kind"]](req)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException as exc:  # noqa: BLE001 - e.g. EFBIG past the output limit
            if result.get("ok"):
                result = {"ok": False, "phase": "flush", **_exc_info(exc, ())}
    _emit(result, nonce)
    os._exit(0)


def _emit(result, nonce):
    """Write the result to fd 3 with this run's nonce (a bare forged `{"ok": true}` is rejected)."""
    try:
        data = json.dumps({**result, "nonce": nonce}).encode()
    except BaseException:  # noqa: BLE001
        data = json.dumps({"ok": False, "phase": "result", "message": "result not serialisable",
                           "nonce": nonce}).encode()
    try:
        os.lseek(3, 0, os.SEEK_SET)
        while data:
            data = data[os.write(3, data):]
    except OSError:
        pass


# ---------------------------------------------------------------- the worker's side of a call


def _wait(pid, timeout, host_fd):
    """Wait for child `pid` up to `timeout` s: (wait status, rusage), (None, None) on timeout,
    or ("hup", None) as soon as `host_fd` turns readable (EOF: the host went away)."""
    end = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            left = end - time.monotonic()
            poller = select.poll()
            poller.register(host_fd, select.POLLIN | select.POLLHUP)
            if pidfd is not None:
                poller.register(pidfd, select.POLLIN)
            wait_ms = max(0.0, left) * 1000 if pidfd is not None else min(5.0, max(0.0, left) * 1000)
            if any(fd == host_fd for fd, _ in poller.poll(wait_ms)):
                return "hup", None
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got == pid:
                return status, usage
            if left <= 0:
                return None, None
    finally:
        if pidfd is not None:
            os.close(pidfd)


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


class HostGone(Exception):
    pass


def _one_run(plan, req, run, io_dir, work, budget, host_fd):
    """Fork CODE (into the namespace), wait for it up to `budget` s, clean up, and describe what happened."""
    os.mkdir(work, 0o700)
    if plan.caps["uid_drop"]:
        os.chown(work, plan.uid, plan.gid)
    paths = {name: os.path.join(io_dir, name) for name in ("stdin", "stdout", "stderr", "result")}
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    if run.get("stdin"):
        with open(paths["stdin"], "w", encoding="utf-8") as f:
            f.write(run["stdin"])
        fds = [os.open(paths["stdin"], os.O_RDONLY | os.O_CLOEXEC)]
    else:
        fds = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)]
    fds += [os.open(paths[name], flags, 0o600) for name in ("stdout", "stderr", "result")]
    nonce = os.urandom(16).hex()
    if plan.namespace is not None:
        plan.namespace.ensure()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _code_main(plan, req, fds, work, nonce)
        finally:
            os._exit(70)
    for fd in fds:
        os.close(fd)
    status, usage = _wait(pid, budget, host_fd)
    timed_out = status is None or status == "hup"
    if timed_out:
        os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    if plan.namespace is not None:
        plan.namespace.clean()
    else:
        _kill_descendants()
    if status == "hup":
        raise HostGone()
    out = {"timed_out": timed_out, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            out["signal"] = signal.Signals(number).name
        except ValueError:
            out["signal"] = f"signal {number}"
    else:
        out["exit_code"] = os.WEXITSTATUS(status)
    raw, _ = _read_file(paths["result"], RESULT_CAP)
    try:
        out["result"] = json.loads(raw) if raw else None
    except ValueError:
        out["result"] = {"ok": False, "phase": "result", "message": "the result channel held no valid JSON"}
    if not isinstance(out["result"], (dict, type(None))):
        out["result"] = {"ok": False, "phase": "result", "message": "the result channel held no JSON object"}
    elif out["result"] is not None and out["result"].pop("nonce", None) != nonce:
        out["result"] = {"ok": False, "phase": "result", "message": "the result channel was tampered with"}
    stdout, out_size = _read_file(paths["stdout"], req.get("max_stdout", 0))
    err, err_size = _read_file(paths["stderr"], 1 << 16)
    out["stdout"] = stdout.decode("utf-8", "replace")
    out["stdout_bytes"] = out_size
    out["stderr_tail"] = err.decode("utf-8", "replace")[-STDERR_TAIL:]
    out["output_limit_hit"] = max(out_size, err_size) >= req["output_mb"] << 20
    for path in paths.values():  # up to output_mb each, on a tmpfs: do not keep them until the next call
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return out


def _handle(plan, req, host_fd):
    """One request: its runs one after the other, each in a fresh temp dir, within the call's time."""
    end = time.monotonic() + req["timeout_s"]
    runs = []
    for index, run in enumerate(req.get("runs") or [{}]):
        budget = end - time.monotonic()
        if budget <= 0:
            runs.append({"skipped": True, "timed_out": True})
            continue
        work = os.path.join(plan.base_dir, f"call{int(req['id'])}-{index}")
        try:
            runs.append(_one_run(plan, req, run, plan.io_dir, work, budget, host_fd))
        finally:
            shutil.rmtree(work, ignore_errors=True)
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

    try:
        plan = Plan(base_dir, uid, disk_mb, disabled)
    except BaseException as exc:  # noqa: BLE001
        send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    import gc

    gc.freeze()  # forked calls then share the worker's objects instead of copying pages on write
    send({"ready": True, "pid": os.getpid(), "capabilities": plan.caps})
    try:
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
                send(_handle(plan, req, host_in))
            except HostGone:
                return
            except BaseException as exc:  # noqa: BLE001 - report infrastructure trouble, keep serving
                send({"id": req.get("id"), "error": f"{type(exc).__name__}: {exc}"})
    finally:
        if plan.namespace is not None:
            plan.namespace.kill()  # reap INIT ourselves rather than leave a zombie to the host's init
        shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

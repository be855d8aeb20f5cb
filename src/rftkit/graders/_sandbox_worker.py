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
"""

import ctypes
import fcntl
import json
import math
import numbers
import os
import reprlib
import resource
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

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18

# Landlock (include/uapi/linux/landlock.h); syscalls 444-446 on every architecture.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
LL_TRUNCATE, LL_IOCTL_DEV = 1 << 14, 1 << 15
LL_FILE_RIGHTS = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | LL_IOCTL_DEV
LL_NET_BIND_TCP, LL_NET_CONNECT_TCP = 1 << 0, 1 << 1
LL_SCOPE_ABSTRACT_UNIX_SOCKET, LL_SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


RESULT_CAP = 1 << 20  # bytes of the result channel the worker reads
STDERR_TAIL = 2000  # characters of stderr sent back (for error messages)
DEV_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


def _check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


# ---------------------------------------------------------------- worker start-up


class Plan:
    """What the worker found it can do; decided once, applied to every call."""

    def __init__(self, base_dir, uid, disk_mb, disabled=()):
        self.base_dir, self.disk_mb, self.worker_pid = base_dir, disk_mb, os.getpid()
        self.disabled = set(disabled)  # layers switched off on purpose (tests of the fallbacks)
        self.root = os.geteuid() == 0
        self.uid = uid if self.root else os.getuid()
        self.gid = uid if self.root else os.getgid()
        self.caps = {"root": self.root}
        self.read_dirs = _import_dirs(base_dir)
        try:
            self.cap_last = int(open("/proc/sys/kernel/cap_last_cap").read())
        except (OSError, ValueError):
            self.cap_last = 63
        self._namespaces()
        if not self.root:  # our own ids (0 inside a user namespace)
            self.uid, self.gid = os.getuid(), os.getgid()
        self._landlock()
        self.caps["rlimits"] = True
        self.io_dir = os.path.join(base_dir, "io")  # the worker's own files for a run; the sandbox never sees them
        os.mkdir(self.io_dir, 0o700)
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                    "PYTHONIOENCODING": "utf-8"}
        # Threads count against RLIMIT_NPROC and their stacks against RLIMIT_AS: one BLAS/OpenMP thread.
        self.env.update({name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})

    def _namespaces(self):
        caps = self.caps
        caps["user_namespace"] = False
        # An unprivileged user may still own a user namespace, and through it the others.
        if not self.root and "namespaces" not in self.disabled:
            uid, gid = os.getuid(), os.getgid()
            if _libc.unshare(CLONE_NEWUSER) == 0:
                caps["user_namespace"] = True
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"0 {uid} 1")
                _write("/proc/self/gid_map", f"0 {gid} 1")
        privileged = (self.root or caps["user_namespace"]) and "namespaces" not in self.disabled
        caps["net_namespace"] = privileged and _libc.unshare(CLONE_NEWNET) == 0
        caps["mount_namespace"] = caps["private_tmpfs"] = caps["uid_drop"] = False
        if privileged:
            try:
                self._mounts()
            except OSError as exc:
                caps["mount_error"] = str(exc)
        self.namespace = None
        if privileged:
            try:
                self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
                self.namespace = Namespace(self)
                self.namespace.ensure()
            except OSError as exc:
                self.namespace = None
                caps["pid_namespace_error"] = str(exc)
        caps["pid_namespace"] = self.namespace is not None
        caps["subreaper"] = self.namespace is None and _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

    def _mounts(self):
        """A private mount namespace: the calls' temp dirs on a size-limited tmpfs, and the Python
        installation reachable by the sandbox uid even where an ancestor is closed (pyenv under
        /root, mode 0700): a tmpfs laid over that ancestor shows only the needed directories."""
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        self.caps["mount_namespace"] = True
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        _check(_libc.mount(b"tmpfs", self.base_dir.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                           f"mode=0711,size={self.disk_mb}m".encode()), "mount tmpfs on the temp dir")
        self.caps["private_tmpfs"] = True
        if self.root and "uid_drop" not in self.disabled:
            self._open_closed_ancestors()
            self.caps["uid_drop"] = self._uid_can_import()

    def _uid_can_import(self):
        """Whether the sandbox uid can read the installation (else calls keep uid 0, without capabilities)."""
        probe = os.path.join(os.path.dirname(os.__file__), "json", "__init__.py")
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(self.gid)
                os.setuid(self.uid)
                with open(probe, "rb"):
                    pass
                os._exit(0 if all(os.access(d, os.R_OK | os.X_OK) for d in self.read_dirs) else 1)
            finally:
                os._exit(1)
        ok = os.waitpid(pid, 0)[1] == 0
        if not ok:
            self.caps["uid_drop_error"] = f"uid {self.uid} cannot read the Python installation"
        return ok

    def _open_closed_ancestors(self):
        closed = {}
        for path in self.read_dirs:
            parts = path.split("/")[1:]
            for i in range(1, len(parts)):
                ancestor = "/" + "/".join(parts[:i])
                if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                    closed.setdefault(ancestor, []).append(path)
                    break
        for ancestor, paths in closed.items():
            fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in paths]
            _check(_libc.mount(b"tmpfs", ancestor.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k"),
                   f"mount tmpfs on {ancestor}")
            for path, fd in zip(paths, fds):
                os.makedirs(path, 0o755, exist_ok=True)
                _check(_libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None),
                       f"bind {path}")
                os.close(fd)

    def _landlock(self):
        abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        self.abi = max(int(abi), 0) if "landlock" not in self.disabled else 0
        self.caps.update(landlock_abi=self.abi, landlock_fs=self.abi >= 1, landlock_net=self.abi >= 4,
                         landlock_scope=self.abi >= 6)


def _import_dirs(base_dir):
    """Read-only directories user code may need: the Python installation, sys.path, the system libraries.

    Never one holding the temp dirs (a sys.path entry such as /tmp would expose other calls' files).
    """
    found = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path, *SYSTEM_DIRS]
    base = os.path.realpath(base_dir)
    dirs = []
    for path in found:
        if not (path and os.path.isabs(path) and os.path.isdir(path)):
            continue
        real = os.path.realpath(path)
        if real != "/" and real not in dirs and not (base + "/").startswith(real.rstrip("/") + "/"):
            dirs.append(real)
    dirs.sort()
    return [d for i, d in enumerate(dirs) if not any(d.startswith(p.rstrip("/") + "/") for p in dirs[:i])]


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- inside CODE


def _landlock_restrict(plan, work):
    abi = plan.abi
    fs = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        fs |= 1 << 13  # refer
    if abi >= 3:
        fs |= LL_TRUNCATE
    if abi >= 5:
        fs |= LL_IOCTL_DEV
    attr = _RulesetAttr(fs, LL_NET_BIND_TCP | LL_NET_CONNECT_TCP if abi >= 4 else 0,
                        LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _check(_libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                                   ctypes.c_uint32(0)), "landlock_create_ruleset")
    read_only = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR
    rules = [(d, read_only) for d in plan.read_dirs]
    rules += [(f, LL_READ_FILE) for f in SYSTEM_FILES if os.path.exists(f)]
    rules += [(f, (LL_READ_FILE | LL_WRITE_FILE | LL_TRUNCATE | LL_IOCTL_DEV) & fs) for f in DEV_FILES
              if os.path.exists(f)]
    rules.append((work, fs))
    for path, access in rules:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        if not os.path.isdir(path):
            access &= LL_FILE_RIGHTS
        rule = _PathBeneathAttr(access, fd)
        _check(_libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule),
                             ctypes.c_uint32(0)), f"landlock_add_rule {path}")
        os.close(fd)
    _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
           "landlock_restrict_self")
    os.close(ruleset)


def _own_process_count(uid):
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                count += os.stat(f"/proc/{name}").st_uid == uid
            except OSError:
                pass
    return count


def _confine(plan, req, fds, work):
    """Everything between fork and user code, in CODE. Any failure aborts the run (fail closed)."""
    os.setsid()
    high = [fcntl_dup(fd) for fd in fds]  # move out of the way before dup2 onto 0-3
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(4, 1 << 16)
    sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    cpu = max(1, math.ceil(req["timeout_s"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (req["output_mb"] << 20,) * 2)
    # The limit counts every process of the real uid: a dedicated uid has none, our own user may have many.
    procs = req["max_procs"] if plan.caps["uid_drop"] else _own_process_count(os.getuid()) + req["max_procs"]
    resource.setrlimit(resource.RLIMIT_NPROC, (procs, procs))
    os.chdir(work)
    os.environ.clear()
    os.environ.update(plan.env, HOME=work, TMPDIR=work)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if plan.abi >= 1:
        _landlock_restrict(plan, work)
    if plan.caps["uid_drop"]:
        os.setgroups([])
        os.setgid(plan.gid)
        os.setuid(plan.uid)
        if os.getuid() != plan.uid or os.geteuid() != plan.uid:
            raise OSError("uid drop did not take")
    elif plan.root or plan.caps["user_namespace"]:
        _drop_capabilities(plan.cap_last)  # still uid 0 (of the host or of our user namespace): at least no privileges
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")  # cleared by setuid
    # Memory last: the set-up above allocates.
    resource.setrlimit(resource.RLIMIT_AS, (req["memory_mb"] << 20,) * 2)
    sys.dont_write_bytecode = True


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def _drop_capabilities(plan_cap_last):
    """Empty the bounding, effective, permitted and inheritable sets (no_new_privs keeps exec from refilling them)."""
    for cap in range(plan_cap_last + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def fcntl_dup(fd):
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)


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


# ---------------------------------------------------------------- the namespace's INIT


def _init_loop(cmd_fd, ack_fd):
    """pid 1 of the worker's PID namespace: on each byte from the worker, kill every other process in
    the namespace, reap them all, answer. Trusted (never runs user code); dies with the worker,
    and then the kernel kills whatever is left in the namespace."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _close_all_but([cmd_fd, ack_fd])
    while True:
        if not os.read(cmd_fd, 1):  # EOF: the worker is gone
            os._exit(0)
        try:
            os.kill(-1, signal.SIGKILL)  # from pid 1: every process of this namespace but itself
        except ProcessLookupError:
            pass
        while True:  # orphans are re-parented to pid 1, so ECHILD means nobody is left
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        os.write(ack_fd, b"k")


class Namespace:
    """The worker's PID namespace: a long-lived INIT, and the worker's forks landing inside it."""

    def __init__(self, plan):
        self.plan, self.init_pid, self.used = plan, None, False

    def ensure(self):
        """Make the next fork land in a live namespace (a fresh one if INIT died or was killed)."""
        if self.init_pid is not None:
            if os.waitpid(self.init_pid, os.WNOHANG)[0] == 0:
                return
            self._forget()
        if self.used:
            # Our forks would land in the dead namespace: back to our own first. This needs
            # CAP_SYS_ADMIN over the host's PID namespace: as root yes; in a user namespace it
            # fails, the call reports it and the host replaces this worker.
            _check(_libc.setns(self.plan.own_pidns, CLONE_NEWPID), "setns(pid)")
        _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        self.used = True
        cmd_r, cmd_w = os.pipe()
        ack_r, ack_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                _init_loop(cmd_r, ack_w)
            finally:
                os._exit(70)
        os.close(cmd_r)
        os.close(ack_w)
        os.set_inheritable(cmd_w, False)
        os.set_inheritable(ack_r, False)
        self.init_pid, self.cmd, self.ack = pid, cmd_w, ack_r

    def clean(self):
        """Kill everything the last run left in the namespace; True when INIT confirmed it."""
        try:
            os.write(self.cmd, b"k")
            ready, _, _ = select.select([self.ack], [], [], 10.0)
            if ready and os.read(self.ack, 1) == b"k":
                return True
        except OSError:
            pass
        self.kill()  # INIT is stuck or gone: end the namespace (and all in it) with it
        return False

    def kill(self):
        if self.init_pid is not None:
            os.kill(self.init_pid, signal.SIGKILL)
            os.waitpid(self.init_pid, 0)
            self._forget()

    def _forget(self):
        os.close(self.cmd)
        os.close(self.ack)
        self.init_pid = None


def _kill_descendants():
    """Without a PID namespace: kill everything that ended up parented to us (we are a subreaper)."""
    me = os.getpid()
    while True:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == me:
                    try:
                        os.kill(int(name), signal.SIGKILL)
                    except OSError:
                        pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


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


def _close_all_but(keep):
    low = 3
    for fd in sorted(set(keep)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


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

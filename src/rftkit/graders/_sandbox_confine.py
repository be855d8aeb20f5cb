"""The Linux confinement of a sandbox worker: everything about locking a process down.

Loaded by `_sandbox_worker.py` (the run protocol) from its own directory, not as part of the
rftkit package: the worker is started as `python -I _sandbox_worker.py` and imports only the
standard library, so this file does too (never rftkit, never torch). It holds the worker's
start-up probe and set-up (`Plan`: user, network, mount and PID namespaces, the private
view of /tmp, /run and /dev/shm, the size-limited tmpfs, the cgroup, the seccomp filter,
the uid-drop probe, the Landlock ABI), the per-call tmpfs of a run's temp dir, the zygote's
clean-up (`kill_namespace`, or the subreaper fallback `_kill_descendants`), and what a run
does between fork and user code (`_confine`: cgroup, fds, rlimits, no_new_privs, Landlock, uid drop or capability drop, seccomp). It is a
separate module so that the security-critical code can be read and reviewed on its own,
apart from the request/response protocol and the harnesses that run the user's code.
See the docstrings of `_sandbox_worker.py` and sandbox.py for the design and the guarantees.
"""

import ctypes
import fcntl
import math
import os
import resource
import signal
import stat
import subprocess
import sys
import time

from _sandbox_cgroup import PREFIX as CGROUP_PREFIX
from _sandbox_cgroup import Cgroup
from _sandbox_seccomp import UNAVAILABLE as SECCOMP_UNAVAILABLE
from _sandbox_seccomp import build as build_seccomp

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (0x00020000, 0x08000000, 0x10000000,
                                                                      0x20000000, 0x40000000)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 36, 38
MNT_DETACH = 2
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


DEV_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
# Replaced by empty private tmpfs in the worker's mount namespace: host Unix sockets and files
# there (a world-writable socket under /tmp, /run/dbus, ...) do not exist for the sandbox.
HIDDEN_DIRS = ("/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm")
WORK_INODES = 16384  # files, directories and hard links one run may make in its temp dir (per-call tmpfs)


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
        self._cgroup(uid)
        self._seccomp()
        self.caps["rlimits"] = True
        self.caps["fresh_process_per_run"] = True  # the worker forks its zygote before reading any request
        self.caps["uid"] = self.uid if self.caps["uid_drop"] else os.getuid()
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
        self.privileged = privileged
        caps["net_namespace"] = privileged and _libc.unshare(CLONE_NEWNET) == 0
        caps["mount_namespace"] = caps["private_tmpfs"] = caps["private_dirs"] = caps["uid_drop"] = False
        if privileged:
            try:
                self._mounts()
            except OSError as exc:
                caps["mount_error"] = str(exc)
        caps["ipc_namespace"] = privileged and "ipc" not in self.disabled and _probe(
            lambda: _check(_libc.unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)"))
        # The worker's next fork, the zygote, becomes pid 1 of a new PID namespace, and every run it forks lands there.
        caps["pid_namespace"] = privileged and _libc.unshare(CLONE_NEWPID) == 0
        caps["subreaper"] = not caps["pid_namespace"]  # the zygote sets it on itself
        caps["per_call_tmpfs"] = caps["private_tmpfs"]

    def _mounts(self):
        """A private mount namespace: empty private /tmp, /run and /dev/shm, the calls' temp dirs on a
        size-limited tmpfs, and the Python installation reachable by the sandbox uid even where an
        ancestor is closed (pyenv under /root, mode 0700): a tmpfs laid over that ancestor shows only
        the needed directories."""
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        self.caps["mount_namespace"] = True
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        hidden = [d for d in HIDDEN_DIRS if os.path.isdir(d) and not os.path.islink(d)]
        for path in hidden:
            _cover(path, [d for d in self.read_dirs if d.startswith(path + "/")], b"mode=1777,size=16m,nr_inodes=4096")
        self.caps["private_dirs"] = hidden
        os.makedirs(self.base_dir, 0o711, exist_ok=True)
        _check(_libc.mount(b"tmpfs", self.base_dir.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                           f"mode=0711,size={self.disk_mb}m".encode()), "mount tmpfs on the temp dir")
        self.caps["private_tmpfs"] = True
        if self.root and "uid_drop" not in self.disabled:
            self._open_closed_ancestors()
            self.caps["uid_drop"] = self._uid_can_import()

    def _cgroup(self, uid):
        self.cgroup = None
        if "cgroup" in self.disabled:
            self.caps.update(cgroup=False, cgroup_error="switched off")
            return
        self.cgroup, why = Cgroup.create(f"{CGROUP_PREFIX}{uid}")
        self.caps["cgroup"] = f"v{self.cgroup.version}" if self.cgroup else False
        if self.cgroup:
            self.caps["cgroup_dirs"] = sorted(set(self.cgroup.dirs.values()))
        else:
            self.caps["cgroup_error"] = why

    def _seccomp(self):
        self.seccomp = None if "seccomp" in self.disabled else build_seccomp(block_memfd=self.cgroup is None)
        self.caps["seccomp"] = self.seccomp is not None
        if self.seccomp is None:
            self.caps["seccomp_error"] = "switched off" if "seccomp" in self.disabled else SECCOMP_UNAVAILABLE
        self.caps["memfd"] = "cgroup" if self.cgroup else "refused" if self.seccomp is not None else "uncounted"

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
            _cover(ancestor, paths, b"mode=0755,size=64k")

    def _landlock(self):
        abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        self.abi = max(int(abi), 0) if "landlock" not in self.disabled else 0
        self.caps.update(landlock_abi=self.abi, landlock_fs=self.abi >= 1, landlock_net=self.abi >= 4,
                         landlock_scope=self.abi >= 6)


def _cover(path, keep, options):
    """Lay an empty tmpfs over `path`, then bind the directories `keep` (under it) back in place."""
    fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in keep]
    try:
        _check(_libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options), f"mount tmpfs on {path}")
        for kept, fd in zip(keep, fds):
            os.makedirs(kept, 0o755, exist_ok=True)
            _check(_libc.mount(f"/proc/self/fd/{fd}".encode(), kept.encode(), None, MS_BIND | MS_REC, None),
                   f"bind {kept}")
    finally:
        for fd in fds:
            os.close(fd)


def _probe(fn):
    """Whether `fn` succeeds in a throw-away child (for set-up that cannot be undone in the worker)."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os._exit(0)
        finally:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


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


def _confine(plan, limits, fds, work, role):
    """Everything between fork and user code, in a run. Any failure aborts the run (fail closed).

    `role` is "single", "test" or "candidate"; `fds` become 0, 1, 2, ... in that order. The run's
    fresh IPC namespace was made by the zygote before the fork (`new_ipc_namespace`).
    """
    if plan.cgroup is not None:  # first: from here on, everything this run allocates is counted
        for path in plan.cgroup.join_files():
            _write(path, str(os.getpid()))
    os.setsid()
    high = [fcntl_dup(fd) for fd in fds]  # move out of the way before dup2 onto 0, 1, ...
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(len(high), 1 << 16)
    sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    cpu = max(1, math.ceil(limits["timeout_s"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["output_mb"] << 20,) * 2)
    # The limit counts every process of the real uid: a dedicated uid has none, our own user may have many.
    procs = limits["max_procs"] if plan.caps["uid_drop"] else _own_process_count(os.getuid()) + limits["max_procs"]
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
    if role == "test":  # the candidate's process (same uid) may not read this one's memory or fds via /proc
        _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
    if plan.seccomp is not None:
        plan.seccomp.load()
    # Memory last: the set-up above allocates.
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] << 20,) * 2)
    sys.dont_write_bytecode = True


# ---------------------------------------------------------------- a run's temp dir


def new_ipc_namespace(plan):
    """In the zygote, before a run's forks: a fresh IPC namespace that the run's processes share and
    that dies with them (SysV shm, queues, semaphores); the zygote itself never makes IPC objects."""
    if plan.caps["ipc_namespace"]:
        _check(_libc.unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)")


def make_work_dir(plan, work, disk_mb):
    """A fresh temp dir for one run: its own tmpfs where the worker has a mount namespace."""
    os.mkdir(work, 0o700)
    if plan.caps["per_call_tmpfs"]:
        options = f"mode=0700,size={disk_mb}m,nr_inodes={WORK_INODES},uid={plan.uid},gid={plan.gid}"
        _check(_libc.mount(b"tmpfs", work.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()),
               "mount tmpfs on the run's temp dir")
    elif plan.caps["uid_drop"]:
        os.chown(work, plan.uid, plan.gid)


def remove_work_dir(plan, work, budget_s=10.0):
    """Remove a run's temp dir, whatever the run left in it, within `budget_s`; never raises.

    On a per-call tmpfs a detach unmount frees everything at once; else `rm -rf` (which walks
    trees of any depth, where shutil.rmtree hits the recursion limit), then once more after
    making every directory writable. Returns (seconds taken, None or what is left and why).
    """
    start = time.monotonic()
    if plan.caps["per_call_tmpfs"] and os.path.ismount(work):
        if _libc.umount2(work.encode(), MNT_DETACH) != 0:
            return time.monotonic() - start, f"umount {work}: {os.strerror(ctypes.get_errno())}"
    try:
        os.rmdir(work)
        return time.monotonic() - start, None
    except FileNotFoundError:
        return time.monotonic() - start, None
    except OSError:
        pass
    error = None
    for command in (["rm", "-rf", "--one-file-system", "--", work], ["chmod", "-R", "u+rwx", "--", work],
                    ["rm", "-rf", "--one-file-system", "--", work]):
        left = budget_s - (time.monotonic() - start)
        if left <= 0 or not os.path.lexists(work):
            break
        try:
            subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=left, close_fds=True)
        except (OSError, subprocess.SubprocessError) as exc:
            error = f"{command[0]}: {exc}"
    if os.path.lexists(work):
        error = error or f"{work} could not be removed within {budget_s:g}s"
    else:
        error = None
    return time.monotonic() - start, error


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


# ---------------------------------------------------------------- the zygote's clean-up


def kill_namespace():
    """As pid 1 of the PID namespace (the zygote): kill every other process in it and reap them all."""
    try:
        os.kill(-1, signal.SIGKILL)  # from pid 1: every process of this namespace but itself
    except ProcessLookupError:
        pass
    while True:  # orphans are re-parented to pid 1, so ECHILD means nobody is left
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


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


def _close_all_but(keep):
    low = 3
    for fd in sorted(set(keep)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)

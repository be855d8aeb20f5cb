"""The seccomp filter every sandboxed run loads last, just before the user's code starts.

Loaded by the sandbox worker from this directory (standard library plus libseccomp's Python
bindings: the official `seccomp` module where the system has it, else `pyseccomp`, a ctypes
binding with the same API). Without either, or without libseccomp itself, `build()` returns
None and the worker reports `seccomp: false` in its capabilities.

It is a deny list: whatever a Python program needs (files, threads, pipes, fork, exec,
mmap, signals within its own processes) stays allowed; the syscalls below fail with an
errno (EPERM, or EAFNOSUPPORT for socket families), so a program that tries one gets an
ordinary OSError and a reason, not a mysterious kill. Syscalls of another ABI than the
native one (x86 `int 0x80` from x86-64, x32) kill the process (libseccomp's default).
"""

import ctypes
import errno
import os

UNAVAILABLE = None  # why there is no filter, when there is none
try:
    import seccomp
except ImportError:  # libseccomp's bindings are not on PyPI; pyseccomp has the same API
    try:
        import pyseccomp as seccomp
    except Exception as exc:  # noqa: BLE001 - not installed, no libseccomp.so (RuntimeError), too old a one
        seccomp, UNAVAILABLE = None, f"{type(exc).__name__}: {exc}"

# class of what is refused -> the syscalls (names unknown to this architecture are skipped)
DENIED = {
    "namespaces, mounts and root changes": (
        "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
        "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr"),
    "tracing and other processes' memory": (
        "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise"),
    "kernel keyrings": ("add_key", "request_key", "keyctl"),
    "io_uring": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    "bpf and performance counters": ("bpf", "perf_event_open"),
    "kernel images and modules": ("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module"),
    "system administration": (
        "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "settimeofday",
        "clock_settime", "adjtimex", "clock_adjtime", "sethostname", "setdomainname", "iopl", "ioperm",
        "vhangup", "lookup_dcookie", "nfsservctl", "uselib", "ustat", "sysfs"),
    "file handles, fanotify and userfaultfd": (
        "open_by_handle_at", "name_to_handle_at", "fanotify_init", "userfaultfd"),
    "NUMA placement": ("mbind", "set_mempolicy", "migrate_pages", "move_pages"),
}
# socket() and socketpair() keep AF_UNIX, AF_INET and AF_INET6 (the network namespace has a
# down loopback only, and Landlock refuses TCP); every other family (AF_NETLINK, AF_PACKET,
# AF_VSOCK, AF_ALG, AF_BLUETOOTH, ...) fails with EAFNOSUPPORT.
ALLOWED_FAMILIES = (1, 2, 10)
# clone() may not create namespaces; clone3 (whose flags seccomp cannot read) says ENOSYS,
# so the C library falls back to clone().
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                         0x40000000, 0x00000080)
# Refused only where no memory cgroup counts it (an anonymous file that RLIMIT_AS does not see).
MEMFD = ("memfd_create", "memfd_secret")


PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
_libc = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


class Filter:
    """The BPF program libseccomp compiled once (in the worker); `load()` installs it in a run.

    libseccomp's own load regenerates the program from its rules in every run; loading the
    exported program with prctl costs only the kernel's side (~0.3 ms here: it converts and
    JIT-compiles the filter for each process, since a filter cannot be inherited from the
    zygote, which still needs the syscalls it refuses).
    """

    def __init__(self, program):
        self.program = program  # struct sock_filter[], 8 bytes each

    def load(self):
        prog = _SockFprog(len(self.program) // 8, self.program)
        if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"seccomp filter: {os.strerror(err)}")


def build(block_memfd):
    """The filter, or None without libseccomp."""
    if seccomp is None:
        return None
    try:
        ctx = seccomp.SyscallFilter(seccomp.ALLOW)
    except OSError:
        return None
    eperm = seccomp.ERRNO(errno.EPERM)
    names = [name for group in DENIED.values() for name in group] + (list(MEMFD) if block_memfd else [])
    for name in names:
        _rule(ctx, eperm, name)
    _rule(ctx, seccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in CLONE_NAMESPACE_FLAGS:
        _rule(ctx, eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    refused = [f for f in range(max(ALLOWED_FAMILIES)) if f not in ALLOWED_FAMILIES]
    for call in ("socket", "socketpair"):
        nosupport = seccomp.ERRNO(errno.EAFNOSUPPORT)
        _rule(ctx, nosupport, call, seccomp.Arg(0, seccomp.GT, max(ALLOWED_FAMILIES)))
        for family in refused:
            _rule(ctx, nosupport, call, seccomp.Arg(0, seccomp.EQ, family))
    read, write = os.pipe()
    try:
        with os.fdopen(write, "wb", closefd=False) as out:
            ctx.export_bpf(out)
        os.close(write)
        write = None
        chunks = []
        while chunk := os.read(read, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(read)
        if write is not None:
            os.close(write)
    program = b"".join(chunks)
    return Filter(program) if program and len(program) % 8 == 0 else None


def _rule(ctx, action, name, *args):
    try:
        ctx.add_rule(action, name, *args)
    except (OSError, ValueError, RuntimeError):  # a syscall this architecture does not have
        pass

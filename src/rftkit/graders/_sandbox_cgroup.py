"""A memory and process-count cgroup per sandbox worker, which every run of that worker joins.

Standard library only (loaded by the sandbox worker from this directory). One call runs at a
time per worker, so the worker's cgroup is the call's: its memory limit (`memory_mb`) counts
everything the call's processes hold - anonymous memory, memfd, tmpfs and page cache - which
RLIMIT_AS (per process, address space only) does not; `pids.max` bounds its processes.

cgroup v2 where the worker's own cgroup can have children with the memory controller
(a delegated subtree, or root on a host that gives one); else cgroup v1's `memory` and
`pids` hierarchies (root only); else none, and RLIMIT_AS stays the only memory limit.
A cgroup is `<parent>/rftkit-sandbox-<uid>`: the uid is unique on the host (see sandbox.py),
so is the name; the host removes a cgroup whose worker was killed.
"""

import os

PREFIX = "rftkit-sandbox-"


def _mounts():
    """(fstype, super options, mount point) of every cgroup mount."""
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                if len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                    found.append((tail[0], set(tail[2].split(",")), fields[4]))
    except OSError:
        pass
    return found


def _own_paths():
    """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for name in controllers.split(",") if controllers else [""]:
                    paths[name] = path
    except OSError:
        pass
    return paths


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _read(path):
    with open(path) as f:
        return f.read()


class Cgroup:
    """The cgroup(s) of one worker: `limit()` before a run, `join()` in the run, `oom_kills()` after."""

    def __init__(self, version, dirs):
        self.version, self.dirs = version, dirs  # dirs: {"memory": path, "pids": path} (one path twice on v2)
        self.limits = {}

    @classmethod
    def create(cls, name):
        """A new cgroup for this worker, or (None, why not)."""
        mounts, own = _mounts(), _own_paths()
        errors = []
        for fstype, _, point in mounts:
            if fstype == "cgroup2" and "" in own:
                made = _make(os.path.join(point, own[""].lstrip("/")), name, ("memory", "pids"), errors)
                if made:
                    return cls(2, {"memory": made, "pids": made}), None
        dirs = {}
        for controller in ("memory", "pids"):
            for fstype, options, point in mounts:
                if fstype == "cgroup" and controller in options and controller in own:
                    parent = os.path.join(point, own[controller].lstrip("/"))
                    try:
                        path = os.path.join(parent, name)
                        os.mkdir(path, 0o755)
                        dirs[controller] = path
                    except FileExistsError:
                        dirs[controller] = path
                    except OSError as exc:
                        errors.append(f"{parent}: {exc.strerror}")
                    break
        if "memory" in dirs:
            return cls(1, dirs), None
        for path in dirs.values():
            _rmdir(path)
        return None, "; ".join(errors) or "no cgroup mount with a memory controller"

    def limit(self, memory_mb, max_procs):
        """Set the limits of the next run (written only when they change)."""
        wanted = {"memory": memory_mb << 20, "pids": max_procs}
        if wanted == self.limits:
            return
        memory, pids = self.dirs["memory"], self.dirs.get("pids")
        if self.version == 2:
            _write(os.path.join(memory, "memory.max"), str(wanted["memory"]))
            _try_write(os.path.join(memory, "memory.swap.max"), "0")
            _write(os.path.join(memory, "pids.max"), str(max_procs))
        else:
            limit, memsw = os.path.join(memory, "memory.limit_in_bytes"), os.path.join(memory, "memory.memsw.limit_in_bytes")
            # memsw (memory + swap) must stay >= the memory limit: raise in the order that keeps it so
            current = int(_read(limit))
            first, second = (memsw, limit) if wanted["memory"] > current else (limit, memsw)
            for path in (first, second):
                if path == limit or os.path.exists(memsw):
                    _write(path, str(wanted["memory"]))
            if pids:
                _write(os.path.join(pids, "pids.max"), str(max_procs))
        self.limits = wanted

    def join_files(self):
        """The files a run writes its own pid into (opened by the run before it drops privileges)."""
        return sorted({os.path.join(path, "cgroup.procs") for path in self.dirs.values()})

    def oom_kills(self):
        """How many processes the kernel has killed for this cgroup's memory limit so far."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in _read(os.path.join(self.dirs["memory"], name)).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self):
        for path in set(self.dirs.values()):
            _rmdir(path)


def _make(parent, name, controllers, errors):
    """A v2 child of `parent` with `controllers` enabled, or None."""
    try:
        available = _read(os.path.join(parent, "cgroup.controllers")).split()
        if not all(c in available for c in controllers):
            errors.append(f"{parent}: cgroup v2 without {', '.join(c for c in controllers if c not in available)}")
            return None
        enabled = _read(os.path.join(parent, "cgroup.subtree_control")).split()
        missing = [c for c in controllers if c not in enabled]
        if missing:  # fails where the parent holds processes itself (v2's no-internal-process rule)
            _write(os.path.join(parent, "cgroup.subtree_control"), " ".join("+" + c for c in missing))
        path = os.path.join(parent, name)
        os.makedirs(path, 0o755, exist_ok=True)
        return path
    except OSError as exc:
        errors.append(f"{parent}: {exc.strerror or exc}")
        return None


def _try_write(path, text):
    try:
        _write(path, text)
    except OSError:
        pass


def _rmdir(path):
    """Remove a cgroup directory (its processes must be gone); never raises."""
    try:
        os.rmdir(path)
    except OSError:
        pass


def remove_stale(paths):
    """The host's clean-up of the cgroups of a worker that was killed."""
    for path in paths:
        _rmdir(path)

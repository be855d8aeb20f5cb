"""C kernels for CPU hot spots that PyTorch has no single operator for, compiled on first use.

A tiny model's decode step is dozens of small PyTorch operators per layer, and for attention
over a KV cache shared by a prompt's rows each one costs more in dispatch than in arithmetic.
`decode_attention.c` does that layer's rotary embedding, cache write and attention in one
call. It is plain C (no PyTorch headers): the system C compiler builds it in well under a
second, once per machine, into the user cache (`$XDG_CACHE_HOME/rftkit/native`, keyed by the
source, the compiler and the CPU), and ctypes calls it with the tensors' pointers.

Where no C compiler works, or with `RFTKIT_NATIVE=0`, `available()` is False and callers use
their PyTorch path, which computes the same thing (tests compare the two).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode_attention.c")
# -ffast-math lets the exponentials vectorise; the kernel never forms an infinity or NaN itself
# (masked keys are skipped, not set to -inf), which is what fast-math assumes.
FLAG_SETS = (["-march=native", "-fopenmp"], ["-march=native"], ["-mcpu=native"], [])
BASE_FLAGS = ["-O3", "-ffast-math", "-fPIC"]
# Compiled with -ffast-math, linked without it: linking with it adds crtfastmath.o, whose constructor turns on
# flush-to-zero and denormals-are-zero for the whole process at load (torch's CPU maths included). The fuzz
# suite found it: Hypothesis could no longer make subnormal floats once the kernel had been loaded.
LINK_FLAGS = ["-shared"]
RECIPE = "compile-then-link/2"  # part of the cache key: a kernel built by an older recipe is rebuilt

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False
_one_openmp = True  # whether the kernel's OpenMP runtime is PyTorch's (checked once, at load)


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "rftkit" / "native"


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's feature flags where Linux lists them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build(compiler: str) -> Path | None:
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    for flags in FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, RECIPE.encode(), " ".join(BASE_FLAGS + LINK_FLAGS + flags).encode(),
                                         version.encode(),
                                         _cpu_id().encode(), platform.machine().encode()])).hexdigest()[:16]
        target = _cache_dir() / f"decode_attention-{key}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built, obj = Path(tmp) / target.name, Path(tmp) / "decode_attention.o"
            cmd = [compiler, *BASE_FLAGS, *flags, "-c", "-o", str(obj), str(SOURCE)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                link = [f for f in flags if f == "-fopenmp"]  # the OpenMP runtime, not the maths flags
                cmd = [compiler, *LINK_FLAGS, *link, "-o", str(built), str(obj), "-lm"]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                os.replace(built, target)  # atomic: a concurrent build of the same key is harmless
                return target
            log.debug("native kernel: %s failed: %s", " ".join(cmd), done.stderr.strip()[-500:])
    return None


def _load() -> ctypes.CDLL | None:
    if os.environ.get("RFTKIT_NATIVE", "1") == "0" or sys.platform == "win32":
        return None
    compiler = _compiler()
    if compiler is None:
        log.info("native kernel: no C compiler found; CPU decoding uses the PyTorch attention path")
        return None
    try:
        path = _build(compiler)
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("native kernel unavailable (%s); CPU decoding uses the PyTorch attention path", exc)
        return None
    fn = lib.rft_decode_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 13 + [ctypes.c_int64] * 7 + [ctypes.c_float, ctypes.c_int64]
    return lib


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtimes loaded in this process (Linux); empty where that cannot be seen."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return set(re.findall(r"/\S*lib(?:gomp|iomp5|omp)\b[^/\s]*\.so[.\d]*", maps))


def available() -> bool:
    """True once the kernel is built and loaded (built on the first call; later calls are free)."""
    global _library, _tried, _one_openmp
    if not _tried:
        with _lock:
            if not _tried:
                _library = _load()
                _one_openmp = len(_openmp_runtimes()) <= 1
                _tried = True
    return _library is not None


def threads() -> int:
    """Threads the kernel splits rows over: PyTorch's, when it shares PyTorch's OpenMP runtime.

    Built with -fopenmp, the library asks for libgomp.so.1, which the loader finds already loaded
    by PyTorch (pip wheels ship it under that name), so the rows go to PyTorch's own threads. Where
    that runtime is another one (two OpenMP runtimes in the process), their threads would fight
    over the cores, so the kernel stays on one thread."""
    return torch.get_num_threads() if available() and _one_openmp else 1


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     prompt_keys: torch.Tensor, prompt_values: torch.Tensor, prompt_mask: torch.Tensor,
                     group: torch.Tensor, slot: torch.Tensor, own_keys: torch.Tensor, own_values: torch.Tensor,
                     length: int, scale: float, threads: int = 1) -> torch.Tensor:
    """Attention output [b, Hq * D] for one new token per row; writes its rotated key and value into slot `length`.

    q [b, Hq * D], k and v [b, Hkv * D]: the projections before the rotary embedding; cos, sin [b, D];
    prompt_keys/values [U, Hkv, P, D] (rotated, as the prefill left them); prompt_mask [U, P] uint8;
    group [b] int64, row -> prompt; slot [b] int64, row -> its place in own_keys/values [B, Hkv, N, D].
    All float32 on the CPU and contiguous.
    """
    b, d = q.shape[0], cos.shape[-1]
    hq, hkv = q.shape[-1] // d, k.shape[-1] // d
    out = q.new_empty(b, hq * d)
    status = _library.rft_decode_attention(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), cos.data_ptr(), sin.data_ptr(),
        prompt_keys.data_ptr(), prompt_values.data_ptr(), prompt_mask.data_ptr(), group.data_ptr(), slot.data_ptr(),
        own_keys.data_ptr(), own_values.data_ptr(), out.data_ptr(),
        b, hq, hkv, d, prompt_keys.shape[2], own_keys.shape[2], length, scale, threads)
    if status != 0:
        raise MemoryError("rftkit native decode_attention: out of memory")
    return out

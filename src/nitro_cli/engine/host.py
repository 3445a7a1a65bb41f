"""What the engine's speed and kernel choices depend on in the host: memory behaviour, threads, CPU flags."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Let glibc keep freed blocks for reuse instead of returning each large temporary to the OS.

    A training step allocates the same arrays of a few hundred KB to a few hundred MB every batch; by
    default glibc serves each from a fresh mmap and unmaps it on free, so every step page-faults its
    memory in again (measured: an MLP1 step twice as slow). Returns whether the setting took effect.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):  # not glibc (e.g. musl): keep the default behaviour
        return False


def cpu_threads() -> int:
    """Threads the engine's own NumPy loops may use: as many as OpenBLAS was given (nitro gives it one on a
    busy machine, sweeps and users set their own), else every CPU this process may run on."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo spells them (empty where it cannot be read): which int8
    kernels exist (avx512_vnni, avx_vnni, amx_int8) decides what is exact and fast."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()

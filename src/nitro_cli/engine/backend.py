"""Array backend selection: NumPy on the host, CuPy on a CUDA GPU. Randomness never comes from here."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

BACKENDS = ("auto", "numpy", "cupy")


class BackendUnavailable(RuntimeError):
    """The asked-for backend cannot run here (no CuPy, no GPU)."""


def _cupy_or_reason() -> tuple[ModuleType | None, str]:
    if os.environ.get("CUPY_TF32", "0") != "0":
        # TF32 tensor cores round float32 products to 10-bit mantissas: the float32 path would not be exact.
        return None, "CUPY_TF32 is set, which makes float32 products inexact; unset it"
    try:
        import cupy  # type: ignore[import-not-found]
    except ImportError:
        return None, "CuPy is not installed (pip install 'nitro-cli[cuda12]' or 'nitro-cli[cuda13]')"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "CuPy found no CUDA GPU"
    except Exception as exc:  # CUDA driver errors come in many types
        return None, f"CuPy cannot use a CUDA GPU here ({exc.__class__.__name__}: {exc})"
    return cupy, ""


def get_backend(name: str = "auto") -> ModuleType:
    """Return the array module for `name`; `auto` prefers a usable GPU and falls back to NumPy."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown engine {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "numpy":
        return np
    cupy, reason = _cupy_or_reason()
    if cupy is not None:
        return cupy
    if name == "cupy":
        raise BackendUnavailable(f"engine=cupy is not usable: {reason}; use engine=numpy or engine=auto")
    return np


def array_module(a: Any) -> ModuleType:
    """The module (numpy or cupy) that owns array `a`."""
    if isinstance(a, np.ndarray) or np.isscalar(a):
        return np
    import cupy  # type: ignore[import-not-found]

    return cupy.get_array_module(a)


def to_host(a: Any) -> np.ndarray:
    """Copy an array to host memory as a NumPy array (no-op for NumPy arrays)."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return get() if get is not None else np.asarray(a)

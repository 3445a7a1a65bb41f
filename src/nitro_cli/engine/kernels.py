"""Exact integer kernels.

Products go through float BLAS only where the result is provably exact: every partial sum of a length-K
dot product of integers is bounded by K * max|a| * max|b|, so float32 is exact below 2^24 and float64 below
2^53 (integers up to those bounds are representable, whatever the summation order). Past 2^53 the kernels
fall back to NumPy's int64 product, and past 2^63 they raise instead of wrapping.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import array_module

FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53
INT64_LIMIT = 2**63
# im2col chunks hold at most this many elements, bounding memory whatever the batch size.
IM2COL_CHUNK_ELEMENTS = 2**24


class IntegerOverflowError(ArithmeticError):
    """An integer result would not fit its type; raised instead of wrapping around."""


def _require_integer(a: Any, what: str) -> None:
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{what} must be an integer array, got dtype {a.dtype}")


def max_abs(a: Any) -> int:
    """max|a| as a Python int, without the wrap-around of abs() on the most negative value."""
    if a.size == 0:
        return 0
    return max(-int(a.min()), int(a.max()))


def trunc_div(a: Any, b: Any) -> Any:
    """Integer division rounding toward zero (C semantics), unlike floor division `//`."""
    xp = array_module(a)
    a = xp.asarray(a)
    _require_integer(a, "trunc_div numerator")
    if np.isscalar(b) or getattr(b, "ndim", 1) == 0:
        b = int(b)
        if b == 0:
            raise ZeroDivisionError("trunc_div by zero")
        if b > 0:
            q = a // b
            return q + ((q < 0) & (q * b != a))
    else:
        _require_integer(b, "trunc_div denominator")
        if bool((b == 0).any()):
            raise ZeroDivisionError("trunc_div by zero")
    q = a // b
    return q + ((q < 0) & (q * b != a))


def saturate(x: Any, lo: int, hi: int, dtype: Any) -> Any:
    """clip(x, lo, hi) cast to `dtype`: the only way the algorithm narrows a value."""
    info = np.iinfo(dtype)
    if lo < info.min or hi > info.max:
        raise ValueError(f"saturation range [{lo}, {hi}] does not fit {np.dtype(dtype).name}")
    xp = array_module(x)
    return xp.clip(x, lo, hi).astype(dtype, copy=False)


def checked_cast(x: Any, dtype: Any, what: str) -> Any:
    """Cast to a narrower integer type, raising IntegerOverflowError where a value would wrap."""
    info = np.iinfo(dtype)
    if x.size and (int(x.min()) < info.min or int(x.max()) > info.max):
        raise IntegerOverflowError(
            f"{what}: values in [{int(x.min())}, {int(x.max())}] do not fit {np.dtype(dtype).name} "
            f"[{info.min}, {info.max}]"
        )
    return x.astype(dtype, copy=False)


def isqrt(n: int) -> int:
    """Integer square root (floor)."""
    import math

    return math.isqrt(int(n))


def gemm_path(k: int, amax: int, bmax: int) -> str:
    """The fastest exact path for a product with inner size k and operand bounds amax, bmax."""
    bound = k * amax * bmax
    if bound < FLOAT32_EXACT:
        return "float32"
    if bound < FLOAT64_EXACT:
        return "float64"
    if bound < INT64_LIMIT:
        return "int64"
    raise IntegerOverflowError(
        f"integer product overflows int64: inner size {k} x max|a| {amax} x max|b| {bmax} = {bound} >= 2^63"
    )


def _gemm(a: Any, b: Any, path: str) -> Any:
    xp = array_module(a)
    if path == "int64":
        return xp.matmul(a.astype(np.int64, copy=False), b.astype(np.int64, copy=False))
    dtype = np.float32 if path == "float32" else np.float64
    product = xp.matmul(a.astype(dtype, copy=False), b.astype(dtype, copy=False))
    return product.astype(np.int64)


def matmul(a: Any, b: Any) -> Any:
    """Exact integer matrix product `a @ b` as int64 (2-D operands)."""
    _require_integer(a, "matmul left operand")
    _require_integer(b, "matmul right operand")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul needs [m, k] @ [k, n], got {tuple(a.shape)} @ {tuple(b.shape)}")
    return _gemm(a, b, gemm_path(a.shape[1], max_abs(a), max_abs(b)))


def _pad_hw(x: Any, padding: int) -> Any:
    if padding == 0:
        return x
    xp = array_module(x)
    return xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))


def _im2col(xpad: Any, kh: int, kw: int, out_h: int, out_w: int) -> Any:
    """Columns [N*out_h*out_w, C*kh*kw] ordered (c, i, j) to match an OIHW weight reshaped to [O, C*kh*kw]."""
    xp = array_module(xpad)
    n, c = xpad.shape[:2]
    patches = xp.stack(
        [xpad[:, :, i : i + out_h, j : j + out_w] for i in range(kh) for j in range(kw)], axis=2
    )  # [N, C, kh*kw, out_h, out_w]
    return patches.transpose(0, 3, 4, 1, 2).reshape(n * out_h * out_w, c * kh * kw)


def _batch_chunks(n: int, per_sample: int) -> range:
    step = max(1, IM2COL_CHUNK_ELEMENTS // max(1, per_sample))
    return range(0, n, step)


def conv2d(x: Any, w: Any, padding: int = 1) -> Any:
    """Exact int64 cross-correlation, stride 1: x [N, C, H, W], w [O, C, kh, kw] -> [N, O, H', W']."""
    _require_integer(x, "conv2d input")
    _require_integer(w, "conv2d weight")
    if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
        raise ValueError(f"conv2d needs x [N, C, H, W] and w [O, C, kh, kw], got {x.shape} and {w.shape}")
    xp = array_module(x)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    out_h, out_w = h + 2 * padding - kh + 1, wd + 2 * padding - kw + 1
    path = gemm_path(c * kh * kw, max_abs(x), max_abs(w))
    wmat = w.reshape(o, c * kh * kw).T
    xpad = _pad_hw(x, padding)
    out = xp.empty((n, o, out_h, out_w), dtype=np.int64)
    step = _batch_chunks(n, out_h * out_w * c * kh * kw).step
    for start in range(0, n, step):
        part = xpad[start : start + step]
        cols = _im2col(part, kh, kw, out_h, out_w)
        y = _gemm(cols, wmat, path).reshape(part.shape[0], out_h, out_w, o)
        out[start : start + step] = y.transpose(0, 3, 1, 2)
    return out


def conv2d_weight_grad(x: Any, delta: Any, kernel: tuple[int, int] = (3, 3), padding: int = 1) -> Any:
    """Exact int64 weight gradient of conv2d: dW[o,c,i,j] = sum_{n,h,w} delta[n,o,h,w] * xpad[n,c,h+i,w+j]."""
    _require_integer(x, "conv2d_weight_grad input")
    _require_integer(delta, "conv2d_weight_grad error")
    kh, kw = kernel
    n, c, h, wd = x.shape
    out_h, out_w = h + 2 * padding - kh + 1, wd + 2 * padding - kw + 1
    if delta.ndim != 4 or delta.shape[0] != n or delta.shape[2:] != (out_h, out_w):
        raise ValueError(f"conv2d_weight_grad: error shape {delta.shape} does not match input {x.shape}")
    xp = array_module(x)
    o = delta.shape[1]
    path = gemm_path(n * out_h * out_w, max_abs(x), max_abs(delta))
    xpad = _pad_hw(x, padding)
    grad = xp.zeros((o, c * kh * kw), dtype=np.int64)
    step = _batch_chunks(n, out_h * out_w * c * kh * kw).step
    for start in range(0, n, step):
        part = xpad[start : start + step]
        cols = _im2col(part, kh, kw, out_h, out_w)
        d = delta[start : start + step].transpose(0, 2, 3, 1).reshape(-1, o)
        grad += _gemm(d.T, cols, path)
    return grad.reshape(o, c, kh, kw)

"""Exact integer kernels.

Products go through float BLAS only where the result is provably exact: every partial sum of a length-K
dot product of integers is bounded by K * max|a| * max|b|, so float32 is exact below 2^24 and float64 below
2^53 (integers up to those bounds are representable, whatever the summation order). A product too large for
float32 as a whole may still run in float32 in slices of the inner dimension, each below 2^24, summed in
float64. Past 2^53 the kernels fall back to NumPy's int64 product, and past 2^63 they raise instead of
wrapping. On the CPU, a product with an int8 operand may instead run as a few exact 8-bit GEMMs, one per
7- or 8-bit limb of the other operand (`int8gemm`), where that is cheaper than the float path.

Division of such an exact float result y by an integer s (|y|, s < 2^p with p the float's precision) then
truncates exactly: the rounding error of y / s is below |y / s| * 2^-p < 1 / s, while y / s is at least 1 / s
away from any integer it is not equal to, so the rounding can never carry it across an integer.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import int8gemm, timing
from .backend import array_module
from .host import cpu_threads

FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53
INT64_LIMIT = 2**63
# im2col chunks hold at most this many elements, bounding memory whatever the batch size.
IM2COL_CHUNK_ELEMENTS = 2**24
# Below this many inner-dimension terms per float32 slice, slicing costs more than float64 saves.
MIN_FLOAT32_SLICE = 256
# Relative cost of one multiply-add on each exact path, from one-thread GEMM rates measured on this project's
# AVX-512 VNNI machine at VGG8B and MLP1 shapes: ONNX Runtime u8 x s8 MatMulInteger 170-360 GOP/s per limb,
# NumPy (OpenBLAS) float32 80-96 GFLOP/s, float64 35-48 GFLOP/s. An int8 product of L limbs costs L.
PATH_COST = {"int8": 1.0, "float32": 2.5, "float64": 5.5, "int64": 50.0}
# What one int8 product costs besides its multiply-adds, in int8 multiply-adds: about 40 us per call (the
# ONNX Runtime call, splitting the limbs; measured at MLP1's shapes), and about 1.3 ns per int32 output
# element of each limb (written, then recombined; measured on MLP4's 3000 x 64 x 3072 weight gradient).
# Small products, and products with a short inner dimension, stay float.
INT8_CALL_COST = 5_000_000
INT8_OUTPUT_COST = 160
# The widest operand the int8 path splits: 5 limbs hold any int32 (|v| < 1.7e10 with 7-bit digits).
MAX_LIMBS = 5
# sgd_update works through NumPy arrays in chunks of this many elements (float64 temporaries of 512 KiB).
SGD_CHUNK_ELEMENTS = 2**16


class IntegerOverflowError(ArithmeticError):
    """An integer result would not fit its type; raised instead of wrapping around."""


def _require_integer(a: Any, what: str) -> None:
    if a.dtype.kind not in "iu":  # (np.issubdtype is slow enough to show in a step profile)
        raise TypeError(f"{what} must be an integer array, got dtype {a.dtype}")


def max_abs(a: Any) -> int:
    """max|a| as a Python int, without the wrap-around of abs() on the most negative value.

    On CuPy an array that is neither C- nor F-contiguous is copied first: CuPy reduces such an array to one
    value in a single thread block (its CUB reduction wants contiguous memory). Measured on an H200, the
    64x28x28x256 int64 error of VGG8B/MNIST's padded head pool (a view) took 28 ms this way."""
    if a.size == 0:
        return 0
    if not (isinstance(a, np.ndarray) or a.flags.c_contiguous or a.flags.f_contiguous):
        a = array_module(a).ascontiguousarray(a)
    return max(-int(a.min()), int(a.max()))


def operand_bound(a: Any) -> int:
    """An upper bound of max|a| for the exactness check: free for 8-bit arrays, measured otherwise."""
    if a.dtype.itemsize == 1:
        return 128 if a.dtype.kind == "i" else 255
    return max_abs(a)


def trunc_div(a: Any, b: Any) -> Any:
    """Integer division rounding toward zero (C semantics), unlike floor division `//`.

    a - fmod(a, b) is an exact multiple of b between 0 and a, so it neither overflows nor needs rounding.
    """
    xp = array_module(a)
    a = xp.asarray(a)
    _require_integer(a, "trunc_div numerator")
    if np.isscalar(b) or getattr(b, "ndim", 1) == 0:
        b = int(b)
        if b == 0:
            raise ZeroDivisionError("trunc_div by zero")
        if b > 0 and b & (b - 1) == 0 and a.dtype.kind == "i":
            # Power of two: add b - 1 to negatives, then shift (arithmetic, so it floors): rounds toward zero.
            shift = b.bit_length() - 1
            return (a + ((a >> (a.dtype.itemsize * 8 - 1)) & (b - 1))) >> shift
        if abs(b) < FLOAT64_EXACT and (a.dtype.itemsize <= 4 or max_abs(a) < FLOAT64_EXACT):
            # Exact in float64 (see the module docstring), and vectorized where integer division is not.
            q = a.astype(np.float64)  # an array even for 0-d input, so the in-place steps work
            q /= b
            xp.trunc(q, out=q)
            return q.astype(a.dtype)
        if not np.iinfo(a.dtype).min <= b <= np.iinfo(a.dtype).max:
            if not -INT64_LIMIT < b < INT64_LIMIT:
                raise IntegerOverflowError(f"trunc_div: divisor {b} does not fit int64")
            wide = a.astype(np.int64)  # the quotient fits a's type; the divisor needs a wider one
            return ((wide - xp.fmod(wide, b)) // b).astype(a.dtype)
    else:
        _require_integer(b, "trunc_div denominator")
        if bool((b == 0).any()):
            raise ZeroDivisionError("trunc_div by zero")
    return (a - xp.fmod(a, b)) // b


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


def narrowest_int(x: Any) -> Any:
    """x as the narrowest of int16, int32 and int64 that holds all its values (measured; never int8, which
    would make an error operand look like an activation to the int8 path). Exact: values are only retyped."""
    bound = max_abs(x)
    for dtype in (np.int16, np.int32):
        if bound <= np.iinfo(dtype).max:
            return x.astype(dtype, copy=False)
    return x.astype(np.int64, copy=False)


def sgd_update(weight: Any, grad: Any, divisor: int, decay_inv: int | None, what: str) -> Any:
    """weight - trunc(grad / divisor) - trunc(weight / decay_inv) as int32, raising where it would wrap.

    In float64 when that is exact: with |weight| < 2^31, |grad| < 2^53 and 2 <= divisor < 2^53, every
    intermediate is an integer below 2^53 (each operation then rounds to itself) and both divisions truncate
    exactly (module docstring). Otherwise the same formula in int64.
    """
    _require_integer(weight, f"{what}: weight")
    exact_float = grad.dtype.kind == "f"  # from matmul_exact: exact integers below 2^53
    if not exact_float:
        _require_integer(grad, f"{what}: gradient")
    if divisor < 1 or (decay_inv is not None and decay_inv < 1):
        raise ValueError(f"{what}: divisors must be positive, got {divisor} and {decay_inv}")
    if (weight.dtype.itemsize <= 4 and 2 <= divisor < FLOAT64_EXACT
            and (decay_inv is None or decay_inv < FLOAT64_EXACT)
            and (exact_float or max_abs(grad) < FLOAT64_EXACT)):
        return _sgd_update_float64(weight, grad, divisor, decay_inv, what)
    update = trunc_div(grad.astype(np.int64) if exact_float else grad, divisor)
    if decay_inv is not None:
        update = update + trunc_div(weight, decay_inv)
    return checked_cast(weight.astype(np.int64) - update, np.int32, what)


def _sgd_update_float64(weight: Any, grad: Any, divisor: int, decay_inv: int | None, what: str) -> Any:
    """The float64 path of sgd_update, chunk by chunk on NumPy: its five passes then run on temporaries that
    stay in cache instead of streaming whole float64 copies of large layers through memory. NumPy runs each
    pass on one core, so large layers are split between `cpu_threads()` threads (the passes release the GIL;
    every element is computed alone, so the split cannot change a result). The decay term is skipped while
    max|weight| < decay_inv makes it zero."""
    xp = array_module(weight)
    w, g = weight.reshape(-1), grad.reshape(-1)
    decay = decay_inv is not None and max_abs(weight) >= decay_inv
    new = xp.empty(w.shape, dtype=np.int32)

    def update(begin: int, end: int) -> None:
        chunk = SGD_CHUNK_ELEMENTS if xp is np else max(end - begin, 1)
        step = xp.empty(min(chunk, end - begin), dtype=np.float64)
        shrink = xp.empty_like(step) if decay else None
        for start in range(begin, end, chunk):
            stop = min(start + chunk, end)
            t = step[: stop - start]
            xp.true_divide(g[start:stop], divisor, out=t)
            xp.trunc(t, out=t)
            if decay:
                d = shrink[: stop - start]
                xp.true_divide(w[start:stop], decay_inv, out=d)
                xp.trunc(d, out=d)
                t += d
            xp.subtract(w[start:stop], t, out=t)
            new[start:stop] = checked_cast(t, np.int32, what)

    chunks = w.size // SGD_CHUNK_ELEMENTS if xp is np else 1
    workers = min(cpu_threads(), chunks) if chunks > 1 else 1  # small layers: no env lookup per step
    if workers <= 1:
        update(0, w.size)
    else:
        bounds = [w.size * i // workers for i in range(workers + 1)]
        list(_thread_pool(workers).map(update, bounds[:-1], bounds[1:]))  # re-raises a worker's error
    return new.reshape(weight.shape)


_THREAD_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """One pool per process and size: a forked sweep job must not wait on its parent's threads."""
    key = (os.getpid(), workers)
    if key not in _THREAD_POOLS:
        _THREAD_POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="nitro-sgd")
    return _THREAD_POOLS[key]


def isqrt(n: int) -> int:
    """Integer square root (floor)."""
    return math.isqrt(int(n))


@dataclass(frozen=True)
class GemmPlan:
    """How to compute one exact product: `dtype` of the GEMM and the inner-dimension slice length; for the
    int8 path, also which operand is the int8 one, how many limbs the other takes, and whether the limbs
    recombine exactly in float64."""

    dtype: str  # "int8", "float32", "float64" or "int64"
    k_slice: int
    int8_side: str = ""  # "left" or "right"
    limbs: int = 0
    bits: int = 0  # digit width of the limbs
    exact_float: bool = True
    wide_bound: int = 0  # max|.| of the operand split into limbs
    k: int = 0  # the product's inner size, for `path`

    @property
    def accumulator(self) -> Any:
        """The dtype holding the exact result (float32 slices are summed in float64)."""
        if self.dtype == "int8":
            return np.float64 if self.exact_float else np.int64
        return {"float32": np.float32, "float64": np.float64, "int64": np.int64}[self.dtype]

    @property
    def operand(self) -> Any:
        """The dtype im2col builds its columns in for this plan: an int8 left operand comes shifted, as
        uint8 holding a + 128 (int8gemm.shift_int8), where the GEMM library takes it so."""
        if self.dtype == "int8":
            shifted = self.int8_side == "left" and int8gemm.shifted_left_operand()
            return np.uint8 if shifted else np.int8
        return np.int64 if self.dtype == "int64" else self.accumulator

    @property
    def path(self) -> str:
        """float32, float32-sliced, float64, int64 or int8xL (L limbs)."""
        if self.dtype == "int8":
            return f"int8x{self.limbs}"
        return "float32-sliced" if self.dtype == "float32" and self.k_slice < self.k else self.dtype


def gemm_plan(k: int, amax: int, bmax: int, allow_slices: bool = True, int8_side: str = "",
              outer: int = 0) -> GemmPlan:
    """The cheapest exact path for a product with inner size k and operand bounds amax, bmax.

    `int8_side` ("left" or "right") names an int8 operand, which allows the int8 limb path (NumPy arrays
    only; see `int8_operand_side`); `outer` (m * n, when known) weighs that path's fixed cost per call."""
    bound = k * amax * bmax
    if bound < FLOAT32_EXACT:
        plan = GemmPlan("float32", max(k, 1), k=k)
    elif bound < FLOAT64_EXACT:
        k_slice = (FLOAT32_EXACT - 1) // (amax * bmax)
        plan = GemmPlan("float32", k_slice, k=k) if allow_slices and k_slice >= MIN_FLOAT32_SLICE else \
            GemmPlan("float64", k, k=k)
    elif bound < INT64_LIMIT:
        plan = GemmPlan("int64", k, k=k)
    else:
        raise IntegerOverflowError(f"integer product overflows int64: inner size {k} x max|a| {amax} x "
                                   f"max|b| {bmax} = {bound} >= 2^63")
    if int8_side:
        wide, bits = bmax if int8_side == "left" else amax, int8gemm.digit_bits()
        limbs = int8gemm.limbs_needed(wide, bits)
        macs = outer * k if outer else 1  # unknown size: compare the cost of one multiply-add alone
        int8_cost = limbs * PATH_COST["int8"] * (macs + INT8_OUTPUT_COST * outer) + \
            (INT8_CALL_COST if outer else 0)
        # Its int64 recombination's partial values stay below the padded bound.
        fits = int8gemm.padded_bound(k, amax, bmax, bits) < INT64_LIMIT
        if limbs <= MAX_LIMBS and fits and int8_cost < PATH_COST[plan.dtype] * macs:
            return GemmPlan("int8", k, int8_side, limbs, bits,
                            int8gemm.float_combination_exact(k, amax, bmax, bits), wide, k=k)
    return plan


def gemm_path(k: int, amax: int, bmax: int, int8_side: str = "") -> str:
    """The plan's path, for tests and benchmarks: int8xL, float32, float32-sliced, float64 or int64."""
    return gemm_plan(k, amax, bmax, int8_side=int8_side).path


def int8_operand_side(a: Any, b: Any) -> str:
    """"left" or "right" when that operand is int8 and the int8 limb path can run here (NumPy arrays with
    ONNX Runtime installed, not disabled by NITRO_INT8_GEMM=0), else ""."""
    if not isinstance(a, np.ndarray) or not _int8_enabled():
        return ""
    if a.dtype == np.int8:
        return "left"
    return "right" if b.dtype == np.int8 else ""


def _int8_enabled() -> bool:
    global _INT8_ENABLED
    if _INT8_ENABLED is None:
        _INT8_ENABLED = os.environ.get("NITRO_INT8_GEMM", "1") != "0" and int8gemm.available()
    return _INT8_ENABLED


_INT8_ENABLED: bool | None = None


def _gemm(a: Any, b: Any, plan: GemmPlan, columns: Callable[[Any], Any] | None = None) -> Any:
    """a @ b as exact integers held in plan.accumulator (float32, float64 or int64). `columns(rows)`, for an
    int8 left operand, returns a[:, rows].T (see int8gemm._add_outlier_rows)."""
    if not timing.tracing():
        return _gemm_untimed(a, b, plan, columns)
    started = time.perf_counter()
    out = _gemm_untimed(a, b, plan, columns)
    if array_module(out) is not np:
        array_module(out).cuda.get_current_stream().synchronize()  # time the kernels, not their launch
    timing.record(plan.path, a.shape[0], a.shape[1], b.shape[1], started)
    return out


def _gemm_untimed(a: Any, b: Any, plan: GemmPlan, columns: Callable[[Any], Any] | None = None) -> Any:
    xp = array_module(a)
    if plan.dtype == "int8":
        left = plan.int8_side == "left"
        wide, narrow = (b, a) if left else (a, b)
        # A transposed wide operand (x @ W.T): a @ b = (b.T @ a.T).T splits W in its own memory order and
        # copies only the small int8 operand.
        flip = narrow.dtype == np.int8 and not wide.flags.c_contiguous and wide.T.flags.c_contiguous
        if flip:
            a, b, left = b.T, np.ascontiguousarray(a.T), not left
        run = int8gemm.matmul_int8_left if left else int8gemm.matmul_int8_right
        extra = {"columns": columns} if left and columns is not None and not flip else {}
        out = run(a, b, plan.limbs, plan.bits, plan.exact_float, cpu_threads(), plan.wide_bound, **extra)
        return out.T if flip else out
    if plan.dtype == "int64":
        return xp.matmul(a.astype(np.int64, copy=False), b.astype(np.int64, copy=False))
    dtype = np.float32 if plan.dtype == "float32" else np.float64
    a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    k = a.shape[1]
    if plan.k_slice >= k:
        return xp.matmul(a, b)
    out = xp.zeros((a.shape[0], b.shape[1]), dtype=np.float64)
    for start in range(0, k, plan.k_slice):
        out += xp.matmul(a[:, start : start + plan.k_slice], b[start : start + plan.k_slice])
    return out


def _scale_exact(y: Any, divisor: int, lo: int, hi: int) -> Any:
    """clip(trunc(y / divisor), lo, hi) as int8 for an exact integer result y held in any accumulator.

    y is a product's fresh result, which only this function reads: a float y is divided in place, sparing
    a temporary as large as the product."""
    xp = array_module(y)
    if y.dtype == np.int64:
        return saturate(trunc_div(y, divisor), lo, hi, np.int8)
    if divisor >= (FLOAT32_EXACT if y.dtype == np.float32 else FLOAT64_EXACT):
        return saturate(trunc_div(y.astype(np.int64), divisor), lo, hi, np.int8)
    xp.true_divide(y, y.dtype.type(divisor), out=y)  # exact truncation, see the module docstring
    xp.trunc(y, out=y)
    xp.clip(y, lo, hi, out=y)
    return y.astype(np.int8)


def _check_matmul(a: Any, b: Any) -> None:
    _require_integer(a, "matmul left operand")
    _require_integer(b, "matmul right operand")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul needs [m, k] @ [k, n], got {tuple(a.shape)} @ {tuple(b.shape)}")


def matmul_exact(a: Any, b: Any) -> Any:
    """Exact integer matrix product `a @ b`, left in the accumulator of its plan: float32 or float64 arrays
    then hold exact integers (below 2^24 or 2^53), ready for an exact division without a cast to int64."""
    _check_matmul(a, b)
    return _gemm(a, b, _plan_for(a, b))


def matmul(a: Any, b: Any) -> Any:
    """Exact integer matrix product `a @ b` as int64 (2-D operands)."""
    return matmul_exact(a, b).astype(np.int64, copy=False)


def matmul_scaled(a: Any, b: Any, divisor: int, lo: int = -127, hi: int = 127) -> Any:
    """clip(trunc((a @ b) / divisor), lo, hi) as int8, without materializing the int64 product."""
    _check_matmul(a, b)
    return _scale_exact(_gemm(a, b, _plan_for(a, b)), divisor, lo, hi)


def _plan_for(a: Any, b: Any) -> GemmPlan:
    return gemm_plan(a.shape[1], operand_bound(a), operand_bound(b), int8_side=int8_operand_side(a, b),
                     outer=a.shape[0] * b.shape[1])


def _im2col(x_nhwc: Any, kh: int, kw: int, padding: int, dtype: Any) -> Any:
    """Columns [N*H'*W', kh*kw*C] in (i, j, c) order, built straight in the GEMM's dtype (uint8: shifted,
    see GemmPlan.operand)."""
    xp = array_module(x_nhwc)
    x_nhwc, fill = _column_source(x_nhwc, dtype)
    n, h, w, c = x_nhwc.shape
    out_h, out_w = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    cols = xp.full((n, out_h, out_w, kh * kw, c), fill, dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            # Output rows whose window position (i, j) falls inside the image; the rest keep the padding.
            r0, r1 = max(0, padding - i), min(out_h, h + padding - i)
            c0, c1 = max(0, padding - j), min(out_w, w + padding - j)
            cols[:, r0:r1, c0:c1, i * kw + j, :] = x_nhwc[:, r0 + i - padding : r1 + i - padding,
                                                          c0 + j - padding : c1 + j - padding, :]
    return cols.reshape(n * out_h * out_w, kh * kw * c)


def _im2col_t(x_nhwc: Any, kh: int, kw: int, padding: int, dtype: Any) -> Any:
    """The transposed columns [kh*kw*C, N*H'*W'] of _im2col, built directly: from channels-first input each
    window position is a plain slab copy."""
    xp = array_module(x_nhwc)
    x_nhwc, fill = _column_source(x_nhwc, dtype)
    x_cnhw = xp.ascontiguousarray(x_nhwc.transpose(3, 0, 1, 2))
    c, n, h, w = x_cnhw.shape
    out_h, out_w = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    cols = xp.full((kh * kw, c, n, out_h, out_w), fill, dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            r0, r1 = max(0, padding - i), min(out_h, h + padding - i)
            c0, c1 = max(0, padding - j), min(out_w, w + padding - j)
            cols[i * kw + j, :, :, r0:r1, c0:c1] = x_cnhw[:, :, r0 + i - padding : r1 + i - padding,
                                                          c0 + j - padding : c1 + j - padding]
    return cols.reshape(kh * kw * c, n * out_h * out_w)


def _patches(x_nhwc: Any, rows: Any, kh: int, kw: int, padding: int) -> Any:
    """Rows `rows` of _im2col(x_nhwc) as int8 (unshifted), built from x alone: the columns of _im2col_t
    at those output positions, without reading the rest of it."""
    n, h, w, c = x_nhwc.shape
    out_h, out_w = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    xpad = np.pad(x_nhwc, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    image, rem = np.divmod(rows, out_h * out_w)
    top, left = np.divmod(rem, out_w)
    windows = xpad[image[:, None, None], top[:, None, None] + np.arange(kh)[:, None],
                   left[:, None, None] + np.arange(kw)]  # [rows, kh, kw, C]
    return windows.reshape(len(rows), kh * kw * c)


def _patch_columns(x_nhwc: Any, rows: Any, kh: int, kw: int, padding: int) -> Any:
    """Columns `rows` of _im2col(x_nhwc) as int8 rows [len(rows), N*H'*W'] (unshifted), built from x alone:
    column (i, j, c) is channel c of the padded input shifted by (i, j), a slab of its channels-first copy."""
    n, h, w, c = x_nhwc.shape
    out_h, out_w = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    position, channel = np.divmod(rows, c)
    channels, channel = np.unique(channel, return_inverse=True)  # only the channels these columns read
    xpad = np.zeros((len(channels), n, h + 2 * padding, w + 2 * padding), dtype=x_nhwc.dtype)
    xpad[:, :, padding : padding + h, padding : padding + w] = x_nhwc[..., channels].transpose(3, 0, 1, 2)
    out = np.empty((len(rows), n, out_h, out_w), dtype=x_nhwc.dtype)
    for p in np.unique(position):  # one slab gather per window position
        i, j = divmod(int(p), kw)
        at = np.flatnonzero(position == p)
        out[at] = xpad[channel[at], :, i : i + out_h, j : j + out_w]
    return out.reshape(len(rows), n * out_h * out_w)


def _column_source(x: Any, dtype: Any) -> tuple[Any, int]:
    """The values im2col copies and its padding value: uint8 columns hold x + 128 (0 shifts to 128)."""
    if dtype == np.uint8 and x.dtype == np.int8:
        return int8gemm.shift_int8(x), 128
    return x, 0


def _batch_step(per_sample: int) -> int:
    return max(1, IM2COL_CHUNK_ELEMENTS // max(1, per_sample))


def _conv_checks(x_nhwc: Any, w: Any, padding: int) -> tuple[int, int]:
    _require_integer(x_nhwc, "conv2d input")
    _require_integer(w, "conv2d weight")
    if x_nhwc.ndim != 4 or w.ndim != 4 or x_nhwc.shape[3] != w.shape[1]:
        raise ValueError(f"conv2d needs x [N, H, W, C] (channels last) and w [O, C, kh, kw], got "
                         f"{x_nhwc.shape} and {w.shape}")
    return x_nhwc.shape[1] + 2 * padding - w.shape[2] + 1, x_nhwc.shape[2] + 2 * padding - w.shape[3] + 1


def _conv_forward(x_nhwc: Any, w: Any, padding: int, finish: Any, out_dtype: Any) -> Any:
    """Shared im2col loop of the forward convolutions; `finish` turns each exact chunk into the output."""
    xp = array_module(x_nhwc)
    out_h, out_w = _conv_checks(x_nhwc, w, padding)
    n, c = x_nhwc.shape[0], x_nhwc.shape[3]
    o, _, kh, kw = w.shape
    k = c * kh * kw
    plan = gemm_plan(k, operand_bound(x_nhwc), operand_bound(w), int8_side=int8_operand_side(x_nhwc, w),
                     outer=n * out_h * out_w * o)
    wmat = w.transpose(2, 3, 1, 0).reshape(k, o)  # (i, j, c) rows, matching the columns
    out = xp.empty((n, out_h, out_w, o), dtype=out_dtype)
    step = _batch_step(out_h * out_w * k)
    for start in range(0, n, step):
        chunk = x_nhwc[start : start + step]
        cols = _im2col(chunk, kh, kw, padding, plan.operand)
        y = _gemm(cols, wmat, plan, lambda rows, chunk=chunk: _patch_columns(chunk, rows, kh, kw, padding))
        out[start : start + step] = finish(y).reshape(-1, out_h, out_w, o)
    return out


def conv2d_nhwc(x_nhwc: Any, w: Any, padding: int = 1) -> Any:
    """Exact int64 correlation, stride 1, channels last: [N, H, W, C] * [O, C, kh, kw] -> [N, H', W', O]"""
    return _conv_forward(x_nhwc, w, padding, lambda y: y.astype(np.int64, copy=False), np.int64)


def conv2d_nhwc_scaled(x_nhwc: Any, w: Any, divisor: int, padding: int = 1, lo: int = -127,
                       hi: int = 127) -> Any:
    """clip(trunc(conv2d_nhwc(x, w) / divisor), lo, hi) as int8, without the int64 intermediate."""
    return _conv_forward(x_nhwc, w, padding, lambda y: _scale_exact(y, divisor, lo, hi), np.int8)


def conv2d(x: Any, w: Any, padding: int = 1) -> Any:
    """Exact int64 cross-correlation, stride 1: x [N, C, H, W], w [O, C, kh, kw] -> [N, O, H', W']."""
    _require_integer(x, "conv2d input")
    if x.ndim != 4:
        raise ValueError(f"conv2d needs x [N, C, H, W], got {x.shape}")
    return conv2d_nhwc(x.transpose(0, 2, 3, 1), w, padding).transpose(0, 3, 1, 2)


def conv2d_weight_grad_nhwc(x_nhwc: Any, delta_nhwc: Any, kernel: tuple[int, int] = (3, 3),
                            padding: int = 1) -> Any:
    """Exact int64 weight gradient [O, C, kh, kw], channels last:
    dW[o,c,i,j] = sum_{n,h,w} delta[n,h,w,o] * xpad[n,h+i,w+j,c]."""
    return conv2d_weight_grad_exact(x_nhwc, delta_nhwc, kernel, padding).astype(np.int64, copy=False)


def conv2d_weight_grad_exact(x_nhwc: Any, delta_nhwc: Any, kernel: tuple[int, int] = (3, 3),
                             padding: int = 1) -> Any:
    """conv2d_weight_grad_nhwc left in its accumulator (exact integers in float or int64, as matmul_exact),
    C-contiguous: the optimizer reads it flat without another copy."""
    _require_integer(x_nhwc, "conv2d_weight_grad input")
    _require_integer(delta_nhwc, "conv2d_weight_grad error")
    kh, kw = kernel
    n, h, w, c = x_nhwc.shape
    out_h, out_w = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    if delta_nhwc.ndim != 4 or delta_nhwc.shape[0] != n or delta_nhwc.shape[1:3] != (out_h, out_w):
        raise ValueError(f"conv2d_weight_grad: error shape {delta_nhwc.shape} does not match input "
                         f"{x_nhwc.shape}")
    xp = array_module(x_nhwc)
    o = delta_nhwc.shape[3]
    step = _batch_step(out_h * out_w * kh * kw * c)
    # The batch chunks slice the inner dimension; their sum stays exact in the accumulator.
    int8_side = int8_operand_side(x_nhwc, delta_nhwc)
    if int8_side == "left":
        # dW^T = cols^T @ delta: the int8 columns (built transposed) on the left and the errors, already
        # [rows, O], on the right, so the wide operand is split into limbs without a transposing copy.
        plan = gemm_plan(n * out_h * out_w, operand_bound(x_nhwc), operand_bound(delta_nhwc),
                         allow_slices=False, int8_side=int8_side, outer=o * kh * kw * c)
        grad_t = xp.zeros((kh * kw * c, o), dtype=plan.accumulator)
        for start in range(0, n, step):
            chunk = x_nhwc[start : start + step]
            cols_t = _im2col_t(chunk, kh, kw, padding, plan.operand)
            grad_t += _gemm(cols_t, delta_nhwc[start : start + step].reshape(-1, o), plan,
                            lambda rows, chunk=chunk: _patches(chunk, rows, kh, kw, padding))
        grad = grad_t.T
    else:
        plan = gemm_plan(n * out_h * out_w, operand_bound(delta_nhwc), operand_bound(x_nhwc),
                         allow_slices=False, int8_side=int8_operand_side(delta_nhwc, x_nhwc),
                         outer=o * kh * kw * c)
        grad = xp.zeros((o, kh * kw * c), dtype=plan.accumulator)
        for start in range(0, n, step):
            cols = _im2col(x_nhwc[start : start + step], kh, kw, padding, plan.operand)
            grad += _gemm(delta_nhwc[start : start + step].reshape(-1, o).T, cols, plan)
    return xp.ascontiguousarray(grad.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))


def conv2d_weight_grad(x: Any, delta: Any, kernel: tuple[int, int] = (3, 3), padding: int = 1) -> Any:
    """Exact int64 weight gradient of conv2d: dW[o,c,i,j] = sum_{n,h,w} delta[n,o,h,w] * xpad[n,c,h+i,w+j]."""
    if x.ndim != 4 or delta.ndim != 4:
        raise ValueError(f"conv2d_weight_grad needs 4-D arrays, got {x.shape} and {delta.shape}")
    return conv2d_weight_grad_nhwc(x.transpose(0, 2, 3, 1), delta.transpose(0, 2, 3, 1), kernel, padding)

"""Exact integer products on 8-bit integer hardware (AVX-512 VNNI, AVX2, NEON dot products).

One operand of every large product of NITRO-D is int8 (activations). The other (weights, errors) is split
into balanced base-128 digits ("limbs") `v = sum_i d_i * 128^i` with every d_i in [-64, 63], so that each
limb product is an 8-bit x 8-bit GEMM with int32 accumulators, run by ONNX Runtime's MatMulInteger
(uint8 x int8, the fast kernel on every CPU it supports). Why it is exact:

- The uint8 operand is either the int8 activation plus 128 (values in [0, 255], against digits in
  [-64, 63]) or a digit plus 64 (values in [0, 127], against int8 activations); MatMulInteger subtracts the
  128 or 64 back as its zero point. Either way a pair of 8-bit products is at most 2 * 255 * 64 = 32,640 or
  2 * 127 * 128 = 32,512 in magnitude, so even kernels that add pairs in saturating int16 (AVX2's
  vpmaddubsw) never saturate.
- Each limb product is a sum of K terms of magnitude at most 128 * 128 = 2^14, so it fits int32 when
  K * 2^14 < 2^31; longer inner dimensions are cut into slices of at most `MAX_K` and summed wider.
- The limbs are recombined by Horner's rule in float64 when the whole product is provably below 2^53
  (every partial value is then an integer float64 holds exactly), else in int64.

ONNX Runtime is used only as a GEMM library; `available()` is False without it and the callers keep their
float paths.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

LIMB_BITS = 7
LIMB_BASE = 1 << LIMB_BITS
LIMB_LOW = -(LIMB_BASE // 2)  # digits in [-64, 63]
LIMB_HIGH = LIMB_BASE // 2 - 1
# The largest inner dimension of one limb product: K * 128 * 128 < 2^31.
MAX_K = (2**31 - 1) // (128 * 128)
FLOAT64_EXACT = 2**53

_SESSIONS: dict[tuple[int, int], Any] = {}


def limb_capacity(limbs: int) -> int:
    """The largest |v| that `limbs` balanced digits represent (on both sides): 63 * (128^L - 1) / 127."""
    return LIMB_HIGH * (LIMB_BASE**limbs - 1) // (LIMB_BASE - 1)


def limbs_needed(bound: int) -> int:
    """The fewest digits that represent every integer of magnitude up to `bound`."""
    limbs = 1
    while limb_capacity(limbs) < bound:
        limbs += 1
    return limbs


def split_limbs(v: np.ndarray, limbs: int, axis: int = 0, bound: int | None = None) -> np.ndarray:
    """Balanced base-128 digits of v as int8, least significant first, stacked on a new `axis` of a
    C-contiguous array ([limbs, *v.shape] by default; axis=1 lays a matrix's digits out as [K, limbs, N]).

    `bound`, when given, is max|v| as the caller measured it; otherwise the top digit (what remains after
    the others) is checked to lie in [-64, 63]. Either way a v too large for `limbs` digits raises
    ValueError instead of losing its high part.
    """
    if bound is not None and bound > limb_capacity(limbs):
        raise ValueError(f"values up to {bound} do not fit {limbs} limbs")
    shape = list(v.shape)
    shape.insert(axis, limbs)
    if limbs == 1:  # the value is its own digit
        if bound is None:
            _check_top_digit(v, v, limbs)
        return v.astype(np.int8).reshape(shape)
    # The narrowest type in which every value and remainder (|.| < capacity + 64) is exact.
    cap = limb_capacity(limbs) if bound is None else bound
    wide = np.int16 if cap < 2**14 else np.int32 if cap < 2**30 else np.int64
    if bound is None and v.dtype.itemsize > np.dtype(wide).itemsize and v.size:
        wide = np.int64  # unmeasured: keep every value as it is until the check
    rest = np.array(v, dtype=wide, order="C")  # a copy: the loop works in place
    out = np.empty(shape, dtype=np.int8)
    digits = np.moveaxis(out, axis, 0)  # a view: digits[i] writes the i-th limb in place
    digit = np.empty_like(rest)
    for i in range(limbs - 1):
        np.subtract(rest, LIMB_LOW, out=digit)
        np.bitwise_and(digit, LIMB_BASE - 1, out=digit)
        digit += LIMB_LOW
        digits[i] = digit
        rest -= digit
        rest >>= LIMB_BITS  # exact: rest is now a multiple of 128
    if bound is None:
        _check_top_digit(rest, v, limbs)
    digits[limbs - 1] = rest
    return out


def _check_top_digit(top: np.ndarray, v: np.ndarray, limbs: int) -> None:
    if top.size and (int(top.min()) < LIMB_LOW or int(top.max()) > LIMB_HIGH):
        raise ValueError(f"values up to {int(np.abs(v.astype(np.int64)).max())} do not fit {limbs} limbs")


def available() -> bool:
    """Whether ONNX Runtime (and onnx, to build its one-node graph) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _session(threads: int) -> Any:
    """One MatMulInteger session per process and thread count (a forked sweep job builds its own)."""
    key = (os.getpid(), threads)
    if key not in _SESSIONS:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", "K"]),
                  helper.make_tensor_value_info("B", TensorProto.INT8, ["K", "N"]),
                  helper.make_tensor_value_info("a_zero_point", TensorProto.UINT8, [])]
        node = helper.make_node("MatMulInteger", ["A", "B", "a_zero_point"], ["Y"])
        output = helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", "N"])
        model = helper.make_model(helper.make_graph([node], "exact_int8_gemm", inputs, [output]),
                                  opset_imports=[helper.make_opsetid("", 10)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads that spin steal the core from NumPy between calls (and from a second run).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        _SESSIONS[key] = ort.InferenceSession(model.SerializeToString(), options,
                                              providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def _matmul_u8s8(a_u8: np.ndarray, zero_point: int, b_s8: np.ndarray, threads: int) -> np.ndarray:
    """(a_u8 - zero_point) @ b_s8 as int32, its inner dimension at most MAX_K (checked by the callers)."""
    feeds = {"A": np.ascontiguousarray(a_u8), "B": np.ascontiguousarray(b_s8),
             "a_zero_point": np.array(zero_point, dtype=np.uint8)}
    return _session(threads).run(None, feeds)[0]


def _combine(parts: list[np.ndarray], exact_float: bool) -> np.ndarray:
    """sum_i parts[i] * 128^i by Horner's rule, in float64 (when proven exact) or int64."""
    dtype = np.float64 if exact_float else np.int64
    out = parts[-1].astype(dtype)
    for part in reversed(parts[:-1]):
        out *= LIMB_BASE
        out += part
    return out


def float_combination_exact(k: int, amax: int, bmax: int) -> bool:
    """Whether the limbs of a product with these bounds may be recombined in float64: every Horner partial
    value is below k * amax * (bmax + 128) (a digit's carry per step), so this must stay below 2^53."""
    return k * (amax + LIMB_BASE) * (bmax + LIMB_BASE) < FLOAT64_EXACT


def shift_int8(a: np.ndarray) -> np.ndarray:
    """a + 128 as uint8 (the int8 operand as MatMulInteger takes it, zero point 128): the sign bit flipped."""
    return a.view(np.uint8) ^ np.uint8(0x80)


def matmul_int8_left(a: np.ndarray, b: np.ndarray, limbs: int, exact_float: bool, threads: int,
                     bound: int | None = None) -> np.ndarray:
    """a @ b for int8 a [M, K] and any integer b [K, N] that fits `limbs` digits (max|b| <= `bound` when
    given, see split_limbs). `a` may also be given already shifted, as the uint8 array shift_int8(a) (im2col
    builds its columns that way, saving a pass).

    The limbs of b sit side by side, [K, limbs * N], so all of them take one GEMM.
    """
    k, n = b.shape
    a_u8 = a if a.dtype == np.uint8 else shift_int8(a)
    digits = split_limbs(b, limbs, axis=1, bound=bound).reshape(k, limbs * n)
    total = None
    for start in range(0, k, MAX_K):
        y = _matmul_u8s8(a_u8[:, start : start + MAX_K], 128, digits[start : start + MAX_K], threads)
        part = _combine([y[:, i * n : (i + 1) * n] for i in range(limbs)], exact_float)
        total = part if total is None else total + part
    return total


def matmul_int8_right(a: np.ndarray, b: np.ndarray, limbs: int, exact_float: bool, threads: int,
                      bound: int | None = None) -> np.ndarray:
    """a @ b for any integer a [M, K] that fits `limbs` digits (max|a| <= `bound` when given) and int8
    b [K, N].

    The limbs of a, shifted by 64 into [0, 127], are stacked, [limbs * M, K], so all take one GEMM.
    """
    m, k = a.shape
    digits_u8 = split_limbs(a, limbs, bound=bound).reshape(limbs * m, k).view(np.uint8) + np.uint8(-LIMB_LOW)
    total = None
    for start in range(0, k, MAX_K):
        y = _matmul_u8s8(digits_u8[:, start : start + MAX_K], -LIMB_LOW, b[start : start + MAX_K], threads)
        part = _combine([y[i * m : (i + 1) * m] for i in range(limbs)], exact_float)
        total = part if total is None else total + part
    return total

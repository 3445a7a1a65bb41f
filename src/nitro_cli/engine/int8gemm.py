"""Exact integer products on 8-bit integer hardware (AVX-512 VNNI, AVX2, NEON dot products).

One operand of every large product of NITRO-D is int8 (activations). The other (weights, errors) is split
into balanced base-2^b digits ("limbs") `v = sum_i d_i * 2^(b*i)` with every d_i in [-2^(b-1), 2^(b-1) - 1],
so that each limb product is an 8-bit x 8-bit GEMM with int32 accumulators, run by ONNX Runtime's
MatMulInteger (uint8 x int8, the fast kernel on every CPU it supports). Why it is exact:

- The uint8 operand is either the int8 activation plus 128 (values in [0, 255], against digits) or a digit
  plus 2^(b-1) (values in [0, 2^b - 1], against int8 activations); MatMulInteger subtracts that shift back as
  its zero point. Every 8-bit product is then at most 255 * 128 in magnitude.
- Digit width b = 7 (the default): a pair of products is at most 2 * 255 * 64 = 32,640, so even kernels that
  add pairs in saturating int16 (AVX2's and AVX-512's vpmaddubsw) never saturate.
  Digit width b = 8, only where `digit_bits()` proves it: pairs reach 65,280, which only kernels without an
  int16 stage sum exactly. ONNX Runtime's GEMM library (MLAS) uses such a kernel on CPUs with VNNI
  (vpdpbusd(s): four 8-bit products added straight into the int32 accumulator). It is taken only where the
  CPU reports VNNI *and* a self-test at the worst case comes out exact: every product at its extreme, all of
  one sign, so every partial sum at any width is as large as a partial sum can be; a kernel that saturated
  or wrapped anywhere would fail it. With fewer digits (2 instead of 3 for values up to 32,639), a grown
  training state takes a third fewer limb products. Without VNNI (e.g. AVX2 only) MLAS adds pairs in
  saturating int16 (vpmaddubsw), fails the self-test at 8 bits, and every product takes 7-bit digits.
- That width is decided once (`digit_bits()`), carried by each plan, and every int8 GEMM takes its digits
  from it: the dense limbs, and the top digits of the outlier rows (`_add_outlier_rows`), which are the top
  limb of the same split. The products refuse a wider digit than the decision (`_require_proven`).
- Each limb product is a sum of K such terms, so it fits int32 when K * 255 * 128 < 2^31 (`max_k`); longer
  inner dimensions are cut into slices and summed wider.
- The limbs are recombined in float64 when the whole product is provably below 2^53 (every partial value is
  then an integer float64 holds exactly), else in int64.
- A top limb that only a few entries use (a grown state's weights and errors: 0.001-0.2% of them need
  the third 8-bit digit) is left out of the GEMM: the operand is split into one digit fewer plus an exact
  integer rest that is 0 elsewhere, and those few entries' terms are added one by one (`_add_outliers`),
  or, where the caller can rebuild the int8 operand's matching columns (a convolution, from its input),
  the rows of the rest that hold them make one small int8 GEMM (`_add_outlier_rows`); both within the
  same bound as the recombination.

The GEMM library (`backend()`): ONNX Runtime, or on request PyTorch's `torch._int_mm` (int8 x int8 -> int32,
oneDNN), which must pass the same worst-case self-test at the digit width in use (every pair of extremes,
for either operand order, so whichever operand its kernel shifts into uint8). Both are used only as GEMM
libraries; `available()` is False without ONNX Runtime and the callers keep their float paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import BackendUnavailable
from .host import cpu_flags

SAFE_BITS = 7
VNNI_BITS = 8
FLOAT64_EXACT = 2**53
# A wide operand whose top limb is all zeros but for a few entries (grown weights and errors: 0.001-0.2%
# of them need the third 8-bit limb) takes one limb product fewer; its few large entries are added one by
# one. Sparse when at most OUTLIER_MAX_DENSITY of a strided sample needs the top limb: near the measured
# break-even of one limb product against the per-entry correction.
OUTLIER_SAMPLE_STRIDE = 257
OUTLIER_MAX_DENSITY = 1.5e-4
# Where the caller can hand over the int8 operand's columns as contiguous rows (a convolution rebuilds
# them from its input), the rows of the wide operand that hold a top digit make one small GEMM instead:
# worth it while they are at most this fraction of its rows, judged from OUTLIER_SAMPLE_ROWS whole rows
# (grown weights and errors hold their large entries in clusters: 741 in 360 of block3's 2,304 rows).
OUTLIER_MAX_ROW_FRACTION = 0.3
OUTLIER_SAMPLE_ROWS = 1024

BACKENDS = ("onnxruntime", "torch")
_SESSIONS: dict[tuple[int, int], Any] = {}
_DIGIT_BITS: int | None = None
_BACKEND: str | None = None


def max_k() -> int:
    """The longest inner dimension of one limb product: K * 255 * 128 < 2^31. Every product of two 8-bit
    values, either of them shifted into uint8 (by us or inside the library's kernel), is at most 255 * 128
    in magnitude, so no int32 sum of a kernel overflows."""
    return (2**31 - 1) // (255 * 128)


def limb_capacity(limbs: int, bits: int) -> int:
    """The largest |v| that `limbs` balanced digits represent (on both sides): h * (B^L - 1) / (B - 1) with
    B = 2^bits and h = B / 2 - 1."""
    base = 1 << bits
    return (base // 2 - 1) * (base**limbs - 1) // (base - 1)


def limbs_needed(bound: int, bits: int) -> int:
    """The fewest digits that represent every integer of magnitude up to `bound`."""
    limbs = 1
    while limb_capacity(limbs, bits) < bound:
        limbs += 1
    return limbs


def split_limbs(v: np.ndarray, limbs: int, bits: int, axis: int = 0, bound: int | None = None) -> np.ndarray:
    """Balanced base-2^bits digits of v as int8, least significant first, stacked on a new `axis` of a
    C-contiguous array ([limbs, *v.shape] by default; axis=1 lays a matrix's digits out as [K, limbs, N]).

    `bound`, when given, is max|v| as the caller measured it; otherwise the top digit (what remains after
    the others) is checked to lie in the digit range. Either way a v too large for `limbs` digits raises
    ValueError instead of losing its high part.
    """
    if bound is not None and bound > limb_capacity(limbs, bits):
        raise ValueError(f"values up to {bound} do not fit {limbs} limbs")
    if limbs == 1:  # the value is its own digit
        if bound is None:
            _check_top_digit(v, v, limbs, bits)
        return v.astype(np.int8).reshape(_stacked_shape(v, 1, axis))
    cap = limb_capacity(limbs, bits) if bound is None else bound
    out, rest = _split(v, limbs, limbs - 1, bits, axis, cap, measured=bound is not None)
    if bound is None:
        _check_top_digit(rest, v, limbs, bits)
    np.moveaxis(out, axis, 0)[limbs - 1] = rest
    return out


def split_low_limbs(v: np.ndarray, limbs: int, bits: int, axis: int,
                    bound: int) -> tuple[np.ndarray, np.ndarray]:
    """The `limbs` low digits of v (laid out as split_limbs lays them) and the rest, the exact integers
    (v - low) / 2^(bits * limbs), whatever their size: v = low + rest * 2^(bits * limbs), and rest is 0
    wherever v fits `limbs` digits. `bound` is max|v|."""
    return _split(v, limbs, limbs, bits, axis, bound, measured=True)


def _stacked_shape(v: np.ndarray, limbs: int, axis: int) -> list[int]:
    shape = list(v.shape)
    shape.insert(axis, limbs)
    return shape


def _split(v: np.ndarray, slots: int, low: int, bits: int, axis: int, cap: int,
           measured: bool) -> tuple[np.ndarray, np.ndarray]:
    """Writes v's `low` low digits into a new int8 array with `slots` digit slots and returns it with the
    rest (v - digits) / 2^(bits * low), exact; |v| <= cap when `measured`."""
    # The narrowest type in which every value and remainder (|.| < cap + 2^bits) is exact.
    wide = np.int16 if cap < 2**14 else np.int32 if cap < 2**30 else np.int64
    if not measured and v.dtype.itemsize > np.dtype(wide).itemsize and v.size:
        wide = np.int64  # unmeasured: keep every value as it is until the check
    half = 1 << (bits - 1)
    out = np.empty(_stacked_shape(v, slots, axis), dtype=np.int8)
    digits = np.moveaxis(out, axis, 0)  # a view: digits[i] writes the i-th limb in place
    rest = v
    for i in range(low):
        # The balanced digit is the low `bits` bits of rest read as a signed number: the low byte (of rest
        # shifted up to fill it), cast in unsigned types, where narrowing keeps the low bits by definition.
        low_bits = rest.view(f"u{rest.dtype.itemsize}")
        if bits < 8:
            low_bits = np.left_shift(low_bits, 8 - bits)
        np.copyto(digits[i].view(np.uint8), low_bits, casting="unsafe")
        if bits < 8:
            digits[i] >>= 8 - bits  # arithmetic: sign-extends the digit
        # (rest - digit) / 2^bits = floor((rest + half) / 2^bits): exact, in place after the first step.
        rest = np.add(rest, half, dtype=wide) if i == 0 else np.add(rest, half, out=rest)
        rest >>= bits
    return out, rest


def _check_top_digit(top: np.ndarray, v: np.ndarray, limbs: int, bits: int) -> None:
    half = 1 << (bits - 1)
    if top.size and (int(top.min()) < -half or int(top.max()) > half - 1):
        raise ValueError(f"values up to {int(np.abs(v.astype(np.int64)).max())} do not fit {limbs} limbs")


def available() -> bool:
    """Whether ONNX Runtime (with onnx, to build its one-node graph) can be imported: a dependency, the
    default library and the one the int8 path needs."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return hasattr(torch, "_int_mm")


def backend() -> str:
    """The GEMM library of the limb products: ONNX Runtime, or PyTorch where NITRO_INT8_BACKEND=torch (an
    optional 5.5 GB dependency; measured here 11% faster on a grown VGG8B step, 2% on a fresh one, 5%
    slower on MLP4's small products), which must then pass the self-test at 7-bit digits."""
    global _BACKEND
    if _BACKEND is None:
        chosen = os.environ.get("NITRO_INT8_BACKEND", "") or "onnxruntime"
        if chosen not in BACKENDS:
            raise BackendUnavailable(f"NITRO_INT8_BACKEND={chosen!r}: use one of {', '.join(BACKENDS)}, or "
                                     "unset it")
        if chosen == "torch" and not (_torch_available() and _worst_case_exact(SAFE_BITS, "torch")):
            raise BackendUnavailable("NITRO_INT8_BACKEND=torch, but PyTorch is not installed or its "
                                     "torch._int_mm failed the exactness self-test on this CPU; unset it to "
                                     "use ONNX Runtime")
        _BACKEND = chosen
    return _BACKEND


def shifted_left_operand() -> bool:
    """Whether the int8 left operand is passed shifted, as uint8 (ONNX Runtime's MatMulInteger takes it so;
    torch._int_mm takes int8 as it is)."""
    return backend() == "onnxruntime"


def digit_bits() -> int:
    """8 where 8-bit digits are proven exact on this machine (see the module docstring), else 7: the one
    digit-width decision of every int8 product. Setting NITRO_INT8_DIGIT_BITS=7 keeps 7-bit digits
    everywhere."""
    global _DIGIT_BITS
    if _DIGIT_BITS is None:
        wide = os.environ.get("NITRO_INT8_DIGIT_BITS", "") != str(SAFE_BITS) and _cpu_has_vnni() and \
            _worst_case_exact(VNNI_BITS, backend())
        _DIGIT_BITS = VNNI_BITS if wide else SAFE_BITS
    return _DIGIT_BITS


def _cpu_has_vnni() -> bool:
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def _worst_case_exact(bits: int, library: str) -> bool:
    """The library's int8 products against exact ones with every term at its extreme for `bits`-bit
    digits, all of one sign, at shapes that reach the kernels' full tiles and their edges: for ONNX
    Runtime with both shifts the callers use, for torch with the digits on either side and every pair of
    extremes (its kernel may shift either operand into uint8)."""
    half = 1 << (bits - 1)
    for m, k, n in ((1, 1, 1), (3, 67, 17), (64, 1024, 130)):
        if library == "torch":
            cases = [(a, b, 0) for ints, digits in (((-128, 127), (-half, half - 1)),
                                                    ((-half, half - 1), (-128, 127)))
                     for a in ints for b in digits]
        else:
            cases = [(a, b, zero_point) for a, b in ((255, -half), (255, half - 1), ((1 << bits) - 1, -128),
                                                     ((1 << bits) - 1, 127))
                     for zero_point in (0, min(a, 128))]
        for a, b, zero_point in cases:
            a_full = np.full((m, k), a, np.uint8 if library == "onnxruntime" else np.int8)
            b_full = np.full((k, n), b, np.int8)
            if library == "torch":
                y = _matmul_s8s8(a_full, b_full, 1)
            else:
                y = _matmul_u8s8(a_full, zero_point, b_full, 1)
            if not (y == (a - zero_point) * b * k).all():
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
    """(a_u8 - zero_point) @ b_s8 as int32, its inner dimension at most max_k (checked by the callers)."""
    feeds = {"A": np.ascontiguousarray(a_u8), "B": np.ascontiguousarray(b_s8),
             "a_zero_point": np.array(zero_point, dtype=np.uint8)}
    return _session(threads).run(None, feeds)[0]


def _matmul_s8s8(a_s8: np.ndarray, b_s8: np.ndarray, threads: int) -> np.ndarray:
    """a_s8 @ b_s8 as int32 by torch._int_mm, its inner dimension at most max_k (checked by the callers)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    a, b = (torch.from_numpy(np.ascontiguousarray(x)) for x in (a_s8, b_s8))
    return torch._int_mm(a, b).numpy()


def _combine(parts: list[np.ndarray], exact_float: bool, bits: int) -> np.ndarray:
    """sum_i parts[i] * 2^(bits*i) by Horner's rule, in float64 (when proven exact) or int64; the first
    step converts and scales the top part in one pass."""
    dtype = np.float64 if exact_float else np.int64
    if len(parts) == 1:
        return parts[0].astype(dtype)
    out = np.multiply(parts[-1], dtype(1 << bits), dtype=dtype)
    out += parts[-2]
    for part in reversed(parts[:-2]):
        out *= 1 << bits
        out += part
    return out


def padded_bound(k: int, amax: int, bmax: int, bits: int) -> int:
    """A bound of every value the limbs of a product with these bounds recombine through: each Horner partial
    value is below k * amax * (bmax + 2^bits) (a digit's carry per step); padded on both sides, as either
    operand may be the one split."""
    base = 1 << bits
    return k * (amax + base) * (bmax + base)


def float_combination_exact(k: int, amax: int, bmax: int, bits: int) -> bool:
    """Whether the limbs of a product with these bounds may be recombined in float64 (exact below 2^53)."""
    return padded_bound(k, amax, bmax, bits) < FLOAT64_EXACT


def shift_int8(a: np.ndarray) -> np.ndarray:
    """a + 128 as uint8 (the int8 operand as MatMulInteger takes it, zero point 128): the sign bit flipped."""
    return a.view(np.uint8) ^ np.uint8(0x80)


def _require_proven(bits: int) -> None:
    """Refuses digits wider than digit_bits(): 8-bit ones are exact only on a kernel that passed the
    self-test (on AVX2 without VNNI, pairs of them saturate int16), 7-bit ones on every kernel."""
    if bits > digit_bits():
        raise ValueError(f"{bits}-bit digits are not proven exact with this CPU's int8 kernel; it takes "
                         f"{digit_bits()}-bit ones (int8gemm.digit_bits)")


def _limb_digits(v: np.ndarray, limbs: int, bits: int, axis: int, bound: int | None,
                 rows: bool = False) -> tuple[np.ndarray, int, np.ndarray | None]:
    """The digits the GEMM takes, how many limbs they are, and the rest its products leave out: all
    `limbs` digits and None, or, when the top limb would be nearly empty, one digit fewer and the sparse
    rest (see split_low_limbs). Nearly empty: at most OUTLIER_MAX_DENSITY of a sample of entries need the
    top digit (for _add_outliers), or with `rows` (for _add_outlier_rows), at most
    OUTLIER_MAX_ROW_FRACTION of a sample of v's rows hold one."""
    if limbs > 1 and bound is not None and bound <= limb_capacity(limbs, bits):
        cap = limb_capacity(limbs - 1, bits)
        if rows:
            sample = v[:: max(1, len(v) // OUTLIER_SAMPLE_ROWS)]
            sparse = np.count_nonzero((sample.max(axis=1) > cap) | (sample.min(axis=1) < -cap)) <= \
                OUTLIER_MAX_ROW_FRACTION * len(sample)
        else:
            sample = v.flat[::OUTLIER_SAMPLE_STRIDE]  # a copy of the sampled entries only, in any layout
            sparse = np.count_nonzero(sample > cap) + np.count_nonzero(sample < -cap) <= \
                OUTLIER_MAX_DENSITY * sample.size
        if sparse:
            digits, rest = split_low_limbs(v, limbs - 1, bits, axis, bound)
            return digits, limbs - 1, rest
    return split_limbs(v, limbs, bits, axis, bound), limbs, None


def _add_outliers(out: np.ndarray, narrow: np.ndarray, rest: np.ndarray, shift: int) -> None:
    """out += narrow @ (rest * 2^shift) for a rest [K, N] that is 0 but for a few entries: each output
    column's terms gathered and summed. Exact in out's dtype: a term is at most max|narrow| * (max|wide| +
    the low digits' capacity) < 2 * max|narrow| * max|wide|, and a column's sum at most K times that, both
    below the padded bound (float_combination_exact) the product's accumulator was chosen by."""
    # Positions found in rest's own memory order (a transposed rest is F-contiguous), then grouped by column.
    if rest.flags.c_contiguous:
        rows, cols = np.divmod(np.flatnonzero(rest), rest.shape[1])
        by_column = np.argsort(cols, kind="stable")
        rows, cols = rows[by_column], cols[by_column]
    else:
        cols, rows = np.divmod(np.flatnonzero(rest.T), rest.shape[0])
    if not cols.size:
        return
    scaled = rest[rows, cols].astype(out.dtype) * out.dtype.type(1 << shift)
    terms = narrow[:, rows]
    if terms.dtype == np.uint8:  # given shifted (shift_int8): flip the sign bit back
        terms = shift_int8(terms).view(np.int8)
    terms = np.multiply(terms, scaled, dtype=out.dtype)
    first = np.flatnonzero(np.diff(cols, prepend=-1))
    out[:, cols[first]] += np.add.reduceat(terms, first, axis=1)


def _add_outlier_rows(out: np.ndarray, rest: np.ndarray, shift: int, columns: Callable[[np.ndarray], Any],
                      threads: int) -> None:
    """out += a @ (rest * 2^shift) for a rest [K, N] that is 0 but on a few rows, with `columns(rows)`
    giving a[:, rows].T as int8 [len(rows), M]: those rows of rest against those columns of a make one
    small int8 GEMM, exact as a limb product is: each entry of rest is the top digit of the caller's split
    (_limb_digits), of the width its limbs have (digit_bits(), checked by the caller), so it pairs with
    the int8 columns as a limb does; its int32 result, times 2^shift, stays within the bound that chose
    out's dtype (see _add_outliers)."""
    rows = np.flatnonzero((rest.max(axis=1) != 0) | (rest.min(axis=1) != 0))
    step = max_k()
    for start in range(0, rows.size, step):
        chunk = rows[start : start + step]
        a_t = np.ascontiguousarray(columns(chunk).T)
        top = rest[chunk].astype(np.int8)
        if backend() == "torch":
            y = _matmul_s8s8(a_t, top, threads)
        else:
            y = _matmul_u8s8(shift_int8(a_t), 128, top, threads)
        out += np.multiply(y, out.dtype.type(1 << shift), dtype=out.dtype)


def matmul_int8_left(a: np.ndarray, b: np.ndarray, limbs: int, bits: int, exact_float: bool, threads: int,
                     bound: int | None = None,
                     columns: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """a @ b for int8 a [M, K] and any integer b [K, N] that fits `limbs` digits (max|b| <= `bound` when
    given, see split_limbs). `a` may also be given already shifted, as the uint8 array shift_int8(a) (im2col
    builds its columns that way for ONNX Runtime, see shifted_left_operand, saving a pass).

    The limbs of b sit side by side, [K, limbs * N], so all of them take one GEMM. `columns(rows)`, when
    given, returns a[:, rows].T as int8 rows (see _add_outlier_rows), which lets a top limb used on up to
    OUTLIER_MAX_ROW_FRACTION of b's rows be left out.
    """
    _require_proven(bits)
    k, n = b.shape
    torch_gemm = backend() == "torch"
    if torch_gemm == (a.dtype == np.uint8):  # shifted for the other library: flip the sign bit back
        a = shift_int8(a).view(np.int8) if torch_gemm else shift_int8(a)
    digits, gemm_limbs, rest = _limb_digits(b, limbs, bits, 1, bound, rows=columns is not None)
    digits = digits.reshape(k, gemm_limbs * n)
    total = None
    step = max_k()
    for start in range(0, k, step):
        if torch_gemm:
            y = _matmul_s8s8(a[:, start : start + step], digits[start : start + step], threads)
        else:
            y = _matmul_u8s8(a[:, start : start + step], 128, digits[start : start + step], threads)
        part = _combine([y[:, i * n : (i + 1) * n] for i in range(gemm_limbs)], exact_float, bits)
        total = part if total is None else total + part
    if rest is not None and columns is not None:
        _add_outlier_rows(total, rest, bits * gemm_limbs, columns, threads)
    elif rest is not None:
        _add_outliers(total, a, rest, bits * gemm_limbs)
    return total


def matmul_int8_right(a: np.ndarray, b: np.ndarray, limbs: int, bits: int, exact_float: bool, threads: int,
                      bound: int | None = None) -> np.ndarray:
    """a @ b for any integer a [M, K] that fits `limbs` digits (max|a| <= `bound` when given) and int8
    b [K, N].

    The limbs of a (for ONNX Runtime shifted by 2^(bits-1) into [0, 2^bits - 1]) are stacked,
    [limbs * M, K], so all take one GEMM.
    """
    _require_proven(bits)
    m, k = a.shape
    half = 1 << (bits - 1)
    digits, gemm_limbs, rest = _limb_digits(a, limbs, bits, 0, bound)
    digits = digits.reshape(gemm_limbs * m, k)
    torch_gemm = backend() == "torch"
    if not torch_gemm:
        digits = digits.view(np.uint8) + np.uint8(half)
    total = None
    step = max_k()
    for start in range(0, k, step):
        if torch_gemm:
            y = _matmul_s8s8(digits[:, start : start + step], b[start : start + step], threads)
        else:
            y = _matmul_u8s8(digits[:, start : start + step], half, b[start : start + step], threads)
        part = _combine([y[i * m : (i + 1) * m] for i in range(gemm_limbs)], exact_float, bits)
        total = part if total is None else total + part
    if rest is not None:
        _add_outliers(total.T, b.T, rest.T, bits * gemm_limbs)
    return total

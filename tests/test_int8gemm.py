"""The exact int8 limb GEMMs (engine/int8gemm.py) against Python-int references, at the limits of every limb
count, across K slices, and the choice between them and the float paths."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from conftest import TINY, nitro_cmd, nitro_env, params
from nitro_cli.engine import (
    BackendUnavailable,
    conv2d_nhwc,
    conv2d_weight_grad_nhwc,
    gemm_plan,
    int8gemm,
    kernels,
    labelled,
    matmul,
    matmul_exact,
    matmul_scaled,
    trace_products,
)
from nitro_cli.nn import build_model
from nitro_cli.optim import IntegerSGD

pytestmark = pytest.mark.skipif(not int8gemm.available(), reason="onnxruntime is not installed")
LIMB_COUNTS = range(1, kernels.MAX_LIMBS + 1)
# Both digit widths, for what is plain integer arithmetic (splitting, planning): exact on any CPU.
WIDTHS = [int8gemm.SAFE_BITS, int8gemm.VNNI_BITS]


def ref_matmul(a: np.ndarray, b: np.ndarray) -> list:
    """Python-int product: exact at any size."""
    return (a.astype(object) @ b.astype(object)).tolist()


def extreme_operand(rng: np.random.Generator, shape: tuple[int, int], bound: int) -> np.ndarray:
    """Random values in [-bound, bound] with both limits and their neighbours present."""
    v = rng.integers(-bound, bound, size=shape, endpoint=True, dtype=np.int64)
    flat = v.reshape(-1)
    flat[:6] = [bound, -bound, bound - 1, -bound + 1, 0, -1]
    return v


def pairs_saturating(a_u8: np.ndarray, zero_point: int, b_s8: np.ndarray, threads: int) -> np.ndarray:
    """(a_u8 - zero_point) @ b_s8 the way ONNX Runtime's kernel adds on a CPU without VNNI (AVX2's
    vpmaddubsw): the products a[m, 2k] * b[2k, n] + a[m, 2k+1] * b[2k+1, n] of each pair along K saturated
    to int16, then summed in int32, and the zero point's share taken off the sums."""
    m, k = a_u8.shape
    a, b = a_u8.astype(np.int64), b_s8.astype(np.int64)
    if k % 2:
        a, b = np.pad(a, ((0, 0), (0, 1))), np.pad(b, ((0, 1), (0, 0)))
    n, pairs = b.shape[1], a.shape[1] // 2
    a2, b2 = a.reshape(m, pairs, 2), b.reshape(pairs, 2, n)
    step = max(1, 2**21 // max(1, m * n))  # pairs per block: bounded memory
    out = np.zeros((m, n), dtype=np.int64)
    for start in range(0, pairs, step):
        block = np.einsum("mpt,ptn->mpn", a2[:, start : start + step], b2[start : start + step])
        out += np.clip(block, -(2**15), 2**15 - 1).sum(axis=1)
    return (out - zero_point * b.sum(axis=0)).astype(np.int32)


def force_no_vnni(monkeypatch) -> None:
    """The engine as it is on a CPU without VNNI, on any CPU: ONNX Runtime with the kernel of such a CPU
    (pairs_saturating), its digit-width decision made afresh; the CPU probe still reports VNNI, so that the
    self-test alone has to turn 8-bit digits down (a CPU without VNNI turns them down before it)."""
    monkeypatch.setattr(int8gemm, "_BACKEND", "onnxruntime")
    monkeypatch.setattr(int8gemm, "_matmul_u8s8", pairs_saturating)
    monkeypatch.setattr(int8gemm, "_cpu_has_vnni", lambda: True)
    monkeypatch.delenv("NITRO_INT8_DIGIT_BITS", raising=False)
    monkeypatch.setattr(int8gemm, "_DIGIT_BITS", None)


# Every GEMM library installed here (ONNX Runtime is a dependency, PyTorch an optional one), and ONNX
# Runtime as it runs without VNNI (force_no_vnni), so that every CPU runs the tests under both decisions.
NO_VNNI = "onnxruntime-no-vnni"
INSTALLED_LIBRARIES = ["onnxruntime",
                       pytest.param("torch", marks=pytest.mark.skipif(not int8gemm._torch_available(),
                                                                      reason="torch is not installed"))]
LIBRARIES = [*INSTALLED_LIBRARIES, NO_VNNI]


@pytest.fixture(params=LIBRARIES)
def library(request, monkeypatch) -> str:
    """The GEMM library of the limb products (onnxruntime-no-vnni: as a CPU without VNNI runs it)."""
    if request.param == NO_VNNI:
        force_no_vnni(monkeypatch)
        assert int8gemm.digit_bits() == int8gemm.SAFE_BITS  # the decision without VNNI
    else:
        monkeypatch.setattr(int8gemm, "_BACKEND", request.param)
    return request.param


@pytest.fixture(params=WIDTHS)
def digits(request, monkeypatch, library) -> int:
    """The digit width of the int8 products, as the engine decides it with the library at hand
    (digit_bits(), made afresh): 7 bits anywhere (NITRO_INT8_DIGIT_BITS=7), 8 bits where that decision
    takes them (VNNI and an exact self-test), else the case is skipped."""
    monkeypatch.setattr(int8gemm, "_DIGIT_BITS", None)
    if request.param == int8gemm.SAFE_BITS:
        monkeypatch.setenv("NITRO_INT8_DIGIT_BITS", str(int8gemm.SAFE_BITS))
    else:
        monkeypatch.delenv("NITRO_INT8_DIGIT_BITS", raising=False)
    if int8gemm.digit_bits() != request.param:
        pytest.skip("8-bit digits are not exact with this CPU's int8 kernel (no VNNI, or it fails the "
                    "self-test)")
    return request.param


@pytest.fixture
def int8_on(monkeypatch):
    monkeypatch.setattr(kernels, "_INT8_ENABLED", True)


@pytest.fixture
def int8_off(monkeypatch):
    monkeypatch.setattr(kernels, "_INT8_ENABLED", False)


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("limbs", LIMB_COUNTS)
def test_split_limbs_round_trips_at_the_capacity_of_every_limb_count(limbs, bits):
    cap, half = int8gemm.limb_capacity(limbs, bits), 1 << (bits - 1)
    v = extreme_operand(np.random.default_rng(limbs), (9, 11), cap)
    digits = int8gemm.split_limbs(v, limbs, bits)
    assert digits.dtype == np.int8 and digits.min() >= -half and digits.max() <= half - 1
    back = sum(digits[i].astype(object) * (1 << bits) ** i for i in range(limbs))
    assert back.tolist() == v.tolist()
    assert int8gemm.limbs_needed(cap, bits) == limbs and int8gemm.limbs_needed(cap + 1, bits) == limbs + 1
    # Every digit at its lowest: the negative side reaches a little further.
    lowest = -half * ((1 << bits) ** limbs - 1) // ((1 << bits) - 1)
    assert int8gemm.split_limbs(np.array([lowest]), limbs, bits).tolist() == [[-half]] * limbs
    for too_big in (cap + 1, lowest - 1):
        with pytest.raises(ValueError, match=f"do not fit {limbs} limbs"):
            int8gemm.split_limbs(np.array([[0, too_big]]), limbs, bits)


@pytest.mark.parametrize("limbs", LIMB_COUNTS)
@pytest.mark.parametrize("exact_float", [True, False])
def test_int8_products_are_exact_at_the_limits_of_every_limb_count(limbs, exact_float, digits):
    bits = digits
    rng = np.random.default_rng(100 + limbs)
    cap = int8gemm.limb_capacity(limbs, bits)
    x = extreme_operand(rng, (13, 37), 127).astype(np.int8)
    x[0, :] = -128  # the most negative int8, shifted to uint8 0
    x[1, :] = 127
    w = extreme_operand(rng, (37, 6), cap)
    w[:, 0], w[:, 1] = cap, -cap
    got = int8gemm.matmul_int8_left(x, w, limbs, bits, exact_float, threads=1)
    assert got.dtype == (np.float64 if exact_float else np.int64)
    assert got.astype(object).tolist() == ref_matmul(x, w)
    e = extreme_operand(rng, (6, 37), cap)
    got = int8gemm.matmul_int8_right(e, x.T.copy(), limbs, bits, exact_float, threads=2)
    assert got.astype(object).tolist() == ref_matmul(e, x.T)


@pytest.mark.parametrize("side", ["left", "right"])
def test_k_slices_keep_every_int32_accumulator_in_range(monkeypatch, side, digits):
    """Slices of max_k terms, summed wider; and at the real max_k the worst-case sum still fits int32."""
    bits = digits
    rng = np.random.default_rng(7)
    x = extreme_operand(rng, (5, 50), 127).astype(np.int8)
    w = extreme_operand(rng, (50, 4), int8gemm.limb_capacity(3, bits))
    with monkeypatch.context() as short:  # the library and digit width stay as the fixtures set them
        short.setattr(int8gemm, "max_k", lambda: 16)
        if side == "left":
            got = int8gemm.matmul_int8_left(x, w, 3, bits, True, 1)
            assert got.astype(object).tolist() == ref_matmul(x, w)
        else:
            got = int8gemm.matmul_int8_right(w.T.copy(), x.T.copy(), 3, bits, True, 1)
            assert got.astype(object).tolist() == ref_matmul(w.T, x.T)
    k, half = int8gemm.max_k(), 1 << (bits - 1)
    worst_x = np.full((2, k), 127, dtype=np.int8)
    worst_x[1] = -128
    worst_w = np.full((k, 2), -half, dtype=np.int64)
    worst_w[:, 1] = half - 1
    got = int8gemm.matmul_int8_left(worst_x, worst_w, 1, bits, True, 1)
    assert got.tolist() == ref_matmul(worst_x, worst_w)
    got = int8gemm.matmul_int8_right(worst_w.T.copy(), worst_x.T.copy(), 1, bits, True, 1)
    assert got.tolist() == ref_matmul(worst_w.T, worst_x.T)


def sparse_top_operand(rng: np.random.Generator, shape: tuple[int, int], limbs: int, bits: int) -> np.ndarray:
    """Values that fit limbs - 1 digits (both ends of that range) but for a few at the limits of `limbs`
    digits, placed off the outlier sample's stride."""
    low_cap, cap, half = (int8gemm.limb_capacity(limbs - 1, bits), int8gemm.limb_capacity(limbs, bits),
                          1 << (bits - 1))
    v = extreme_operand(rng, shape, low_cap)
    v.reshape(-1)[6] = -half * ((1 << (bits * (limbs - 1))) - 1) // ((1 << bits) - 1)  # lowest without top
    for position, value in zip((1 + 2 * shape[1], 5 + 2 * shape[1], 7 + 5 * shape[1], 8),
                               (cap, -cap, low_cap + 1, -low_cap - 1), strict=True):
        v.reshape(-1)[position] = value
    return v


@pytest.mark.parametrize("limbs", range(2, kernels.MAX_LIMBS + 1))
@pytest.mark.parametrize("exact_float", [True, False])
def test_a_nearly_empty_top_limb_takes_one_limb_fewer_and_its_few_entries_are_added_exactly(
        monkeypatch, limbs, exact_float, digits):
    bits = digits
    monkeypatch.setattr(int8gemm, "max_k", lambda: 16)  # the correction spans every K slice
    rng = np.random.default_rng(300 + limbs)
    x = extreme_operand(rng, (11, 40), 127).astype(np.int8)
    x[0], x[1] = -128, 127
    w = sparse_top_operand(rng, (40, 9), limbs, bits)
    bound = int(np.abs(w).max())
    assert int8gemm._limb_digits(w, limbs, bits, 1, bound)[1] == limbs - 1
    for narrow in (x, int8gemm.shift_int8(x)):  # as im2col builds it for either library
        got = int8gemm.matmul_int8_left(narrow, w, limbs, bits, exact_float, 1, bound)
        assert got.astype(object).tolist() == ref_matmul(x, w)
        # The columns handed over as rows (a conv weight gradient's patches): the top digits' rows as a GEMM.
        got = int8gemm.matmul_int8_left(narrow, w, limbs, bits, exact_float, 1, bound,
                                        lambda rows: x[:, rows].T)
        assert got.astype(object).tolist() == ref_matmul(x, w)
    e = sparse_top_operand(rng, (9, 40), limbs, bits)
    bound = int(np.abs(e).max())
    assert int8gemm._limb_digits(e, limbs, bits, 0, bound)[1] == limbs - 1
    got = int8gemm.matmul_int8_right(e, x.T.copy(), limbs, bits, exact_float, 2, bound)
    assert got.astype(object).tolist() == ref_matmul(e, x.T)
    got = int8gemm.matmul_int8_right(e.T.copy().T, x.T.copy(), limbs, bits, exact_float, 2, bound)  # F order
    assert got.astype(object).tolist() == ref_matmul(e, x.T)


@pytest.fixture
def small_conv(monkeypatch, digits, int8_on) -> tuple[np.ndarray, list, int]:
    """A conv input of five 6x5 images, 4 channels, extremes included, taken by the int8 path in batch
    chunks of 2 images; with the list of the calls to _add_outlier_rows it makes, and the digit width."""
    monkeypatch.setattr(kernels, "IM2COL_CHUNK_ELEMENTS", 2 * 6 * 5 * 9 * 4)
    monkeypatch.setattr(kernels, "INT8_CALL_COST", 0)  # a product this small would stay float
    monkeypatch.setattr(kernels, "INT8_OUTPUT_COST", 0)
    x = np.random.default_rng(11).integers(-128, 128, size=(5, 6, 5, 4)).astype(np.int8)
    x[0, 0, 0], x[4, 5, 4] = -128, 127
    seen: list = []
    real = int8gemm._add_outlier_rows
    monkeypatch.setattr(int8gemm, "_add_outlier_rows", lambda *a: seen.append(a) or real(*a))
    return x, seen, digits


def test_conv_weight_gradient_adds_its_error_outliers_from_input_patches(monkeypatch, small_conv):
    """A grown error map: within two digits but for a few entries past them. The weight gradient runs two
    limbs and adds the rows holding those entries as one more small GEMM against patches of its input,
    rebuilt per output position (batch chunks and K slices included), exactly as the float paths compute
    it."""
    x, seen, bits = small_conv
    monkeypatch.setattr(int8gemm, "max_k", lambda: 2)  # the rows' GEMM in slices too
    low, cap = int8gemm.limb_capacity(2, bits), int8gemm.limb_capacity(3, bits)
    delta = np.random.default_rng(11).integers(-low, low + 1, size=(5, 6, 5, 3)).astype(np.int32)
    for position, value in ((3, cap), (5, -cap), (250, -cap), (401, low + 1), (410, cap), (430, low + 1),
                            (449, -cap)):
        delta.reshape(-1)[position] = value  # in images 0 (two in one row), 2 and 4 (four rows): three chunks
    got = kernels.conv2d_weight_grad_exact(x, delta)
    assert len(seen) == 3  # the path under test ran, in each chunk
    monkeypatch.setattr(kernels, "_INT8_ENABLED", False)
    expected = kernels.conv2d_weight_grad_exact(x, delta)
    assert got.astype(np.int64).tolist() == expected.astype(np.int64).tolist()
    rows = np.array([0, 7, 29, 30, 59])
    columns = kernels._im2col(x[:2], 3, 3, 1, np.int8)
    assert kernels._patches(x[:2], rows, 3, 3, 1).tolist() == columns[rows].tolist()


def test_conv_forward_adds_its_weight_outliers_from_input_columns(monkeypatch, small_conv):
    """A grown conv weight: within two digits but for entries past them, clustered in a few rows (input
    features) as grown weights hold them. The forward runs two limbs and adds those rows as one more small
    GEMM against the matching columns of its patches, rebuilt from the input per batch chunk, exactly as
    the float paths compute it."""
    x, seen, bits = small_conv
    low, cap = int8gemm.limb_capacity(2, bits), int8gemm.limb_capacity(3, bits)
    w = np.random.default_rng(12).integers(-low, low + 1, size=(3, 4, 3, 3)).astype(np.int32)
    w[:, 0, 0, 0] = [cap, -cap, low + 1]  # row (0, 0, c=0) of the weight matrix: a corner window position
    w[1, 3, 2, 2], w[2, 1, 1, 2] = -cap, low + 1  # rows (2, 2, 3) and (1, 2, 1)
    assert np.count_nonzero(np.abs(w) > low) > int8gemm.OUTLIER_MAX_DENSITY * w.size  # too many entries
    got = kernels.conv2d_nhwc(x, w)
    assert len(seen) == 3  # the path under test ran, in each chunk
    monkeypatch.setattr(kernels, "_INT8_ENABLED", False)
    assert got.tolist() == kernels.conv2d_nhwc(x, w).tolist()
    rows = np.array([0, 3, 17, 35, 35, 20])  # corners, the centre, a repeat, unordered
    columns = kernels._im2col(x[:2], 3, 3, 1, np.int8)
    assert kernels._patch_columns(x[:2], rows, 3, 3, 1).tolist() == columns[:, rows].T.tolist()


def test_top_digit_rows_are_judged_by_whole_rows():
    """Large entries clustered in rows: too many for the entry-by-entry correction, few enough rows for
    the rows' GEMM; past OUTLIER_MAX_ROW_FRACTION of the rows, every limb stays."""
    rng = np.random.default_rng(6)
    low_cap = int8gemm.limb_capacity(2, 8)
    w = extreme_operand(rng, (2048, 64), low_cap)
    w[::8, :8] = low_cap + 1  # an eighth of the rows, 1.6% of the entries
    bound = int(np.abs(w).max())
    assert int8gemm._limb_digits(w, 3, 8, 1, bound)[1] == 3
    assert int8gemm._limb_digits(w, 3, 8, 1, bound, rows=True)[1] == 2
    w[::3, 0] = -low_cap - 1  # now 42% of the rows
    assert int8gemm._limb_digits(w, 3, 8, 1, bound, rows=True)[1] == 3


def test_a_top_limb_used_by_more_than_a_few_entries_keeps_every_limb():
    rng = np.random.default_rng(5)
    w = extreme_operand(rng, (300, 40), int8gemm.limb_capacity(3, 8))
    assert int8gemm._limb_digits(w, 3, 8, 1, int(np.abs(w).max()))[1] == 3
    assert int8gemm._limb_digits(w, 3, 8, 1, None)[1] == 3  # unmeasured operands are split in full


def test_8_bit_digits_only_where_the_worst_case_is_exact(monkeypatch):
    """The self-test behind digit_bits() fails on a kernel that adds pairs of products in saturating int16
    (vpmaddubsw without VNNI), which 7-bit digits never saturate and 8-bit ones do."""
    bits = int8gemm.digit_bits()
    assert int8gemm._worst_case_exact(7, int8gemm.backend())
    assert int8gemm._worst_case_exact(8, int8gemm.backend()) == (bits == 8)
    monkeypatch.setattr(int8gemm, "_matmul_u8s8", pairs_saturating)
    assert int8gemm._worst_case_exact(7, "onnxruntime") and not int8gemm._worst_case_exact(8, "onnxruntime")
    # A torch-like int8 x int8 kernel that shifts its left operand into uint8 itself saturates a pair of
    # 7-bit digits (shifted to 191) times -128 as well: such a library is not used at all.
    monkeypatch.setattr(int8gemm, "_matmul_s8s8",
                        lambda a, b, threads: pairs_saturating(int8gemm.shift_int8(a), 128, b, threads))
    assert not int8gemm._worst_case_exact(7, "torch")
    monkeypatch.setattr(int8gemm, "_torch_available", lambda: True)

    def chosen_backend(chosen: str) -> str:
        monkeypatch.setattr(int8gemm, "_BACKEND", None)
        monkeypatch.setenv("NITRO_INT8_BACKEND", chosen)
        return int8gemm.backend()

    for chosen, message in (("torch", "failed the exactness self-test"), ("cuda", "use one of")):
        with pytest.raises(BackendUnavailable, match=message):
            chosen_backend(chosen)
    assert chosen_backend("") == chosen_backend("onnxruntime") == "onnxruntime"
    monkeypatch.setattr(int8gemm, "_matmul_s8s8", lambda a, b, threads: a.astype(np.int32) @ b)
    assert chosen_backend("torch") == "torch"
    monkeypatch.undo()
    monkeypatch.setattr(int8gemm, "_DIGIT_BITS", None)
    monkeypatch.setenv("NITRO_INT8_DIGIT_BITS", "7")
    assert int8gemm.digit_bits() == 7
    # Without VNNI the probe alone decides, whatever the kernel would do.
    monkeypatch.delenv("NITRO_INT8_DIGIT_BITS")
    monkeypatch.setattr(int8gemm, "_DIGIT_BITS", None)
    monkeypatch.setattr(int8gemm, "_cpu_has_vnni", lambda: False)
    assert int8gemm.digit_bits() == 7


# A top 8-bit digit of 127 over two zero ones (four digits of 7 bits, the top one 4).
GROWN = 127 << 16


def reference_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """conv2d_nhwc (3x3, padding 1) by its definition, in plain int64."""
    h, w_ = x.shape[1:3]
    xpad = np.pad(x.astype(np.int64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(np.einsum("nhwc,oc->nhwo", xpad[:, i : i + h, j : j + w_], w[:, :, i, j].astype(np.int64))
               for i in range(3) for j in range(3))


def reference_weight_grad(x: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """conv2d_weight_grad_nhwc (3x3, padding 1) by its definition, in plain int64."""
    h, w_ = x.shape[1:3]
    xpad = np.pad(x.astype(np.int64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    grads = [np.einsum("nhwo,nhwc->oc", delta.astype(np.int64), xpad[:, i : i + h, j : j + w_])
             for i in range(3) for j in range(3)]
    return np.stack(grads, axis=-1).reshape(delta.shape[3], x.shape[3], 3, 3)


def saturating_case(path: str) -> tuple[Callable[[], Any], Any, str | None]:
    """A product that takes `path`, on operands where 8-bit digits saturate a pair of int16 in that path's
    own GEMM: the int8 operand at 127 (255 shifted) against wide digits of 127 in two neighbouring rows.
    Returns the call, its plain int64 result, and the outlier helper the path runs (None: dense limbs)."""
    rng = np.random.default_rng(31)
    if path in ("dense", "entries"):
        a = rng.integers(-128, 128, size=(5, 30)).astype(np.int8)
        a[:, :2] = 127
        bound = 32639 if path == "dense" else 63  # every limb used, or only the top one sparse
        b = rng.integers(-bound, bound + 1, size=(30, 4))
        b[:2] = 127  # an 8-bit low digit of 127 in rows 0 and 1
        b[0, 0] = bound  # the outlier sample's only entry (the first): every limb used, or a sparse top one
        if path == "entries":
            b.reshape(-1)[[50, 77, 101]] = GROWN, -GROWN, GROWN  # a few, off the outlier sample's stride
        return (lambda: matmul(a, b)), ref_matmul(a, b), "_add_outliers" if path == "entries" else None
    x = rng.integers(-128, 128, size=(4, 6, 5, 4)).astype(np.int8)
    if path == "forward rows":
        x[..., :2] = 127
        w = rng.integers(-63, 64, size=(3, 4, 3, 3)).astype(np.int32)
        w[:, :2, 0, 0] = GROWN  # rows (0, 0, c=0) and (0, 0, c=1) of the weight matrix
        return (lambda: conv2d_nhwc(x, w)), reference_conv(x, w).tolist(), "_add_outlier_rows"
    x[:] = 127
    delta = rng.integers(-63, 64, size=(4, 6, 5, 3)).astype(np.int32)
    delta[0, 1, 2:4] = GROWN  # output positions 7 and 8: rows 7 and 8 of the error matrix
    return (lambda: conv2d_weight_grad_nhwc(x, delta)), reference_weight_grad(x, delta).tolist(), \
        "_add_outlier_rows"


@pytest.mark.parametrize("path", ["dense", "entries", "forward rows", "gradient rows"])
def test_without_vnni_every_int8_path_takes_7_bit_digits_and_stays_exact(monkeypatch, int8_on, path):
    """ONNX Runtime's kernel as it runs without VNNI (pairs of products saturated to int16), on operands
    that saturate it with 8-bit digits in the path's own GEMM (the dense limbs; the low limbs beside the
    per-entry correction of a sparse top limb; the top-digit rows of a conv forward and weight gradient):
    the self-test turns 8-bit digits down, every int8 product of the path takes 7-bit ones and the result
    equals the plain int64 one. With the decision bypassed (8-bit digits forced), the same call comes out
    wrong: that is what the decision keeps every path from."""
    force_no_vnni(monkeypatch)
    assert int8gemm.digit_bits() == 7
    monkeypatch.setattr(kernels, "INT8_CALL_COST", 0)  # products this small would stay float
    monkeypatch.setattr(kernels, "INT8_OUTPUT_COST", 0)
    widths: list[int] = []
    ran = {"_add_outliers": 0, "_add_outlier_rows": 0}
    for name in ("matmul_int8_left", "matmul_int8_right"):
        real = getattr(int8gemm, name)
        monkeypatch.setattr(int8gemm, name, lambda *a, real=real, **kw: widths.append(a[3]) or real(*a, **kw))
    for name in ran:
        real = getattr(int8gemm, name)
        monkeypatch.setattr(int8gemm, name, lambda *a, name=name, real=real: ran.update({name: ran[name] + 1})
                            or real(*a))
    run, expected, helper = saturating_case(path)
    assert run().tolist() == expected
    assert widths and set(widths) == {7}
    assert {name for name, calls in ran.items() if calls} == ({helper} if helper else set())
    monkeypatch.setattr(int8gemm, "_DIGIT_BITS", 8)
    widths.clear()
    assert run().tolist() != expected
    assert widths and set(widths) == {8}


def test_an_int8_product_refuses_digits_wider_than_the_decision(monkeypatch):
    """Where the decision is 7 bits, either side of the int8 product (the only way into the outlier
    corrections) raises when asked for 8-bit digits, rather than computing with them."""
    force_no_vnni(monkeypatch)
    x, w = np.full((2, 4), 127, dtype=np.int8), np.full((4, 2), 127)
    assert int8gemm.matmul_int8_left(x, w, 2, 7, True, 1).tolist() == ref_matmul(x, w)
    with pytest.raises(ValueError, match="8-bit digits are not proven exact"):
        int8gemm.matmul_int8_left(x, w, 1, 8, True, 1)
    with pytest.raises(ValueError, match="8-bit digits are not proven exact"):
        int8gemm.matmul_int8_right(w.T.copy(), x.T.copy(), 1, 8, True, 1)


def test_plan_takes_the_int8_path_by_cost_and_falls_back_past_its_bounds(digits):
    assert gemm_plan(1152, 128, 60, int8_side="left").path == "int8x1"
    assert gemm_plan(1152, 128, 5000, int8_side="left").path == "int8x2"
    # 20,000 takes three 7-bit digits, two 8-bit ones.
    three = "int8x3" if digits == 7 else "int8x2"
    assert gemm_plan(50176, 20_000, 128, allow_slices=False, int8_side="right").path == three
    # float32 (cost 2.5) beats three limbs; float64 (5.5) does not.
    assert gemm_plan(1, 128, 100_000, int8_side="left").path == "float32"
    assert gemm_plan(10_000, 128, 100_000, int8_side="left").path == "int8x3"
    # Too wide for MAX_LIMBS digits: the float or int64 path, never a wrapped limb.
    wide = int8gemm.limb_capacity(kernels.MAX_LIMBS, digits) + 1
    assert gemm_plan(4, 128, wide, int8_side="left").path == "float64"
    assert gemm_plan(2**16, 128, wide, int8_side="left").path == "int64"
    assert gemm_plan(1152, 128, 60).path == "float32"  # no int8 operand: no int8 path
    # Its fixed cost per call keeps small products on the float paths.
    assert gemm_plan(100, 128, 60, int8_side="left", outer=64 * 50).path == "float32"
    assert gemm_plan(784, 128, 60, int8_side="left", outer=512 * 100).path == "int8x1"
    # A short inner dimension: writing and recombining the int32 outputs would cost more than float32.
    assert gemm_plan(64, 128, 1000, int8_side="right", outer=3000 * 3072).path == "float32"


def test_a_transposed_wide_operand_is_split_in_its_own_memory_order(int8_on, library):
    rng = np.random.default_rng(5)
    x = extreme_operand(rng, (64, 300), 127).astype(np.int8)
    w = extreme_operand(rng, (200, 300), 5000).astype(np.int32)  # a linear layer's [out, in]
    with trace_products() as records:
        got = matmul_exact(x, w.T)
    assert [r.path for r in records] == ["int8x2"]
    assert got.astype(object).tolist() == ref_matmul(x, w.T)
    e = extreme_operand(rng, (64, 200), 10**6)
    assert matmul_exact(e.T, x).astype(object).tolist() == ref_matmul(e.T, x)


def test_split_limbs_trusts_a_measured_bound_and_refuses_one_too_large():
    v = np.array([[8127, -8127, 5]])
    assert int8gemm.split_limbs(v, 2, 7, bound=8127).tolist() == int8gemm.split_limbs(v, 2, 7).tolist()
    with pytest.raises(ValueError, match="do not fit 2 limbs"):
        int8gemm.split_limbs(v, 2, 7, bound=9000)


def test_the_limbs_recombine_in_int64_where_float64_would_not_be_exact(int8_on, digits, library):
    rng = np.random.default_rng(3)
    x = extreme_operand(rng, (3, 2**16), 127).astype(np.int8)
    x[:, :] = -128
    w = extreme_operand(rng, (2**16, 2), 2**31 - 1).astype(np.int32)  # bound 2^16 * 2^7 * 2^31 > 2^53
    w[:, 0] = -(2**31) + 1
    plan = gemm_plan(2**16, 128, 2**31 - 1, int8_side="left")
    assert plan.path == "int8x5" and not plan.exact_float  # 4 digits of either width hold less than 2^31
    assert matmul(x, w).tolist() == ref_matmul(x, w)


@pytest.mark.parametrize("wmax", [50, 3000, 400_000, 2**31 - 1])
def test_kernels_match_the_reference_with_and_without_the_int8_path(monkeypatch, wmax, digits, library):
    # Small shapes: without its fixed costs, the int8 path takes them all the same.
    monkeypatch.setattr(kernels, "INT8_CALL_COST", 0)
    monkeypatch.setattr(kernels, "INT8_OUTPUT_COST", 0)
    rng = np.random.default_rng(wmax % 1000)
    x = extreme_operand(rng, (4 * 6 * 5, 7), 127).astype(np.int8).reshape(4, 6, 5, 7)
    w = extreme_operand(rng, (9 * 7, 3), wmax).astype(np.int32).reshape(3, 7, 3, 3)
    delta = extreme_operand(rng, (4 * 6 * 5, 3), 3 * wmax).reshape(4, 6, 5, 3)
    a = extreme_operand(rng, (5, 30), 127).astype(np.int8)
    b = extreme_operand(rng, (30, 4), wmax).astype(np.int32)
    results = {}
    for enabled in (True, False):
        monkeypatch.setattr(kernels, "_INT8_ENABLED", enabled)
        with trace_products() as records:
            results[enabled] = [conv2d_nhwc(x, w).tolist(), conv2d_weight_grad_nhwc(x, delta).tolist(),
                                matmul(a, b).tolist(), matmul_exact(b.T.copy(), a.T.copy()).tolist(),
                                matmul_scaled(a, b, 256 * 30 + 1).tolist()]
        assert any(r.path.startswith("int8") for r in records) == enabled
    assert results[True] == results[False]
    assert results[True][2] == ref_matmul(a, b)


def train_reduced_vgg(steps: int, grow: int) -> tuple[dict, set]:
    """A reduced VGG8B (channels / 8) trained `steps` batches of the embedded MNIST from initial weights
    multiplied by `grow` (a grown state: more limbs). Returns its parameters and the paths taken."""
    from nitro_cli.data import fit_normalizer, load_dataset, one_hot

    raw = load_dataset("mnist_mini")
    x = fit_normalizer(raw.train_x).apply(raw.train_x[: steps * 32])
    y = raw.train_y[: steps * 32].astype(np.int64)
    model = build_model("vgg8b", (1, 28, 28), 10, hidden=[128], features=[16, 32, "M", 32, 64, "M", 64, "M",
                        64, "M"], decoder_dim=512, seed_rng=np.random.default_rng(0))
    for layer in model.layers():
        layer.weight = layer.weight * np.int32(grow)
    opt = IntegerSGD(lr_inv=512, fwd_decay_inv=30000, subnet_decay_inv=3000, amp=640)
    with trace_products() as records, labelled("train"):
        for s in range(steps):
            batch = slice(s * 32, (s + 1) * 32)
            model.train_step(x[batch], one_hot(y[batch], 10), y[batch], opt, np.random.default_rng(s))
    return model.state_dict(), {r.path for r in records}


@pytest.mark.parametrize("library", INSTALLED_LIBRARIES, indirect=True)  # the stand-in: too slow here
@pytest.mark.parametrize("grow", [1, 300])
def test_training_gives_identical_parameters_on_the_int8_and_float_paths(monkeypatch, grow, digits, library):
    monkeypatch.setattr(kernels, "INT8_CALL_COST", 0)
    monkeypatch.setattr(kernels, "INT8_OUTPUT_COST", 0)
    monkeypatch.setattr(kernels, "_INT8_ENABLED", False)
    float_params, float_paths = train_reduced_vgg(6, grow)
    monkeypatch.setattr(kernels, "_INT8_ENABLED", True)
    int8_params, int8_paths = train_reduced_vgg(6, grow)
    assert not any(p.startswith("int8") for p in float_paths)
    assert {"int8x1", "int8x2"} & int8_paths if grow == 1 else {"int8x3", "int8x4"} & int8_paths
    assert float_params.keys() == int8_params.keys()
    for key, value in float_params.items():
        assert np.array_equal(value, int8_params[key]), key


@pytest.mark.slow
def test_a_full_vgg8b_epoch_is_identical_on_the_int8_and_float64_paths(tmp_path):
    """The real `nitro train`: VGG8B, one epoch of the embedded MNIST (156 batches), with the int8 path
    (default) and without it (NITRO_INT8_GEMM=0: float and int64 paths only); parameters and metrics equal.
    About 15 minutes on 2 cores."""
    runs = {}
    for name, flag in (("int8", "1"), ("float", "0")):
        run_dir = tmp_path / name
        res = subprocess.run([*nitro_cmd(), "train", "model=vgg8b", "data=mnist_mini", "trainer.max_epochs=1",
                              "engine=numpy", f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                             env={**nitro_env(), "NITRO_INT8_GEMM": flag}, cwd=tmp_path, timeout=3600)
        assert res.returncode == 0, res.stderr
        runs[name] = run_dir
    int8_params, float_params = (params(runs[n] / "checkpoints" / "last.npz") for n in ("int8", "float"))
    assert int8_params.keys() == float_params.keys()
    for key, value in float_params.items():
        assert np.array_equal(value, int8_params[key]), key
    rows = {n: (runs[n] / "metrics.csv").read_text().splitlines() for n in runs}
    assert [r.rsplit(",", 1)[0] for r in rows["int8"]] == [r.rsplit(",", 1)[0] for r in rows["float"]]


@pytest.mark.parametrize("chosen", ["foo", "torch"])
def test_an_unusable_int8_library_ends_nitro_train_in_one_error_line(chosen: str, tmp_path) -> None:
    if chosen == "torch" and int8gemm._torch_available():
        pytest.skip("PyTorch is installed here: NITRO_INT8_BACKEND=torch is usable")
    res = subprocess.run([*nitro_cmd(), "train", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=180,
                         env={**nitro_env(), "NITRO_INT8_BACKEND": chosen})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("error: NITRO_INT8_BACKEND=") and chosen in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr

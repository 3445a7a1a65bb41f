"""The exact kernels against plain int64 / Python-int references, on random and extreme inputs."""

import os
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nitro_cli.engine import (
    BackendUnavailable,
    IntegerOverflowError,
    RngStreams,
    conv2d,
    conv2d_nhwc_scaled,
    conv2d_weight_grad,
    gemm_path,
    get_backend,
    kernels,
    matmul,
    matmul_exact,
    matmul_scaled,
    saturate,
    sgd_update,
    trunc_div,
)


@pytest.fixture(autouse=True, params=[False, True], ids=["float-paths", "int8-paths"])
def int8_path(request, monkeypatch):
    """Every kernel test runs twice: on the float/int64 paths alone, and with the int8 limb path allowed."""
    if request.param and not kernels.int8gemm.available():
        pytest.skip("onnxruntime is not installed")
    monkeypatch.setattr(kernels, "_INT8_ENABLED", request.param)
    # The tests' products are small: without its fixed costs, the int8 path takes them all the same.
    monkeypatch.setattr(kernels, "INT8_CALL_COST", 0)
    monkeypatch.setattr(kernels, "INT8_OUTPUT_COST", 0)


def ref_trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def ref_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Python-int product: exact at any size, no overflow possible."""
    return np.array(a.astype(object) @ b.astype(object), dtype=object)


def ref_conv2d(x: np.ndarray, w: np.ndarray, padding: int = 1) -> np.ndarray:
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x.astype(object), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = h + 2 * padding - kh + 1, wd + 2 * padding - kw + 1
    out = np.zeros((n, o, oh, ow), dtype=object)
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i : i + oh, j : j + ow], w[:, :, i, j].astype(object))
    return out


def ref_conv2d_weight_grad(x: np.ndarray, delta: np.ndarray, k: int = 3, padding: int = 1) -> np.ndarray:
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(object), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = delta.shape[2:]
    grad = np.zeros((delta.shape[1], c, k, k), dtype=object)
    for i in range(k):
        for j in range(k):
            window = xp[:, :, i : i + oh, j : j + ow]
            grad[:, :, i, j] = np.einsum("nohw,nchw->oc", delta.astype(object), window)
    return grad


ints64 = st.integers(-(2**40), 2**40)


@given(st.lists(st.tuples(ints64, ints64.filter(lambda b: b != 0)), min_size=1, max_size=50))
def test_trunc_div_matches_reference(pairs):
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    expected = [ref_trunc_div(int(x), int(y)) for x, y in pairs]
    assert trunc_div(a, b).tolist() == expected
    assert trunc_div(a, int(b[0])).tolist() == [ref_trunc_div(int(x), int(b[0])) for x in a]


def test_trunc_div_rounds_toward_zero_not_down():
    a = np.array([-7, -6, -1, 0, 1, 6, 7], dtype=np.int64)
    assert trunc_div(a, 3).tolist() == [-2, -2, 0, 0, 0, 2, 2]
    assert trunc_div(a, -3).tolist() == [2, 2, 0, 0, 0, -2, -2]
    assert (a // 3).tolist() != trunc_div(a, 3).tolist()  # floor division differs on negatives
    extremes = np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min + 1], dtype=np.int64)
    assert trunc_div(extremes, 2).tolist() == [ref_trunc_div(int(v), 2) for v in extremes]
    with pytest.raises(ZeroDivisionError):
        trunc_div(a, 0)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
def test_trunc_div_is_exact_on_narrow_types_at_their_extremes(dtype):
    info = np.iinfo(dtype)
    a = np.concatenate([np.arange(-128, 128), [info.min, info.min + 1, info.max - 1, info.max]]).astype(dtype)
    for b in (1, 2, 3, 4, 7, 64, 100, 127, -1, -3, -4):
        a_ok = a[a != info.min] if b == -1 else a  # -min does not fit the type: nothing can return it
        assert trunc_div(a_ok, b).tolist() == [ref_trunc_div(int(v), b) for v in a_ok], (dtype, b)


def test_trunc_div_by_a_divisor_wider_than_the_numerator():
    a = np.array([-(2**31), -5, 0, 7, 2**31 - 1], dtype=np.int32)
    for b in (2**31, 2**53 + 1, -(2**40) - 3):
        assert trunc_div(a, b).dtype == np.int32
        assert trunc_div(a, b).tolist() == [ref_trunc_div(int(v), b) for v in a]
    big = np.array([2**62 + 5, -(2**62) - 5], dtype=np.int64)
    assert trunc_div(big, 2**62 + 1).tolist() == [1, -1]
    with pytest.raises(IntegerOverflowError, match="does not fit int64"):
        trunc_div(big, 2**63 + 1)


def test_trunc_div_takes_scalars_and_0d_arrays():
    assert int(trunc_div(np.int64(-7), 2)) == -3 and int(trunc_div(np.int64(-7), 3)) == -2
    assert int(trunc_div(np.array(-(2**60)), 3)) == ref_trunc_div(-(2**60), 3)


def test_trunc_div_refuses_floats():
    with pytest.raises(TypeError, match="integer"):
        trunc_div(np.array([1.5]), 2)


def test_saturate_clips_then_narrows():
    x = np.array([-1000, -128, -127, 0, 127, 128, 10**12], dtype=np.int64)
    assert saturate(x, -127, 127, np.int8).tolist() == [-127, -127, -127, 0, 127, 127, 127]
    with pytest.raises(ValueError):
        saturate(x, -200, 127, np.int8)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6), st.integers(1, 40), st.integers(1, 6),
    st.sampled_from([(np.int8, 127), (np.int32, 2**20), (np.int32, 2**31 - 1), (np.int64, 2**40)]),
    st.integers(0, 2**32 - 1),
)
def test_matmul_matches_reference_on_random_and_extreme_values(m, k, n, kind, seed):
    dtype, hi = kind
    rng = np.random.default_rng(seed)
    lo = int(np.iinfo(dtype).min) if dtype != np.int64 else -hi
    a = rng.integers(lo, hi, size=(m, k), endpoint=True).astype(dtype)
    b = rng.integers(-(2**15), 2**15, size=(k, n)).astype(np.int32)
    a[0, 0] = lo  # the most negative value: abs() of it wraps in its own type
    assert matmul(a, b).tolist() == ref_matmul(a, b).tolist()


def test_matmul_exact_where_float32_is_not():
    a = np.array([[1, 1]], dtype=np.int64)
    b = np.array([[2**24], [1]], dtype=np.int64)
    float32_result = int((a.astype(np.float32) @ b.astype(np.float32))[0, 0])
    assert float32_result == 2**24  # float32 loses the +1
    assert matmul(a, b)[0, 0] == 2**24 + 1
    assert gemm_path(2, 1, 2**24) == "float64"


def test_matmul_past_the_float64_bound_uses_the_exact_fallback():
    k = 64
    a = np.full((2, k), 2**31 - 1, dtype=np.int64)
    b = np.full((k, 2), 2**20 + 1, dtype=np.int64)
    b[0, 0] = -(2**20) - 3
    assert gemm_path(k, 2**31 - 1, 2**20 + 3) == "int64"
    float64_result = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    expected = ref_matmul(a, b)
    assert float64_result.tolist() != expected.tolist()  # float64 would be wrong here
    assert matmul(a, b).tolist() == expected.tolist()


def test_matmul_refuses_to_wrap_int64():
    a = np.full((1, 4), 2**40, dtype=np.int64)
    b = np.full((4, 1), 2**30, dtype=np.int64)
    with pytest.raises(IntegerOverflowError, match="2\\^63"):
        matmul(a, b)


def test_matmul_checks_shapes_and_dtypes():
    with pytest.raises(ValueError, match="matmul needs"):
        matmul(np.zeros((2, 3), np.int32), np.zeros((4, 2), np.int32))
    with pytest.raises(TypeError, match="integer"):
        matmul(np.zeros((2, 3)), np.zeros((3, 2), np.int32))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 7), st.integers(1, 7),
       st.sampled_from([64, 2**20, 2**31 - 1]), st.integers(0, 2**32 - 1))
def test_conv2d_and_weight_grad_match_reference(n, c, o, h, w, wmax, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(n, c, h, w)).astype(np.int8)
    x.flat[0] = -128
    wt = rng.integers(-wmax, wmax, size=(o, c, 3, 3), endpoint=True).astype(np.int32)
    assert conv2d(x, wt).tolist() == ref_conv2d(x, wt).tolist()
    delta = rng.integers(-wmax, wmax, size=(n, o, h, w), endpoint=True).astype(np.int64)
    assert conv2d_weight_grad(x, delta).tolist() == ref_conv2d_weight_grad(x, delta).tolist()


def test_conv2d_exact_past_float32_and_float64_bounds():
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, size=(2, 3, 5, 5)).astype(np.int8)
    for wmax in (2**20, 2**31 - 1):  # float64 path, then the int64 fallback (27 * 128 * 2^31 > 2^53)
        w = rng.integers(-wmax, wmax, size=(4, 3, 3, 3), endpoint=True).astype(np.int64)
        w[0, 0, 0, 0] = wmax
        assert conv2d(x, w).tolist() == ref_conv2d(x, w).tolist()
    big = np.full((1, 3, 5, 5), 2**40, dtype=np.int64)
    with pytest.raises(IntegerOverflowError):
        conv2d(big, np.full((1, 3, 3, 3), 2**20, dtype=np.int64))


def test_conv2d_chunks_large_batches_exactly(monkeypatch):
    from nitro_cli.engine import kernels

    monkeypatch.setattr(kernels, "IM2COL_CHUNK_ELEMENTS", 300)  # forces one sample per chunk
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, size=(5, 2, 4, 4)).astype(np.int8)
    w = rng.integers(-64, 65, size=(3, 2, 3, 3)).astype(np.int32)
    delta = rng.integers(-5000, 5000, size=(5, 3, 4, 4))
    assert conv2d(x, w).tolist() == ref_conv2d(x, w).tolist()
    assert conv2d_weight_grad(x, delta).tolist() == ref_conv2d_weight_grad(x, delta).tolist()


def test_rng_streams_are_independent_and_restorable():
    a, b = RngStreams(42), RngStreams(42)
    assert a.shuffle.integers(0, 2**62) == b.shuffle.integers(0, 2**62)
    assert a.init.integers(0, 2**62) != a.dropout.integers(0, 2**62)
    state = a.state_dict()
    first = [a.augment.integers(0, 2**62) for _ in range(3)]
    c = RngStreams(0)
    c.load_state_dict(state)
    assert [c.augment.integers(0, 2**62) for _ in range(3)] == first
    assert RngStreams(43).shuffle.integers(0, 2**62) != RngStreams(42).shuffle.integers(0, 2**62)
    with pytest.raises(ValueError):
        RngStreams(-1)


def test_backend_selection():
    assert get_backend("numpy") is np
    assert get_backend("auto") is not None
    with pytest.raises(BackendUnavailable, match="unknown engine"):
        get_backend("tpu")
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="engine=cupy"):
            get_backend("cupy")


def ref_scaled(y: np.ndarray, divisor: int) -> list:
    def one(v):
        return max(-127, min(127, ref_trunc_div(int(v), divisor)))
    return np.vectorize(one, otypes=[object])(y).tolist()


@pytest.mark.parametrize(
    ("wmax", "k", "path"),
    [(64, 100, "float32"), (64, 3000, "float32-sliced"), (2**17, 300, "float64"),
     (2**31 - 1, 2**16, "int64")],
)
def test_every_gemm_path_is_exact_and_chosen_by_the_bound(wmax, k, path):
    rng = np.random.default_rng(k)
    a = rng.integers(-128, 128, size=(7, k)).astype(np.int8)
    a[0, 0] = -128
    b = rng.integers(-wmax, wmax, size=(k, 5), endpoint=True).astype(np.int32)
    b[0, 0] = -wmax
    assert gemm_path(k, 128, wmax) == path
    expected = ref_matmul(a, b)
    assert matmul(a, b).tolist() == expected.tolist()
    for divisor in (1, 3, 256 * k, 256 * k + 1):
        assert matmul_scaled(a, b, divisor).tolist() == ref_scaled(expected, divisor)


def test_sliced_float32_would_be_wrong_unsliced():
    k = 4096
    a = np.full((1, k), 127, dtype=np.int8)
    b = np.full((k, 1), 63, dtype=np.int32)
    b[0, 0] = 64  # the exact sum 127 * (63 * 4096 + 1) is odd and above 2^24: float32 cannot hold it
    assert gemm_path(k, 127, 64) == "float32-sliced"
    unsliced = int((a.astype(np.float32) @ b.astype(np.float32))[0, 0])
    assert unsliced != 127 * (63 * k + 1)
    assert matmul(a, b)[0, 0] == 127 * (63 * k + 1)


def test_scaled_division_is_exact_next_to_integer_quotients():
    """y = q * s - 1 and q * s + 1 sit 1/s from an integer quotient: truncation must not round across it."""
    s = 256 * 4607
    qs = np.arange(-130, 131, dtype=np.int64)
    y = np.concatenate([qs * s - 1, qs * s, qs * s + 1])
    for dtype in (np.float32, np.float64):
        bound = 2**24 if dtype == np.float32 else 2**53
        held = y[np.abs(y) < bound]
        assert kernels._scale_exact(held.astype(dtype), s, -127, 127).tolist() == ref_scaled(held, s)
    assert kernels._scale_exact(y, s, -127, 127).tolist() == ref_scaled(y, s)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 5), st.integers(1, 6),
       st.sampled_from([64, 2**12, 2**20, 2**31 - 1]), st.integers(0, 2**32 - 1))
def test_channels_last_scaled_conv_matches_reference(n, c, o, hw, wmax, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(n, c, hw, hw)).astype(np.int8)
    w = rng.integers(-wmax, wmax, size=(o, c, 3, 3), endpoint=True).astype(np.int32)
    expected = ref_conv2d(x, w)
    divisor = 256 * c * 9
    got = conv2d_nhwc_scaled(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), w, divisor).transpose(0, 3, 1, 2)
    assert got.tolist() == ref_scaled(expected, divisor)


def test_tf32_is_refused_because_it_breaks_exactness(monkeypatch):
    monkeypatch.setenv("CUPY_TF32", "1")
    with pytest.raises(BackendUnavailable, match="CUPY_TF32"):
        get_backend("cupy")
    assert get_backend("auto") is np


@pytest.mark.parametrize(("values", "dtype"), [
    ([0, 127, -128, 32767, -32767], np.int16),
    ([32768, -5], np.int32), ([-32768], np.int32),  # |-32768| is past int16's max: kept conservative
    ([2**31 - 1, -(2**31 - 1)], np.int32), ([2**31], np.int64), ([-(2**63)], np.int64),
])
def test_narrowest_int_keeps_every_value(values, dtype):
    for source in (np.int64, np.int32, np.int16):
        x = np.array(values, dtype=np.int64)
        if np.abs(x.astype(object)).max() > np.iinfo(source).max:
            continue
        out = kernels.narrowest_int(x.astype(source))
        assert out.dtype == dtype and out.tolist() == values


def test_trunc_div_float_path_is_exact_next_to_quotients_and_at_its_bound():
    s = 327_680  # lr_inv * amp of a block layer
    q = np.array([0, 1, 7, 2**20, 2**33, (2**53 - 1) // s], dtype=np.int64)
    a = np.concatenate([q * s - 1, q * s, q * s + 1, -(q * s - 1), -(q * s + 1), [2**53 - 1, -(2**53 - 1)]])
    a = a[np.abs(a) < 2**53]
    assert kernels.max_abs(a) < 2**53  # the float64 path
    assert trunc_div(a, s).tolist() == [ref_trunc_div(int(v), s) for v in a]
    beyond = np.array([2**53 + 1, -(2**53) - 3, 2**62 + 12345], dtype=np.int64)  # the integer path
    assert trunc_div(beyond, s).tolist() == [ref_trunc_div(int(v), s) for v in beyond]


def ref_sgd_update(w: np.ndarray, g: np.ndarray, divisor: int, decay_inv: int | None) -> list:
    return [[wi - ref_trunc_div(gi, divisor) - (ref_trunc_div(wi, decay_inv) if decay_inv else 0)
             for wi, gi in zip(wr, gr, strict=True)] for wr, gr in zip(w.tolist(), g.tolist(), strict=True)]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2**10, 2**35, 2**53 - 1, 2**62]),
       st.sampled_from([1, 2, 3, 512 * 640, 512 * 640 * 24 * 3, 2**40, 2**53 + 1]),
       st.sampled_from([None, 1, 7, 30000, 2**53 + 1]))
def test_sgd_update_matches_reference_on_every_path(seed, gmax, divisor, decay_inv):
    rng = np.random.default_rng(seed)
    w = rng.integers(-(2**31), 2**31, size=(5, 7), dtype=np.int64).astype(np.int32)
    w.flat[:2] = [-(2**31), 2**31 - 1]
    g = rng.integers(-gmax, gmax + 1, size=w.shape, dtype=np.int64)
    g.flat[-2:] = [gmax, -gmax]
    expected = ref_sgd_update(w, g, divisor, decay_inv)
    if all(-(2**31) <= v < 2**31 for row in expected for v in row):
        out = sgd_update(w, g, divisor, decay_inv, "layer x")
        assert out.dtype == np.int32 and out.tolist() == expected
    else:
        with pytest.raises(IntegerOverflowError, match="layer x"):
            sgd_update(w, g, divisor, decay_inv, "layer x")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 5, 64]), st.sampled_from([None, 300, 1000, 2**20]),
       st.sampled_from([1, 2, 3]))
def test_sgd_update_in_chunks_matches_reference(seed, chunk, decay_inv, threads):
    """Chunk boundaries (a partial last one), threads splitting the chunks unevenly, decay skipped or not by
    max|W|, float32 and transposed grads."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-999, 1000, size=(6, 3, 3, 3)).astype(np.int32)  # conv-shaped, 162 elements
    if decay_inv:
        w = np.clip(w, -decay_inv, decay_inv)
        w.flat[0] = -decay_inv  # max|W| == decay_inv: the decay term is -1 there, not 0
    g32 = rng.integers(-(2**23), 2**23, size=(27, 6)).astype(np.float32).T.reshape(w.shape)  # not contiguous
    expected = ref_sgd_update(w.reshape(6, -1), g32.reshape(6, -1).astype(np.int64), 512 * 640, decay_inv)
    with mock.patch.object(kernels, "SGD_CHUNK_ELEMENTS", chunk), \
            mock.patch.object(kernels, "cpu_threads", lambda: threads):
        out = sgd_update(w, g32, 512 * 640, decay_inv, "conv")
        assert out.shape == w.shape and out.dtype == np.int32
        assert out.reshape(6, -1).tolist() == expected
        big = w.copy()
        big.flat[-1] = 2**31 - 1  # only the last chunk (of the last thread) overflows
        grad = np.zeros(w.shape)
        grad.flat[-1] = -(512 * 640)
        with pytest.raises(IntegerOverflowError, match="conv"):
            sgd_update(big, grad, 512 * 640, None, "conv")


def test_cpu_threads_follows_the_blas_thread_count(monkeypatch):
    from nitro_cli.engine.host import cpu_threads
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert cpu_threads() == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "0")  # not a thread count: the next variable decides
    assert cpu_threads() == 5
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert cpu_threads() == len(os.sched_getaffinity(0))


def test_sgd_update_takes_exact_float_products_without_a_cast():
    rng = np.random.default_rng(3)
    a = rng.integers(-(2**20), 2**20, size=(64, 30))
    b = rng.integers(-(2**10), 2**10, size=(30, 9))
    product = matmul_exact(a, b)
    assert product.dtype == np.float64  # 30 * 2^30 needs float64, not int64
    w = rng.integers(-(2**20), 2**20, size=(64, 9)).astype(np.int32)
    out = sgd_update(w, product, 3 * 512, 25000, "layer y")
    assert out.tolist() == ref_sgd_update(w, ref_matmul(a, b), 3 * 512, 25000)
    # divisor 1 leaves the float path (an intermediate could reach 2^53): still exact through int64
    assert sgd_update(w, product // 2**20, 1, None, "z").tolist() == \
        ref_sgd_update(w, (ref_matmul(a, b) // 2**20), 1, None)


def test_sgd_update_refuses_non_integer_weights_and_bad_divisors():
    w = np.zeros((2, 2), dtype=np.int32)
    with pytest.raises(TypeError, match="weight"):
        sgd_update(w.astype(np.float64), np.zeros((2, 2), dtype=np.int64), 2, None, "w")
    with pytest.raises(ValueError, match="positive"):
        sgd_update(w, np.zeros((2, 2), dtype=np.int64), 0, None, "w")

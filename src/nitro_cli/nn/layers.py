"""NITRO-D layers (spec section 2). Every value is an integer; narrowing only by explicit saturation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from types import ModuleType
from typing import Any

import numpy as np

from ..engine import (
    IntegerOverflowError,
    array_module,
    conv2d_nhwc,
    conv2d_nhwc_scaled,
    conv2d_weight_grad_exact,
    isqrt,
    matmul,
    matmul_exact,
    matmul_scaled,
    max_abs,
    saturate,
    trunc_div,
)
from ..errors import NitroError

# Mean correction of NITRO-ReLU for each negative slope (spec section 2).
RELU_MEAN_CORRECTION = {3: 31, 4: 36, 5: 38, 7: 40, 8: 42, 10: 43, 15: 44, 16: 44, 20: 45}
# Scaling denominator: 2^8 per input feature.
SCALE_PER_FAN_IN = 2**8
MAX_INIT_BOUND = 64
# Dropout draws integers in [0, 2^24) and drops those below p * 2^24.
DROPOUT_DRAW_RANGE = 2**24


class LayerInputError(NitroError, ValueError):
    """An array of the wrong dtype or shape reached a layer."""


def check_input(x: Any, name: str, ndim: int, features: tuple[int, ...]) -> None:
    """Refuse non-integer arrays and shapes that do not match the layer, naming the layer."""
    if x.dtype.kind not in "iu":
        raise LayerInputError(f"{name}: expected an integer array, got dtype {x.dtype}")
    if x.ndim != ndim or tuple(x.shape[1:]) != features:
        expected = "[N, " + ", ".join(map(str, features)) + "]"
        raise LayerInputError(f"{name}: expected input of shape {expected}, got {list(x.shape)}")


def kaiming_bound(fan_in: int) -> int:
    """Integer Kaiming-uniform bound for leaky ReLU (spec section 4.5), capped at 64."""
    return min(MAX_INIT_BOUND, (1372 * 128 * 1732) // (isqrt(fan_in) * 10**6))


def init_weight(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator) -> np.ndarray:
    bound = kaiming_bound(fan_in)
    return rng.integers(-bound, bound + 1, size=shape, dtype=np.int64).astype(np.int32)


class IntegerLinear:
    """y = x @ W.T (+ b), W int32 [out, in]; products exact in int64."""

    def __init__(self, name: str, in_features: int, out_features: int, rng: np.random.Generator,
                 xp: ModuleType = np, bias: bool = False) -> None:
        self.name = name
        self.in_features, self.out_features = in_features, out_features
        self.fan_in = in_features
        self.weight = xp.asarray(init_weight((out_features, in_features), in_features, rng))
        self.bias = xp.zeros(out_features, dtype=np.int32) if bias else None

    def forward(self, x: Any) -> Any:
        check_input(x, self.name, 2, (self.in_features,))
        y = matmul(x, self.weight.T)
        return y if self.bias is None else y + self.bias

    def forward_scaled(self, x: Any) -> Any:
        """scaling(forward(x)) in one pass, without the int64 intermediate."""
        if self.bias is not None:
            return scaling(self.forward(x), self.fan_in)
        check_input(x, self.name, 2, (self.in_features,))
        return matmul_scaled(x, self.weight.T, SCALE_PER_FAN_IN * self.fan_in)

    def weight_grad(self, x: Any, delta: Any) -> Any:
        """delta.T @ x: the gradient of the weight for the error `delta` [N, out], as exact integers in an
        int64 or float array (see matmul_exact)."""
        return matmul_exact(delta.T, x)

    def input_error(self, delta: Any) -> Any:
        """delta @ W: the error sent back to the layer's input."""
        return matmul(delta, self.weight)


class IntegerConv2d:
    """3x3 cross-correlation, stride 1, zero padding 1, on channels-last images [N, H, W, C].

    W is int32 [out, in, 3, 3] as usual; channels-last activations let the GEMM write its output in place
    and keep every reshape between conv, pooling and flatten a free view.
    """

    kernel = 3
    padding = 1

    def __init__(self, name: str, in_channels: int, out_channels: int, rng: np.random.Generator,
                 xp: ModuleType = np, bias: bool = False) -> None:
        self.name = name
        self.in_channels, self.out_channels = in_channels, out_channels
        self.fan_in = in_channels * self.kernel * self.kernel
        shape = (out_channels, in_channels, self.kernel, self.kernel)
        self.weight = xp.asarray(init_weight(shape, self.fan_in, rng))
        self.bias = xp.zeros(out_channels, dtype=np.int32) if bias else None

    def _check(self, x: Any) -> None:
        if x.dtype.kind not in "iu" or x.ndim != 4 or x.shape[3] != self.in_channels:
            raise LayerInputError(
                f"{self.name}: expected an integer array [N, H, W, {self.in_channels}] (channels last), "
                f"got dtype {x.dtype} shape {list(x.shape)}"
            )

    def forward(self, x: Any) -> Any:
        self._check(x)
        y = conv2d_nhwc(x, self.weight, padding=self.padding)
        return y if self.bias is None else y + self.bias

    def forward_scaled(self, x: Any) -> Any:
        """scaling(forward(x)) in one pass, without the int64 intermediate."""
        if self.bias is not None:
            return scaling(self.forward(x), self.fan_in)
        self._check(x)
        return conv2d_nhwc_scaled(x, self.weight, SCALE_PER_FAN_IN * self.fan_in, padding=self.padding)

    def weight_grad(self, x: Any, delta: Any) -> Any:
        """The gradient of the weight as exact integers in an int64 or float array (see matmul_exact)."""
        return conv2d_weight_grad_exact(x, delta, (self.kernel, self.kernel), self.padding)


def scaling(x: Any, fan_in: int) -> Any:
    """NITRO Scaling: clip(trunc(x / (2^8 * fan_in)), -127, 127) as int8; its backward is the identity."""
    return saturate(trunc_div(x, SCALE_PER_FAN_IN * fan_in), -127, 127, np.int8)


def _relu_input(x: Any) -> Any:
    """x as int8; other inputs are clipped to [-128, 127] first, which changes neither pass's result."""
    if x.dtype == np.int8:
        return x
    return saturate(x.astype(np.int16) if x.dtype.itemsize == 1 else x, -128, 127, np.int8)


def nitro_relu(x: Any, slope: int = 4) -> Any:
    """Mean-centred integer leaky ReLU: clip(x, 0, 127) + trunc(clip(x, -127, 0) / slope) - correction."""
    if slope not in RELU_MEAN_CORRECTION:
        raise ValueError(f"NITRO-ReLU slope {slope} has no mean correction; use one of "
                         f"{sorted(RELU_MEAN_CORRECTION)}")
    xp = array_module(x)
    x = _relu_input(x)
    # In int8 throughout: clip(x, 0, 127) + trunc(clip(x, -127, 0) / slope) lies in [-42, 127] and the
    # correction is at most 45.
    y = xp.maximum(x, 0)
    y += trunc_div(xp.clip(x, -127, 0), slope)
    y -= RELU_MEAN_CORRECTION[slope]
    return y


def nitro_relu_backward(x: Any, delta: Any, slope: int = 4) -> Any:
    """trunc(delta / g): g = 1 on [0, 127), g = slope on [-127, 0); zero error where the input saturated."""
    xp = array_module(x)
    x = _relu_input(x)
    zero = delta.dtype.type(0)
    negative = (x >= -127) & (x < 0)
    out = xp.where(negative, trunc_div(delta, slope), delta)
    out[(x >= 127) | (x < -127)] = zero
    return out


@dataclass(frozen=True)
class PoolGeometry:
    """A max-pool window (kernel = stride) with symmetric padding that never wins the max."""

    kh: int
    kw: int
    ph: int = 0
    pw: int = 0

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return (h + 2 * self.ph - self.kh) // self.kh + 1, (w + 2 * self.pw - self.kw) // self.kw + 1


def maxpool2d(x: Any, geom: PoolGeometry, pad_value: int | None = None,
              with_index: bool = True) -> tuple[Any, Any]:
    """Max over non-overlapping windows of channels-last x [N, H, W, C].

    Returns the output and, per window, the position (i * kw + j) of its first maximum, padding cells
    included in the row-major order (None when not `with_index`: a pool that routes no error). Rows and
    columns that do not fill a whole window are dropped (floor mode), as in PyTorch. Padding never wins unless
    `pad_value` is given (the reference's 0, spec section 6).
    """
    xp = array_module(x)
    dtype = x.dtype
    n, h, w, c = x.shape
    oh, ow = geom.out_size(h, w)
    if oh < 1 or ow < 1:
        raise LayerInputError(f"max-pool {geom} does not fit a {h}x{w} feature map")
    if geom.ph or geom.pw:
        if pad_value is None:
            # Pad with a value below every datum, so padding never wins: the type's minimum when no datum
            # holds it (NITRO-ReLU output never does: it stays above -75), else that of a wider type.
            pad_value = np.iinfo(dtype).min
            if x.size and int(x.min()) == pad_value:
                wide = np.int32 if x.dtype.itemsize <= 2 else np.int64
                x, pad_value = x.astype(wide), np.iinfo(wide).min
        x = xp.pad(x, ((0, 0), (geom.ph, geom.ph), (geom.pw, geom.pw), (0, 0)), constant_values=pad_value)
    windows = x[:, : oh * geom.kh, : ow * geom.kw].reshape(n, oh, geom.kh, ow, geom.kw, c)
    if not with_index:
        out = windows[:, :, 0, :, 0].copy()
        for i in range(geom.kh):
            for j in range(geom.kw):
                if i or j:
                    xp.maximum(out, windows[:, :, i, :, j], out=out)
        return out.astype(dtype, copy=False), None
    return _max_and_first_position(windows, dtype)


def _max_and_first_position(windows: Any, dtype: Any) -> tuple[Any, Any]:
    """Each window's maximum and the position p = i * kw + j of its first occurrence, in one reduction:
    the key x * k + (k - 1 - p) (k positions) orders by value, then by earlier position, and keeps both.
    int8 values and k <= 256 keep the keys within int16 (-128 * 256 to 127 * 256 + 255); else int64."""
    xp = array_module(windows)
    _, _, kh, _, kw, _ = windows.shape
    k = kh * kw
    if windows.dtype.itemsize > 4:
        raise TypeError(f"max-pool with indices takes integers of at most 32 bits, got {windows.dtype}")
    key_type = np.int16 if windows.dtype == np.int8 and k <= 256 else np.int64
    keys = windows.astype(key_type)
    keys *= k
    keys += xp.asarray((k - 1 - np.arange(k)).reshape(kh, 1, kw, 1), dtype=key_type)
    best = keys.max(axis=(2, 4))
    out = best // k  # floor division: x * k + r with 0 <= r < k gives x
    index = (k - 1) - (best - out * k)
    return out.astype(dtype), index.astype(np.int16)


def _first_max_positions(index: Any, geom: PoolGeometry, padded_hw: tuple[int, int]) -> Any:
    """Flat positions in the padded map [N, H + 2ph, W + 2pw, C] (C order) of each window's first maximum:
    one gather or scatter then moves every routed value, instead of a masked pass per window position."""
    xp = array_module(index)
    n, oh, ow, c = index.shape
    hp, wp = padded_hw
    pos = np.arange(geom.kh * geom.kw)
    from_corner = xp.asarray(((pos // geom.kw) * wp + pos % geom.kw) * c, dtype=np.int64)
    rows = xp.arange(n, dtype=np.int64)[:, None, None] * hp + xp.arange(oh, dtype=np.int64)[:, None] * geom.kh
    corners = (rows * wp + xp.arange(ow, dtype=np.int64) * geom.kw) * c
    return corners[..., None] + xp.arange(c, dtype=np.int64) + from_corner[index.astype(np.intp)]


def maxpool2d_backward(delta: Any, index: Any, geom: PoolGeometry, in_hw: tuple[int, int]) -> Any:
    """Route each window's error to its first maximum; other input positions get zero (channels last)."""
    xp = array_module(delta)
    n, _, _, c = delta.shape
    h, w = in_hw
    padded_hw = (h + 2 * geom.ph, w + 2 * geom.pw)
    full = xp.zeros((n, *padded_hw, c), dtype=delta.dtype)
    full.reshape(-1)[_first_max_positions(index, geom, padded_hw)] = delta  # positions are distinct
    return full[:, geom.ph : geom.ph + h, geom.pw : geom.pw + w]


def maxpool2d_gather(x: Any, index: Any, geom: PoolGeometry) -> Any:
    """The values of x (channels last, same shape as the pooled input) at each window's first maximum."""
    xp = array_module(x)
    if geom.ph or geom.pw:
        x = xp.pad(x, ((0, 0), (geom.ph, geom.ph), (geom.pw, geom.pw), (0, 0)))
    return xp.ascontiguousarray(x).reshape(-1)[_first_max_positions(index, geom, x.shape[1:3])]


def dropout_scale(p: float) -> int:
    """Integer rescaling factor r = floor(1000 / (1 - p)) (0.1 -> 1111, 0.15 -> 1176)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return math.floor(1000 / (1 - Fraction(str(p))))


def dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator) -> np.ndarray:
    """Keep mask (1 = kept), drawn as integers on the host so CPU and GPU runs match."""
    threshold = math.floor(Fraction(str(p)) * DROPOUT_DRAW_RANGE)
    return (rng.integers(0, DROPOUT_DRAW_RANGE, size=shape, dtype=np.int32) >= threshold).astype(np.int8)


def dropout(x: Any, mask: Any, r: int) -> Any:
    """trunc(x * mask * r / 1000) in int64 (it can exceed x's type); the backward uses the same form."""
    if max_abs(x) * r >= 2**63:
        raise IntegerOverflowError(f"dropout: |x| up to {max_abs(x)} times r={r} overflows int64")
    return trunc_div(x.astype(np.int64) * mask * r, 1000)

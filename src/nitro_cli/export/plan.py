"""The inference program of a trained network, as both exporters see it.

`build_plan` walks a NitroNet's stage list (whatever its widths and depth: MLP1..MLP4, VGG8B, VGG11B or a
reduced VGG) and turns it into a flat list of integer steps: the input normalizer as a lookup table, integer
products followed by Scaling (and NITRO-ReLU in blocks), 2x2 feature pools, flattens, and optionally the
learning heads. Dropout is the identity at inference and disappears. Each exporter (ONNX, C) translates
the same plan, so a reduced VGG in the tests runs exactly the code that exports a full VGG8B or VGG11B.

Layouts: nitro keeps conv activations channels last, so a flatten after convolutions (the classifier's
first block, a conv block's head) reads features in (h, w, c) order; an MLP flattens the image in (c, h, w)
order. Linear weights stay in nitro's column order here and `Product.in_order` says which order that is;
both exporters keep activations channels last too, so their flattens read the columns in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import to_host
from ..errors import NitroError
from ..nn import RELU_MEAN_CORRECTION, Arithmetic, IntegerConv2d, IntegerLinear, LocalBlock, NitroNet
from ..nn.layers import SCALE_PER_FAN_IN
from ..nn.model import Dropout, FeaturePool, Flatten

# Compat switches (nn/arithmetic.py) that change what a trained network computes at inference, and those
# that only change training. A switch in neither set is one this exporter does not know: it refuses.
INFERENCE_SWITCHES = frozenset({"int32_accumulation", "head_pool_zero_padding"})
TRAINING_ONLY_SWITCHES = frozenset({"int8_loss_error", "cnn_linear_double_update"})
INT32_MAX = 2**31 - 1
# Activations entering a product are int8: |x| <= 128.
ACT_BOUND = 128


@dataclass(frozen=True)
class Product:
    """An integer product (conv 3x3/pad 1 or linear) followed by Scaling, and NITRO-ReLU when `slope` is set.

    z = exact sum of x * W; with `wrap32` (compat int32_accumulation) z is first reduced modulo 2^32 into
    [-2^31, 2^31); then q = clip(trunc(z / (256 * fan_in)), -127, 127), and in a block
    y = clip(q, 0, 127) + trunc(clip(q, -127, 0) / slope) - correction.
    """

    name: str
    kind: str  # "conv" | "linear"
    weight: np.ndarray  # int32: conv [out, in, 3, 3]; linear [out, in] in nitro's column order
    in_shape: tuple[int, ...]  # conv: (C, H, W); linear: (K,)
    slope: int | None  # NITRO-ReLU slope, None for the output layer and heads
    wrap32: bool
    in_order: tuple[int, int, int] | None = None  # linear after a conv flatten: (C, h, w) read as (h, w, c)

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.weight.shape[1:]))

    @property
    def divisor(self) -> int:
        return SCALE_PER_FAN_IN * self.fan_in

    @property
    def max_abs_weight(self) -> int:
        w = self.weight.astype(np.int64)
        return int(np.abs(w).max()) if w.size else 0

    @property
    def sum_bound(self) -> int:
        """A bound of |every partial sum| of the product: fan_in * 128 * max|W|."""
        return self.fan_in * ACT_BOUND * self.max_abs_weight

    @property
    def needs_wrap(self) -> bool:
        """Whether the int32 wrap can change anything (it is the identity while the sums fit int32)."""
        return self.wrap32 and self.sum_bound > INT32_MAX

    @property
    def relu_correction(self) -> int:
        assert self.slope is not None
        return RELU_MEAN_CORRECTION[self.slope]


@dataclass(frozen=True)
class Pool:
    """Max-pool with kernel = stride, symmetric padding, floor mode (rows/columns left over are dropped).

    Padding never wins the max unless `pad_zero` (compat head_pool_zero_padding: padding cells hold 0 and
    compete, ties to the first cell of the window in row-major order).
    """

    kh: int
    kw: int
    ph: int
    pw: int
    in_shape: tuple[int, int, int]  # (C, H, W)
    pad_zero: bool = False

    @property
    def out_shape(self) -> tuple[int, int, int]:
        c, h, w = self.in_shape
        return c, (h + 2 * self.ph - self.kh) // self.kh + 1, (w + 2 * self.pw - self.kw) // self.kw + 1


@dataclass(frozen=True)
class FlattenStep:
    """[C, H, W] -> [C*H*W]: in (h, w, c) order after convolutions (`channels_last`), else (c, h, w)."""

    in_shape: tuple[int, ...]
    channels_last: bool


Step = Product | Pool | FlattenStep


@dataclass(frozen=True)
class Head:
    """A block's learning head: optional pool, flatten, linear + Scaling. `after` indexes `Plan.steps`."""

    name: str
    after: int
    pool: Pool | None
    linear: Product


@dataclass
class Plan:
    """Everything an exporter needs: input geometry, the normalizer table, the steps, the heads."""

    in_shape: tuple[int, int, int]  # (C, H, W) of the raw uint8 image
    num_classes: int
    table: np.ndarray  # int8 [C, 256]: normalized value of each pixel byte, per channel
    channels_last: bool  # the network convolves: activations (h, w, c) in nitro
    steps: list[Step]
    heads: list[Head] = field(default_factory=list)
    compat: dict[str, bool] = field(default_factory=dict)

    def products(self) -> list[Product]:
        return [s for s in self.steps if isinstance(s, Product)] + [h.linear for h in self.heads]


def check_arithmetic(arith: Arithmetic) -> None:
    """Refuse compat switches this exporter does not know how to reproduce."""
    unknown = sorted(name for name, on in arith.to_config().items()
                     if on and name not in INFERENCE_SWITCHES | TRAINING_ONLY_SWITCHES)
    if unknown:
        raise NitroError(f"the checkpoint uses compat switch(es) {', '.join(unknown)}, which nitro export "
                         "cannot reproduce; export a checkpoint trained without them")


def _product(layer: Any, in_shape: tuple[int, ...], slope: int | None, wrap32: bool,
             in_order: tuple[int, int, int] | None = None) -> Product:
    if getattr(layer, "bias", None) is not None:
        raise NitroError(f"layer {layer.name} has a bias, which nitro export does not support")
    weight = np.asarray(to_host(layer.weight))
    if weight.dtype.kind not in "iu":
        raise NitroError(f"layer {layer.name} has non-integer weights ({weight.dtype})")
    kind = "conv" if isinstance(layer, IntegerConv2d) else "linear"
    return Product(layer.name, kind, weight.astype(np.int32), in_shape, slope, wrap32, in_order)


def build_plan(model: NitroNet, table: np.ndarray, heads: bool = False) -> Plan:
    """The inference program of `model` (evaluation mode), with the normalizer `table` in front."""
    arith = model.arith
    check_arithmetic(arith)
    if slope_missing := [b.name for b in model.blocks if b.slope not in RELU_MEAN_CORRECTION]:
        raise NitroError(f"blocks {slope_missing} use a NITRO-ReLU slope without a mean correction")
    table = np.asarray(table)
    c_in = int(model.in_shape[0])
    if table.dtype != np.int8 or table.shape != (c_in, 256):
        raise NitroError(f"the normalizer table must be int8 [{c_in}, 256], got {table.dtype} {table.shape}")
    wrap = arith.int32_accumulation
    shape: tuple[int, ...] = tuple(int(d) for d in model.in_shape)
    order: tuple[int, int, int] | None = None  # set after a channels-last flatten, for the next linear
    steps: list[Step] = []
    head_list: list[Head] = []
    for stage in model.stages:
        if isinstance(stage, LocalBlock):
            layer = stage.layer
            if isinstance(layer, IntegerConv2d):
                if len(shape) != 3 or shape[0] != layer.in_channels:
                    raise NitroError(f"{layer.name}: unexpected input shape {shape}")
                steps.append(_product(layer, shape, stage.slope, wrap))
                shape = (layer.out_channels, shape[1], shape[2])
            elif isinstance(layer, IntegerLinear):
                if len(shape) != 1 or shape[0] != layer.in_features:
                    raise NitroError(f"{layer.name}: unexpected input shape {shape}")
                steps.append(_product(layer, shape, stage.slope, wrap, order))
                order = None
                shape = (layer.out_features,)
            else:
                raise NitroError(f"block {stage.name}: unsupported layer {type(layer).__name__}")
            if heads:
                pool, head_order = None, None
                g = stage.pool
                if g is not None and (g.kh, g.kw, g.ph, g.pw) != (1, 1, 0, 0):
                    pool = Pool(g.kh, g.kw, g.ph, g.pw, shape, arith.head_pool_zero_padding)  # type: ignore[arg-type]
                    head_order = pool.out_shape
                elif len(shape) == 3:
                    head_order = shape  # type: ignore[assignment]
                flat = int(np.prod(head_order)) if head_order else shape[0]
                head_list.append(Head(stage.name, len(steps) - 1, pool,
                                      _product(stage.head, (flat,), None, wrap, head_order)))
        elif isinstance(stage, Dropout):
            continue  # identity at inference
        elif isinstance(stage, FeaturePool):
            g = stage.geom
            pool = Pool(g.kh, g.kw, g.ph, g.pw, shape)  # type: ignore[arg-type]
            steps.append(pool)
            shape = pool.out_shape
        elif isinstance(stage, Flatten):
            if len(shape) == 3:
                steps.append(FlattenStep(shape, model.channels_last))
                order = shape if model.channels_last else None  # type: ignore[assignment]
                shape = (int(np.prod(shape)),)
        else:
            raise NitroError(f"unsupported stage {type(stage).__name__}")
    if len(shape) != 1:
        raise NitroError(f"the network ends with a {shape} feature map, not a vector")
    steps.append(_product(model.output, shape, None, wrap, order))
    return Plan(tuple(int(d) for d in model.in_shape), int(model.num_classes), table,  # type: ignore[arg-type]
                bool(model.channels_last), steps, head_list, arith.to_config())


def balanced_limbs(weight: np.ndarray, bits: int = 8) -> list[np.ndarray]:
    """Exact signed `bits`-bit limbs (bits <= 8): weight = sum_i limbs[i] * B^i with B = 2^bits and every
    limb in [-B/2, B/2 - 1], as int8.

    Balanced base B: each step takes the remainder r in [-B/2, B/2 - 1] congruent to w modulo B and divides
    (w - r) by B exactly, so |w| shrinks by a factor B each step (|w'| <= (|w| + B/2) / B). With 8 bits, k
    limbs represent [-128 * (256^k - 1) / 255, 127 * (256^k - 1) / 255]: 1 limb for |w| <= 127 (and -128), 2
    up to 32,639, 3 up to 8,355,711, 4 up to 2,139,062,143, 5 for the rest of int32; with 7 bits 1 limb up to
    63, 2 up to 8,127, 3 up to 1,040,319. The fewest limbs that represent every weight are returned (at least
    one); the expansion is unique, so a part of `weight` that fits fewer limbs has zeros in the higher ones.
    """
    base, half = 1 << bits, 1 << (bits - 1)
    rest = np.asarray(weight).astype(np.int64)
    limbs: list[np.ndarray] = []
    while True:
        low = ((rest + half) % base) - half
        limbs.append(low.astype(np.int8))
        rest = (rest - low) // base  # exact: rest - low is a multiple of base
        if not rest.any():
            return limbs

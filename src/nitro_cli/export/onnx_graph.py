"""The plan as an ONNX graph with integer tensors only (standard domain, opset 17), for ONNX Runtime's CPU
provider and any runtime with the integer operators.

Measured on ONNX Runtime 1.32 (CPU provider): `Conv` and `MaxPool` refuse int32/int64 and `MatMul` refuses
int8; `MatMulInteger` and `ConvInteger` take 8-bit operands and give int32, but only uint8 x int8
`MatMulInteger` runs on the fast GEMM kernels (MLAS: AMX, VNNI, AVX2): int8 x int8 runs 40x slower and
uint8 x uint8 7x, and `ConvInteger` (uint8 x int8) 28x slower than the same convolution as an im2col
`MatMulInteger`; `MatMul` on int32 and int64 is exact; `Div` on integers truncates toward zero; `ReduceMax`
runs on uint8. Elementwise operators cost 1-3 ns per value, so the graph keeps their number down. So:

- **Activations** are uint8 holding the int8 value plus 128 (`MatMulInteger`'s `a_zero_point` 128 takes it
  off again), channels last ([N, H, W, C], as nitro keeps them). The input normalizer is a uint8 table
  (int8 value + 128) that the raw image [N, C, H, W] indexes (`Cast` to int32, `Add` c * 256, `Gather`),
  transposed once to channels last for a network that convolves.
- **Products**: a convolution gathers its 3x3 patches once (`Pad` with 128, the shifted 0; nine `Slice`s;
  `Concat` into [N, H, W, 9 C] in (ky, kx, c) order) and runs as one `MatMulInteger` against the weights
  [9 C, O * k]; a linear layer is one `MatMulInteger` on [N, K]. The int32 weights W are split into k exact
  balanced 7-bit limbs, W = sum_i L_i * 128^i with L_i in [-64, 63] (`plan.balanced_limbs`; k = 1 for
  |W| <= 63, 2 up to 8,127, 3 up to 1,040,319), concatenated along the output axis (output o's limbs side
  by side) so that one product does every limb; its int32 result [..., O * k] is reshaped to [..., O, k]
  and combined by a `MatMul` with [1, 128, 128^2, ...]: in int32 where the sum of the limbs' bounds
  K * 128 * max|L_i| * 128^i fits (then no partial sum can wrap), else in int64 after a `Cast`.
- **Why exact on every kernel** (checked at export time, `_limb_bound`): 7-bit limbs keep a pair of
  uint8 x int8 products within 2 * 255 * 64 = 32,640, below the int16 saturation of the kernels that add
  pairs first (AVX2's and AVX-512's vpmaddubsw; 8-bit limbs would reach 65,280 and saturate there). Each
  limb's sum of K products of the shifted operand is at most K * 255 * 64 in magnitude, below 2^31 for any
  fan-in K up to 131,596 (VGG11B's largest is 4,608), and so is the zero-point correction, so the int32
  results never wrap; their combination is the exact sum z, |z| <= K * 128 * max|W| < 2^63.
- **compat int32_accumulation**: z wraps as ((z + 2^31) mod 2^32) - 2^31 in int64 (`Add`, `Mod`, `Sub`),
  emitted only where the weights allow |z| >= 2^31 (elsewhere the wrap is the identity).
- **Scaling**: `Div` by 256 * fan_in (truncation toward zero); the output layer and the heads `Clip` to
  [-127, 127] and `Cast` to int8. In a block, q = trunc(z / (256 K)) fits int32 and **NITRO-ReLU** runs
  there: `Clip`(q, 0, 127) + `Clip`(`Div`(q, slope), -trunc(127 / slope), 0), plus 128 - correction, `Cast`
  to uint8 for the next layer (trunc is monotone: clipping q to [-127, 0] before dividing or the quotient
  after gives the same value).
- **Pools** (channels last): `Pad` where the pool pads (with 0, the shifted -128, which never wins the max;
  with 128, the shifted 0, under compat head_pool_zero_padding, where the padding competes), `Slice` off
  the rows and columns floor mode drops, `Reshape` to [N, H', kh, W', kw, C] and `ReduceMax` over kh, kw.
- **Flatten** of a channels-last map reads (h, w, c), the order of nitro's own flatten, so every linear
  weight keeps nitro's column order; an MLP flattens the NCHW image in (c, h, w) order, as nitro does.

Outputs: `logits` int8 [N, classes] (the output layer after Scaling, as `nitro eval` computes it),
`prediction` int64 [N] (first index of the maximum, as nitro's argmax), and with heads `head_<block>` int8
[N, classes] per learning head.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import NitroError
from .plan import ACT_BOUND, FlattenStep, Plan, Pool, Product, balanced_limbs

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17 (ONNX 1.12), readable by older runtimes too
DIGIT_BITS = 7
SHIFT = 128  # uint8 activation = int8 value + SHIFT
INT16_MAX, INT32_MAX = 2**15 - 1, 2**31 - 1
_U8_MAX = 255
_DIGIT_MAX = 1 << (DIGIT_BITS - 1)  # |limb| <= 64
# A limb's int32 sums stay below 2^31 while K * 255 * 64 < 2^31.
MAX_LIMB_FAN_IN = INT32_MAX // (_U8_MAX * _DIGIT_MAX)


def _limb_bound(p: Product) -> None:
    """Refuse a product whose limb sums could leave int32, or whose 8-bit pairs could saturate int16."""
    assert 2 * _U8_MAX * _DIGIT_MAX <= INT16_MAX  # a vpmaddubsw pair of 7-bit limbs never saturates
    if p.fan_in > MAX_LIMB_FAN_IN:
        raise NitroError(f"{p.name}: fan-in {p.fan_in} is too large for 7-bit limb products with int32 "
                         f"partial sums (at most {MAX_LIMB_FAN_IN})")


class _Graph:
    """A small builder: unique names, typed integer constants, nodes."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: dict[str, int] = {}
        self._consts: dict[tuple[str, str, bytes, tuple[int, ...]], str] = {}

    def name(self, base: str) -> str:
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def const(self, base: str, value: Any, dtype: Any) -> str:
        array = np.asarray(value, dtype=dtype)
        key = (base if array.size > 16 else "", array.dtype.str, array.tobytes(), array.shape)
        if key in self._consts:  # small constants (clip bounds, divisors, shapes) are shared
            return self._consts[key]
        name = self.name(base)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        self._consts[key] = name
        return name

    def node(self, op: str, inputs: list[str], base: str, output: str | None = None, **attrs: Any) -> str:
        out = output or self.name(base)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=self.name(f"{base}/{op}"), **attrs))
        return out

    def ints(self, base: str, values: list[int]) -> str:
        return self.const(base, values, np.int64)


def _limb_matrix(p: Product) -> np.ndarray:
    """The weights as the right operand [K, O * k] of the limb product: rows in the order the graph's
    patches (ky, kx, c) or flattened inputs read them, column o * k + i holding limb i of output o."""
    if p.kind == "conv":
        w = p.weight.transpose(2, 3, 1, 0).reshape(p.fan_in, p.out_features)  # [(ky, kx, c), O]
    else:
        w = p.weight.T  # nitro's column order is the order of the graph's flatten (module docstring)
    return np.ascontiguousarray(np.stack(balanced_limbs(w, DIGIT_BITS), axis=2).reshape(p.fan_in, -1))


def _patches(g: _Graph, x: str, p: Product) -> str:
    """[N, H, W, C] uint8 -> [N, H, W, 9 C]: the 3x3 patch of every pixel, zero (128) outside the map."""
    _, h, w = p.in_shape
    x = g.node("Pad", [x, g.ints("pad_hw1", [0, 1, 1, 0, 0, 1, 1, 0]), g.const("shift_u8", SHIFT, np.uint8)],
               f"{p.name}.padded", mode="constant")
    axes = g.ints("axes_hw", [1, 2])
    parts = [g.node("Slice", [x, g.ints(f"start_{ky}_{kx}", [ky, kx]), g.ints(f"end_{ky + h}_{kx + w}",
                                                                              [ky + h, kx + w]), axes],
                    f"{p.name}.tap{ky}{kx}") for ky in range(3) for kx in range(3)]
    return g.node("Concat", parts, f"{p.name}.patches", axis=3)


def _product(g: _Graph, x: str, p: Product) -> tuple[str, Any]:
    """The exact product z of the shifted uint8 `x` with the layer's weights, and its type (np.int32 where
    every partial sum of the limb combination fits, else np.int64)."""
    from onnx import TensorProto

    _limb_bound(p)
    limbs = _limb_matrix(p)
    out = p.out_features
    k = limbs.shape[1] // out
    if p.kind == "conv":
        x = _patches(g, x, p)
    z = g.node("MatMulInteger", [x, g.const(f"{p.name}.weight_limbs", limbs, np.int8),
                                 g.const("shift_u8", SHIFT, np.uint8)], f"{p.name}.z32")
    if k == 1:
        return z, np.int32
    # Limb i's exact sum s_i is at most K * 128 * max|L_i|; the combination sum_i s_i * 128^i (a MatMul over
    # the limb axis) never leaves int32 while the sum of those bounds fits, else it runs in int64.
    digit_max = np.abs(limbs.reshape(-1, out, k).astype(np.int64)).max(axis=(0, 1))
    partial = sum(p.fan_in * ACT_BOUND * int(digit_max[i]) * (1 << DIGIT_BITS) ** i for i in range(k))
    dt = np.int32 if partial <= INT32_MAX else np.int64
    lead = [0, 0, 0] if p.kind == "conv" else [0]
    z = g.node("Reshape", [z, g.ints(f"limbs_{len(lead)}_{out}_{k}", [*lead, out, k])], f"{p.name}.limbs")
    if dt == np.int64:
        z = g.node("Cast", [z], f"{p.name}.limbs64", to=TensorProto.INT64)
    scale = np.array([(1 << DIGIT_BITS) ** i for i in range(k)]).reshape(k, 1)
    z = g.node("MatMul", [z, g.const(f"limb_scale_{k}", scale, dt)], f"{p.name}.combined")
    return g.node("Reshape", [z, g.ints(f"z_{len(lead)}_{out}", [*lead, out])], f"{p.name}.z"), dt


def _scaled(g: _Graph, x: str, p: Product, output: str | None = None) -> str:
    """Scaling of the product, then NITRO-ReLU into the next layer's uint8 (a block) or int8 (logits)."""
    from onnx import TensorProto

    z, dt = _product(g, x, p)
    if p.needs_wrap:  # |z| may reach 2^31, so z is int64 (its bound exceeds int32 where sum_bound does)
        assert dt == np.int64
        z = g.node("Add", [z, g.const("two_pow_31", 2**31, np.int64)], f"{p.name}.wrap_shift")
        z = g.node("Mod", [z, g.const("two_pow_32", 2**32, np.int64)], f"{p.name}.wrap_mod", fmod=0)
        z = g.node("Sub", [z, g.const("two_pow_31", 2**31, np.int64)], f"{p.name}.z_wrapped")
    q = g.node("Div", [z, g.const(f"divisor_{p.divisor}", p.divisor, dt)], f"{p.name}.trunc")
    if p.slope is None:
        q = g.node("Clip", [q, g.const("m127", -127, dt), g.const("p127", 127, dt)], f"{p.name}.q")
        return g.node("Cast", [q], f"{p.name}.scaled", output=output, to=TensorProto.INT8)
    # q = trunc(z / (256 K)) is at most max|W| / 2 in magnitude, so it fits int32. NITRO-ReLU of clip(q,
    # -127, 127) is clip(q, 0, 127) + clip(trunc(q / slope), -trunc(127 / slope), 0) - correction (trunc is
    # monotone, so clipping before or after dividing agrees), stored + 128 as uint8.
    if dt == np.int64:
        q = g.node("Cast", [q], f"{p.name}.q32", to=TensorProto.INT32)
    i32 = np.int32
    low = -(127 // p.slope)
    pos = g.node("Clip", [q, g.const("zero32", 0, i32), g.const("p127_32", 127, i32)], f"{p.name}.pos")
    neg = g.node("Div", [q, g.const(f"slope32_{p.slope}", p.slope, i32)], f"{p.name}.neg_div")
    neg = g.node("Clip", [neg, g.const(f"low32_{low}", low, i32), g.const("zero32", 0, i32)], f"{p.name}.neg")
    y = g.node("Add", [pos, neg], f"{p.name}.relu")
    shift = SHIFT - p.relu_correction
    y = g.node("Add", [y, g.const(f"shift32_{shift}", shift, i32)], f"{p.name}.shifted")
    return g.node("Cast", [y], f"{p.name}.out", output=output, to=TensorProto.UINT8)


def _pool(g: _Graph, x: str, pool: Pool, base: str) -> str:
    """Max-pool of a channels-last uint8 map (kernel = stride, symmetric padding, floor mode)."""
    c, h, w = pool.in_shape
    _, oh, ow = pool.out_shape
    if pool.ph or pool.pw:
        fill = SHIFT if pool.pad_zero else 0  # the shifted 0 competes; the shifted -128 never wins
        pads = [0, pool.ph, pool.pw, 0, 0, pool.ph, pool.pw, 0]
        x = g.node("Pad", [x, g.ints("pads_" + "_".join(map(str, pads)), pads),
                           g.const(f"fill_u8_{fill}", fill, np.uint8)], f"{base}.padded", mode="constant")
    if (oh * pool.kh, ow * pool.kw) != (h + 2 * pool.ph, w + 2 * pool.pw):  # floor mode drops the rest
        x = g.node("Slice", [x, g.ints("start_0_0", [0, 0]), g.ints(f"end_{oh * pool.kh}_{ow * pool.kw}",
                                                                    [oh * pool.kh, ow * pool.kw]),
                             g.ints("axes_hw", [1, 2])], f"{base}.cropped")
    windows = [0, oh, pool.kh, ow, pool.kw, c]
    x = g.node("Reshape", [x, g.ints("windows_" + "_".join(map(str, windows)), windows)], f"{base}.windows")
    return g.node("ReduceMax", [x], f"{base}.pool", axes=[2, 4], keepdims=0)


def build_onnx(plan: Plan, *, producer_version: str = "", doc: str = "") -> Any:
    """The ModelProto of `plan` (checked with onnx.checker, full_check)."""
    import onnx
    from onnx import TensorProto, helper

    g = _Graph()
    c, h, w = plan.in_shape
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", c, h, w])
    idx = g.node("Cast", ["image"], "pixel_index", to=TensorProto.INT32)
    if c > 1:
        offsets = (np.arange(c, dtype=np.int32) * 256).reshape(1, c, 1, 1)
        idx = g.node("Add", [idx, g.const("channel_offsets", offsets, np.int32)], "table_index")
    table = (plan.table.astype(np.int16) + SHIFT).astype(np.uint8).reshape(-1)
    x = g.node("Gather", [g.const("normalizer_table", table, np.uint8), idx], "input_u8", axis=0)
    if plan.channels_last:
        x = g.node("Transpose", [x], "input_nhwc", perm=[0, 2, 3, 1])
    outputs = []
    head_at: dict[int, list[Any]] = {}
    for head in plan.heads:
        head_at.setdefault(head.after, []).append(head)
    for i, step in enumerate(plan.steps):
        if isinstance(step, Product):
            x = _scaled(g, x, step, output="logits" if i == len(plan.steps) - 1 else None)
        elif isinstance(step, Pool):
            x = _pool(g, x, step, f"pool{i}")
        elif isinstance(step, FlattenStep):
            x = g.node("Flatten", [x], f"flatten{i}", axis=1)
        for head in head_at.get(i, []):
            hx = _pool(g, x, head.pool, f"{head.name}_head") if head.pool is not None else x
            if head.linear.in_order is not None:
                hx = g.node("Flatten", [hx], f"{head.name}_head.flatten", axis=1)
            name = f"head_{head.name}"
            _scaled(g, hx, head.linear, output=name)
            outputs.append(helper.make_tensor_value_info(name, TensorProto.INT8, ["N", plan.num_classes]))
    g.node("ArgMax", ["logits"], "prediction", output="prediction", axis=1, keepdims=0)
    outputs = [helper.make_tensor_value_info("logits", TensorProto.INT8, ["N", plan.num_classes]),
               helper.make_tensor_value_info("prediction", TensorProto.INT64, ["N"]), *outputs]
    graph = helper.make_graph(g.nodes, "nitro_d_integer_inference", [image], outputs,
                              initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="nitro-cli", producer_version=producer_version,
                              ir_version=IR_VERSION, doc_string=doc)
    onnx.checker.check_model(model, full_check=True)
    return model

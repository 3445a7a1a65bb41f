"""The plan as an ONNX graph with integer tensors only (standard domain, opset 17), for ONNX Runtime's CPU
provider and any runtime with the integer operators.

Measured on ONNX Runtime 1.32 (CPU provider): `Conv` and `MaxPool` refuse int32/int64 and `MatMul` refuses
int8; `MatMul` runs on int32 and int64; `ConvInteger` and `MatMulInteger` take 8-bit operands only and give
int32; `MaxPool` runs on int8 and ignores its padding (it never wins the max); `Div` on integers truncates
toward zero; `Mod` (fmod=0) takes the divisor's sign; `Gather` reads an int8 table. So:

- **Input normalizer**: the raw uint8 image [N, C, H, W] indexes the int8 table [C * 256] (`Cast` to int32,
  `Add` c * 256, `Gather`): the network's int8 input, exactly `Normalizer.apply`.
- **Products** (`ConvInteger` pads 1, `MatMulInteger`): the int32 weights W are split into k exact balanced
  8-bit limbs, W = sum_i L_i * 256^i with L_i in [-128, 127] (`plan.balanced_limbs`; k = 1 for |W| <= 127,
  2 up to 32,639, ...). The k limbs are stacked along the output axis of ONE integer product, so the input
  is read once; its int32 result [N, k * O, ...] is reshaped to [N, k, O, ...], cast to int64, multiplied
  by 256^i and summed over the limb axis.
  Bounds (checked at export time): each limb's partial sum is at most K * 128 * 128 = K * 2^14 in
  magnitude (activations are int8, |x| <= 128), below 2^31 for any fan-in K < 2^17 (VGG11B's largest is
  4,608), so the int32 results never wrap; their int64 combination is the exact sum z, |z| <= K * 128 *
  max|W| < 2^(17 + 7 + 31) < 2^63. With k = 1 the int32 result is already z. The exact default arithmetic
  therefore never wraps, whatever the weights.
- **compat int32_accumulation**: z wraps as ((z + 2^31) mod 2^32) - 2^31 in int64 (`Add`, `Mod`, `Sub`),
  emitted only where the weights allow |z| >= 2^31 (elsewhere the wrap is the identity).
- **Scaling**: `Div` by 256 * fan_in (truncation toward zero), `Clip` to [-127, 127], `Cast` to int8.
- **NITRO-ReLU** in int8: `Clip(q, 0, 127) + Div(Clip(q, -127, 0), slope) - correction`, which stays in
  [-67, 91] for slope 4 (never beyond [-80, 127] for any slope), so int8 never wraps.
- **Pools**: `MaxPool` on int8 (floor mode). A head pool under compat head_pool_zero_padding first `Pad`s
  with 0 so that the padding competes, as in the reference.
- **Flatten**: ONNX flattens NCHW maps in (c, h, w) order; nitro read channels-last maps in (h, w, c) order,
  so the columns of the linear layer behind such a flatten are permuted (`Product.weight_chw`).

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
# A limb's partial sums stay below 2^31 while K * 128 * 128 < 2^31.
MAX_LIMB_FAN_IN = (2**31 - 1) // (ACT_BOUND * ACT_BOUND)


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
        if key in self._consts:  # small constants (clip bounds, divisors) are shared
            return self._consts[key]
        name = self.name(base)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        self._consts[key] = name
        return name

    def node(self, op: str, inputs: list[str], base: str, output: str | None = None, **attrs: Any) -> str:
        out = output or self.name(base)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=self.name(f"{base}/{op}"), **attrs))
        return out


def _product(g: _Graph, x: str, p: Product, weight: np.ndarray) -> tuple[str, str]:
    """The exact product z of int8 `x` with `weight` (conv OIHW or linear [O, K]); returns (z, its dtype)."""
    from onnx import TensorProto

    if p.fan_in > MAX_LIMB_FAN_IN:
        raise NitroError(f"{p.name}: fan-in {p.fan_in} is too large for 8-bit limb products with int32 "
                         f"partial sums (at most {MAX_LIMB_FAN_IN})")
    limbs = balanced_limbs(weight)
    k, out = len(limbs), p.out_features
    stacked = np.concatenate(limbs, axis=0)  # [k * O, ...]: limb i holds output rows i*O .. i*O + O - 1
    if p.kind == "conv":
        w = g.const(f"{p.name}.weight_limbs", stacked, np.int8)
        z = g.node("ConvInteger", [x, w], f"{p.name}.z32", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
        c, h, wd = p.in_shape
        split_shape, limb_scale_shape = [0, k, out, h, wd], [k, 1, 1, 1]
    else:
        w = g.const(f"{p.name}.weight_limbs", np.ascontiguousarray(stacked.T), np.int8)  # [K, k * O]
        z = g.node("MatMulInteger", [x, w], f"{p.name}.z32")
        split_shape, limb_scale_shape = [0, k, out], [k, 1]
    if k == 1:
        return z, "int32"
    z = g.node("Reshape", [z, g.const(f"{p.name}.limb_shape", split_shape, np.int64)], f"{p.name}.limbs")
    z = g.node("Cast", [z], f"{p.name}.limbs64", to=TensorProto.INT64)
    scale = np.array([256**i for i in range(k)], dtype=np.int64).reshape(limb_scale_shape)
    z = g.node("Mul", [z, g.const(f"{p.name}.limb_scale", scale, np.int64)], f"{p.name}.scaled_limbs")
    z = g.node("ReduceSum", [z, g.const("axis1", [1], np.int64)], f"{p.name}.z", keepdims=0)
    return z, "int64"


def _scaled(g: _Graph, x: str, p: Product, weight: np.ndarray, output: str | None = None) -> str:
    """Scaling (and NITRO-ReLU in a block) of the product: int8."""
    from onnx import TensorProto

    z, kind = _product(g, x, p, weight)
    dt = np.int64 if kind == "int64" else np.int32
    if p.needs_wrap:
        if kind == "int32":  # cannot happen (k = 1 bounds |z| by K * 2^14), kept for safety
            z = g.node("Cast", [z], f"{p.name}.z64", to=TensorProto.INT64)
            dt = np.int64
        z = g.node("Add", [z, g.const("two_pow_31", 2**31, np.int64)], f"{p.name}.wrap_shift")
        z = g.node("Mod", [z, g.const("two_pow_32", 2**32, np.int64)], f"{p.name}.wrap_mod", fmod=0)
        z = g.node("Sub", [z, g.const("two_pow_31", 2**31, np.int64)], f"{p.name}.z_wrapped")
    q = g.node("Div", [z, g.const(f"divisor_{p.divisor}", p.divisor, dt)], f"{p.name}.trunc")
    q = g.node("Clip", [q, g.const("m127", -127, dt), g.const("p127", 127, dt)], f"{p.name}.clip")
    last = output if p.slope is None else None
    q = g.node("Cast", [q], f"{p.name}.scaled", output=last, to=TensorProto.INT8)
    if p.slope is None:
        return q
    pos = g.node("Clip", [q, g.const("zero8", 0, np.int8), g.const("p127_8", 127, np.int8)], f"{p.name}.pos")
    neg = g.node("Clip", [q, g.const("m127_8", -127, np.int8), g.const("zero8", 0, np.int8)], f"{p.name}.neg")
    neg = g.node("Div", [neg, g.const(f"slope_{p.slope}", p.slope, np.int8)], f"{p.name}.neg_div")
    y = g.node("Add", [pos, neg], f"{p.name}.relu_sum")
    return g.node("Sub", [y, g.const(f"relu_corr_{p.relu_correction}", p.relu_correction, np.int8)],
                  f"{p.name}.out", output=output)


def _pool(g: _Graph, x: str, pool: Pool, base: str) -> str:
    pads = [pool.ph, pool.pw, pool.ph, pool.pw]
    if pool.pad_zero and any(pads):
        pad = g.const("pool_pads_" + "_".join(map(str, pads)),
                      [0, 0, pool.ph, pool.pw, 0, 0, pool.ph, pool.pw], np.int64)
        x = g.node("Pad", [x, pad, g.const("zero8", 0, np.int8)], f"{base}.zero_pad", mode="constant")
        pads = [0, 0, 0, 0]
    return g.node("MaxPool", [x], f"{base}.pool", kernel_shape=[pool.kh, pool.kw],
                  strides=[pool.kh, pool.kw], pads=pads)


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
    x = g.node("Gather", [g.const("normalizer_table", plan.table.reshape(-1), np.int8), idx], "input_int8",
               axis=0)
    outputs = []
    head_at: dict[int, list[Any]] = {}
    for head in plan.heads:
        head_at.setdefault(head.after, []).append(head)
    for i, step in enumerate(plan.steps):
        if isinstance(step, Product):
            last = i == len(plan.steps) - 1
            weight = step.weight_chw() if step.kind == "linear" else step.weight
            x = _scaled(g, x, step, weight, output="logits" if last else None)
        elif isinstance(step, Pool):
            x = _pool(g, x, step, f"pool{i}")
        elif isinstance(step, FlattenStep):
            x = g.node("Flatten", [x], f"flatten{i}", axis=1)
        for head in head_at.get(i, []):
            hx = _pool(g, x, head.pool, f"{head.name}_head") if head.pool is not None else x
            if head.linear.in_order is not None:
                hx = g.node("Flatten", [hx], f"{head.name}_head.flatten", axis=1)
            name = f"head_{head.name}"
            _scaled(g, hx, head.linear, head.linear.weight_chw(), output=name)
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

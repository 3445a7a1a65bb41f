"""Replays the fixtures recorded from the reference code (../shared/fixtures/reference, see its README).

The fixtures use the reference's NCHW layouts; our conv activations are channels last, so the heads that
read a pooled conv map, the dropout masks and the recorded activations are permuted on the way in and out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nitro_cli.nn import Arithmetic, IntegerConv2d, LocalBlock, NitroNet, build_model
from nitro_cli.optim import IntegerSGD

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
REFERENCE = Arithmetic(True, True, True, True)


def load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def build(fx: dict[str, np.ndarray], arith: Arithmetic) -> NitroNet:
    """The fixture's network, with its recorded initial weights."""
    rate = int(fx["hp__dropout_rate_permille"]) / 1000
    kwargs: dict[str, Any] = {"hidden": fx["arch__linear_hidden"].tolist(), "dropout": rate,
                              "seed_rng": np.random.default_rng(0), "arith": arith}
    if "arch__features" in fx:
        features = ["M" if f == -1 else f for f in fx["arch__features"].tolist()]
        kwargs.update(features=features, fe_dropout=rate, decoder_dim=int(fx["arch__decoder_dim"]))
    net = build_model("vgg8b" if "arch__features" in fx else "mlp1", tuple(fx["arch__input_shape"].tolist()),
                      int(fx["arch__num_classes"]), **kwargs)
    set_weights(net, fx, "w_init")
    return net


def optimizer(fx: dict[str, np.ndarray], conv_amp_multiplier: bool = False) -> IntegerSGD:
    return IntegerSGD(int(fx["hp__lr_inv"]), int(fx["hp__fwd_decay_inv"]), int(fx["hp__subnet_decay_inv"]),
                      int(fx["hp__amp"]), conv_amp_multiplier)


def _pooled_head_shape(block: LocalBlock) -> tuple[int, int, int] | None:
    """(C, oh, ow) of a conv block's pooled head input; None for linear blocks."""
    if block.pool is None:
        return None
    c, h, w = block.out_shape
    return (c, *block.pool.out_size(h, w))


def _head_to_ours(w: np.ndarray, shape: tuple[int, int, int] | None) -> np.ndarray:
    if shape is None:
        return w
    return w.reshape(w.shape[0], *shape).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def _head_to_reference(w: np.ndarray, shape: tuple[int, int, int] | None) -> np.ndarray:
    if shape is None:
        return w
    c, oh, ow = shape
    return w.reshape(w.shape[0], oh, ow, c).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)


def set_weights(net: NitroNet, fx: dict[str, np.ndarray], prefix: str) -> None:
    for block in net.blocks:
        block.layer.weight = fx[f"{prefix}__{block.name}"].copy()
        head = fx[f"{prefix}__{block.name}_head"]
        block.head.weight = _head_to_ours(head, _pooled_head_shape(block)).copy()
    net.output.weight = fx[f"{prefix}__output"].copy()


def weights(net: NitroNet) -> dict[str, np.ndarray]:
    """Our weights in the fixture's layouts and names."""
    out = {"output": net.output.weight}
    for block in net.blocks:
        out[block.name] = block.layer.weight
        out[f"{block.name}_head"] = _head_to_reference(block.head.weight, _pooled_head_shape(block))
    return out


def snapshot_steps(fx: dict[str, np.ndarray]) -> list[int]:
    return sorted({int(k[6:9]) for k in fx if k.startswith("w_step")})


def recorded_masks(fx: dict[str, np.ndarray], step: int) -> Any:
    """A mask source that replays the recorded keep-masks of one step, channels last for conv maps."""

    def masks(name: str, shape: tuple[int, ...]) -> np.ndarray:
        ref_shape = tuple(fx[f"mask_shape__{name}"].tolist())
        bits = np.unpackbits(fx[f"mask__{name}"][step], count=int(np.prod(ref_shape)), bitorder="little")
        mask = bits.reshape(ref_shape).astype(np.int8)
        return mask.transpose(0, 2, 3, 1) if mask.ndim == 4 else mask

    return masks


def to_reference_layout(key: str, value: np.ndarray, net: NitroNet) -> np.ndarray:
    """A traced intermediate (e.g. `block3__head_in`) in the fixture's NCHW layout."""
    block = next((b for b in net.blocks if key.startswith(b.name + "__")), None)
    if block is None or not isinstance(block.layer, IntegerConv2d):
        return value
    if key.split("__")[1].startswith("head_in"):
        c, oh, ow = _pooled_head_shape(block)  # type: ignore[misc]
        return value.reshape(-1, oh, ow, c).transpose(0, 3, 1, 2).reshape(value.shape[0], -1)
    if value.ndim == 4:
        return value.transpose(0, 3, 1, 2)
    return value


def replay(fx: dict[str, np.ndarray], arith: Arithmetic, conv_amp_multiplier: bool = False,
           trace: dict[str, Any] | None = None) -> dict[int, dict[str, np.ndarray]]:
    """Train on the fixture's batches; returns our weights (fixture layout) after each snapshot step."""
    net = build(fx, arith)
    opt = optimizer(fx, conv_amp_multiplier)
    snapshots = {}
    wanted = snapshot_steps(fx)
    has_masks = any(k.startswith("mask__") for k in fx)
    for step in range(1, max(wanted) + 1):
        net.train_step(fx["x"][step - 1], fx["y"][step - 1], fx["labels"][step - 1], opt,
                       masks=recorded_masks(fx, step - 1) if has_masks else None,
                       trace=trace if step == 1 else None)
        if step in wanted:
            snapshots[step] = {k: v.copy() for k, v in weights(net).items()}
    if trace is not None:
        for key in list(trace):
            trace[key] = to_reference_layout(key, trace[key], net)
    return snapshots


def mismatches(fx: dict[str, np.ndarray], snapshots: dict[int, dict[str, np.ndarray]]) -> list[str]:
    """`step:layer` for every weight that differs from the recording."""
    return [f"{step}:{name}" for step, ws in snapshots.items() for name, w in ws.items()
            if not np.array_equal(w, fx[f"w_step{step:03d}__{name}"])]

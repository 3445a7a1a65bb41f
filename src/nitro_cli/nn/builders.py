"""Model builders: MLPs of any widths and VGG-style stacks from a layer list, with the paper's presets."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..errors import NitroError
from .arithmetic import EXACT, Arithmetic
from .layers import IntegerConv2d, IntegerLinear
from .model import DECODER_DIM, Dropout, FeaturePool, Flatten, LocalBlock, NitroNet, Stage

POOL = "M"

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "mlp1": {"kind": "mlp", "hidden": [100, 50]},
    "mlp2": {"kind": "mlp", "hidden": [200, 100, 50]},
    "mlp3": {"kind": "mlp", "hidden": [1024, 1024, 1024]},
    "mlp4": {"kind": "mlp", "hidden": [3000, 3000, 3000]},
    "vgg8b": {"kind": "vgg", "features": [128, 256, POOL, 256, 512, POOL, 512, POOL, 512, POOL],
              "hidden": [1024]},
    "vgg11b": {"kind": "vgg", "features": [128, 128, 128, 256, POOL, 256, 512, POOL, 512, 512, POOL, 512,
                                           POOL],
               "hidden": [1024]},
}


def build_model(preset: str, in_shape: tuple[int, int, int], num_classes: int, *, dropout: float = 0.0,
                fe_dropout: float = 0.0, hidden: list[int] | None = None,
                features: list[int | str] | None = None, seed_rng: np.random.Generator, xp: ModuleType = np,
                slope: int = 4, decoder_dim: int = DECODER_DIM, arith: Arithmetic = EXACT) -> NitroNet:
    """Build a preset (optionally with other widths); weights are drawn from `seed_rng` in layer order.

    Dropout stages sit between blocks (spec section 3): `dropout` after each linear block, `fe_dropout`
    after each conv block; with only `dropout` set, one Dropout of that rate also precedes the last pool.
    """
    if preset not in MODEL_PRESETS:
        raise NitroError(f"unknown model preset {preset!r}; choose one of {', '.join(MODEL_PRESETS)}")
    spec = MODEL_PRESETS[preset]
    hidden = list(spec["hidden"] if hidden is None else hidden)
    features = list(spec.get("features", []) if features is None else features)
    if spec["kind"] == "mlp" and (features or fe_dropout):
        raise NitroError(f"model {preset} is an MLP and takes no convolutional features or fe_dropout")
    if any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in hidden):
        raise NitroError(f"hidden widths must be positive integers, got {hidden}")
    if num_classes < 2:
        raise NitroError(f"a classifier needs at least 2 classes, got {num_classes}")
    for name, p in (("dropout", dropout), ("fe_dropout", fe_dropout)):
        if not 0 <= p < 1:
            raise NitroError(f"{name} must be in [0, 1), got {p}")
    in_shape = tuple(int(d) for d in in_shape)
    config = {"preset": preset, "in_shape": list(in_shape), "num_classes": num_classes, "dropout": dropout,
              "fe_dropout": fe_dropout, "hidden": hidden, "features": features, "slope": slope,
              "decoder_dim": decoder_dim, "compat": arith.to_config()}

    stages: list[Stage] = []
    shape: tuple[int, ...] = in_shape
    conv_index = [i for i, f in enumerate(features) if f != POOL]
    last_pool = max((i for i, f in enumerate(features) if f == POOL), default=-1)
    last_conv = "input"
    for i, item in enumerate(features):
        if item == POOL:
            c, h, w = shape
            if h < 2 or w < 2:
                raise NitroError(f"model {preset} pools a {h}x{w} feature map away: the input "
                                 f"{in_shape[1]}x{in_shape[2]} is too small for it")
            if i == last_pool and dropout > 0 and not fe_dropout:
                stages.append(Dropout(f"after_{last_conv}", dropout))
            stages.append(FeaturePool())
            shape = (c, h // 2, w // 2)
            continue
        if not isinstance(item, int) or isinstance(item, bool) or item < 1:
            raise NitroError(f"conv widths must be positive integers or {POOL!r}, got {item!r}")
        n = len([j for j in conv_index if j <= i])
        layer = IntegerConv2d(f"block{n}", shape[0], item, seed_rng, xp)
        last_conv = layer.name
        shape = (item, shape[1], shape[2])
        stages.append(LocalBlock(layer.name, layer, shape, num_classes, seed_rng, xp, slope=slope,
                                 decoder_dim=decoder_dim, arith=arith))
        if fe_dropout:
            stages.append(Dropout(f"after_{layer.name}", fe_dropout))
    stages.append(Flatten())
    width = int(np.prod(shape))
    updates = arith.local_updates(block_is_linear=True, in_cnn=bool(conv_index))
    for k, out in enumerate(hidden, start=len(conv_index) + 1):
        layer = IntegerLinear(f"block{k}", width, out, seed_rng, xp)
        stages.append(LocalBlock(layer.name, layer, (out,), num_classes, seed_rng, xp, slope=slope,
                                 decoder_dim=decoder_dim, arith=arith, updates_per_step=updates))
        if dropout:
            stages.append(Dropout(f"after_{layer.name}", dropout))
        width = out
    output = IntegerLinear("output", width, num_classes, seed_rng, xp)
    return NitroNet(stages, output, in_shape, num_classes, config, xp, arith)


def build_from_config(config: dict[str, Any], seed_rng: np.random.Generator, xp: ModuleType = np) -> NitroNet:
    """Rebuild a network from `NitroNet.config` (e.g. as stored in a checkpoint)."""
    return build_model(config["preset"], tuple(config["in_shape"]), int(config["num_classes"]),
                       dropout=float(config["dropout"]), fe_dropout=float(config.get("fe_dropout", 0.0)),
                       hidden=list(config["hidden"]), features=list(config["features"]), seed_rng=seed_rng,
                       xp=xp, slope=int(config["slope"]), decoder_dim=int(config["decoder_dim"]),
                       arith=Arithmetic.from_config(config.get("compat")))

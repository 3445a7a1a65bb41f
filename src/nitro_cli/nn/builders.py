"""Model builders: MLPs of any widths and VGG-style stacks from a layer list, with the paper's presets."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..errors import NitroError
from .layers import IntegerConv2d, IntegerLinear
from .model import DECODER_DIM, FeaturePool, Flatten, LocalBlock, NitroNet, Stage

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
                hidden: list[int] | None = None, features: list[int | str] | None = None,
                seed_rng: np.random.Generator, xp: ModuleType = np, slope: int = 4,
                decoder_dim: int = DECODER_DIM) -> NitroNet:
    """Build a preset (optionally with other widths); weights are drawn from `seed_rng` in layer order."""
    if preset not in MODEL_PRESETS:
        raise NitroError(f"unknown model preset {preset!r}; choose one of {', '.join(MODEL_PRESETS)}")
    spec = MODEL_PRESETS[preset]
    hidden = list(spec["hidden"] if hidden is None else hidden)
    features = list(spec.get("features", []) if features is None else features)
    if spec["kind"] == "mlp" and features:
        raise NitroError(f"model {preset} is an MLP and takes no convolutional features")
    if any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in hidden):
        raise NitroError(f"hidden widths must be positive integers, got {hidden}")
    if num_classes < 2:
        raise NitroError(f"a classifier needs at least 2 classes, got {num_classes}")
    if not 0 <= dropout < 1:
        raise NitroError(f"dropout must be in [0, 1), got {dropout}")
    in_shape = tuple(int(d) for d in in_shape)
    config = {"preset": preset, "in_shape": list(in_shape), "num_classes": num_classes, "dropout": dropout,
              "hidden": hidden, "features": features, "slope": slope, "decoder_dim": decoder_dim}

    stages: list[Stage] = []
    shape: tuple[int, ...] = in_shape
    conv_index = [i for i, f in enumerate(features) if f != POOL]
    last_pool = max((i for i, f in enumerate(features) if f == POOL), default=-1)
    for i, item in enumerate(features):
        if item == POOL:
            c, h, w = shape
            if h < 2 or w < 2:
                raise NitroError(f"model {preset} pools a {h}x{w} feature map away: the input "
                                 f"{in_shape[1]}x{in_shape[2]} is too small for it")
            stages.append(FeaturePool())
            shape = (c, h // 2, w // 2)
            continue
        if not isinstance(item, int) or isinstance(item, bool) or item < 1:
            raise NitroError(f"conv widths must be positive integers or {POOL!r}, got {item!r}")
        n = len([j for j in conv_index if j <= i])
        layer = IntegerConv2d(f"block{n}", shape[0], item, seed_rng, xp)
        shape = (item, shape[1], shape[2])
        # With dropout, the last conv block (the one before the last pool) also drops out.
        drop = dropout if dropout > 0 and i == last_pool - 1 else 0.0
        stages.append(LocalBlock(layer.name, layer, shape, num_classes, seed_rng, xp, dropout_p=drop,
                                 slope=slope, decoder_dim=decoder_dim))
    stages.append(Flatten())
    width = int(np.prod(shape))
    for k, out in enumerate(hidden, start=len(conv_index) + 1):
        layer = IntegerLinear(f"block{k}", width, out, seed_rng, xp)
        stages.append(LocalBlock(layer.name, layer, (out,), num_classes, seed_rng, xp, dropout_p=dropout,
                                 slope=slope, decoder_dim=decoder_dim))
        width = out
    output = IntegerLinear("output", width, num_classes, seed_rng, xp)
    return NitroNet(stages, output, in_shape, num_classes, config, xp)


def build_from_config(config: dict[str, Any], seed_rng: np.random.Generator, xp: ModuleType = np) -> NitroNet:
    """Rebuild a network from `NitroNet.config` (e.g. as stored in a checkpoint)."""
    return build_model(config["preset"], tuple(config["in_shape"]), int(config["num_classes"]),
                       dropout=float(config["dropout"]), hidden=list(config["hidden"]),
                       features=list(config["features"]), seed_rng=seed_rng, xp=xp,
                       slope=int(config["slope"]), decoder_dim=int(config["decoder_dim"]))

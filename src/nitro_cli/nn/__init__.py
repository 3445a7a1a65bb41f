"""NITRO-D layers, integer local-loss blocks with their learning heads, and model builders."""

from .builders import MODEL_PRESETS, POOL, build_from_config, build_model
from .layers import (
    RELU_MEAN_CORRECTION,
    IntegerConv2d,
    IntegerLinear,
    LayerInputError,
    PoolGeometry,
    dropout,
    dropout_mask,
    dropout_scale,
    kaiming_bound,
    maxpool2d,
    maxpool2d_backward,
    maxpool2d_gather,
    nitro_relu,
    nitro_relu_backward,
    scaling,
)
from .model import EvalResult, LocalBlock, NitroNet, StepResult, head_pool_geometry, output_error

__all__ = [
    "MODEL_PRESETS",
    "POOL",
    "RELU_MEAN_CORRECTION",
    "EvalResult",
    "IntegerConv2d",
    "IntegerLinear",
    "LayerInputError",
    "LocalBlock",
    "NitroNet",
    "PoolGeometry",
    "StepResult",
    "build_from_config",
    "build_model",
    "dropout",
    "dropout_mask",
    "dropout_scale",
    "head_pool_geometry",
    "kaiming_bound",
    "maxpool2d",
    "maxpool2d_backward",
    "maxpool2d_gather",
    "nitro_relu",
    "nitro_relu_backward",
    "output_error",
    "scaling",
]

"""The integer engine: array backends, host RNG streams and exact integer kernels."""

from .backend import BACKENDS, BackendUnavailable, array_module, get_backend, to_host
from .kernels import (
    IntegerOverflowError,
    checked_cast,
    conv2d,
    conv2d_weight_grad,
    gemm_path,
    isqrt,
    matmul,
    max_abs,
    saturate,
    trunc_div,
)
from .rng import STREAMS, RngStreams

__all__ = [
    "BACKENDS",
    "STREAMS",
    "BackendUnavailable",
    "IntegerOverflowError",
    "RngStreams",
    "array_module",
    "checked_cast",
    "conv2d",
    "conv2d_weight_grad",
    "gemm_path",
    "get_backend",
    "isqrt",
    "matmul",
    "max_abs",
    "saturate",
    "to_host",
    "trunc_div",
]

"""The integer engine: array backends, host RNG streams and exact integer kernels."""

from .backend import BACKENDS, BackendUnavailable, array_module, get_backend, to_host
from .host import cpu_flags, keep_freed_memory
from .kernels import (
    GemmPlan,
    IntegerOverflowError,
    checked_cast,
    conv2d,
    conv2d_nhwc,
    conv2d_nhwc_scaled,
    conv2d_weight_grad,
    conv2d_weight_grad_exact,
    conv2d_weight_grad_nhwc,
    gemm_path,
    gemm_plan,
    isqrt,
    matmul,
    matmul_exact,
    matmul_scaled,
    max_abs,
    narrowest_int,
    saturate,
    sgd_update,
    trunc_div,
)
from .rng import STREAMS, RngStreams
from .timing import ProductRecord, labelled, trace_products

__all__ = [
    "BACKENDS",
    "STREAMS",
    "BackendUnavailable",
    "GemmPlan",
    "IntegerOverflowError",
    "ProductRecord",
    "RngStreams",
    "array_module",
    "checked_cast",
    "conv2d",
    "conv2d_nhwc",
    "conv2d_nhwc_scaled",
    "conv2d_weight_grad",
    "conv2d_weight_grad_exact",
    "conv2d_weight_grad_nhwc",
    "cpu_flags",
    "gemm_path",
    "gemm_plan",
    "keep_freed_memory",
    "get_backend",
    "isqrt",
    "labelled",
    "matmul",
    "matmul_exact",
    "matmul_scaled",
    "max_abs",
    "narrowest_int",
    "saturate",
    "sgd_update",
    "to_host",
    "trace_products",
    "trunc_div",
]

keep_freed_memory()

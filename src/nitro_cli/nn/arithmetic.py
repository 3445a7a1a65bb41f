"""How a network computes its products, loss errors and head pools: exact by default, or, switch by switch,
the way the reference code did (spec section 6, `compat=reference`).

Every reference behaviour lives here and only here, behind its own switch, so the layers and blocks read
the same whichever arithmetic they run with.

Why the int32 emulation is exact: integer addition and multiplication commute with reduction modulo 2^32,
so an exact product reduced modulo 2^32 afterwards equals what int32 hardware accumulates, wrap-arounds
included, whatever the summation order. The exact product itself stays far inside int64: in every product
of the algorithm one operand is 8-bit (activations, or the int8 loss error) and the other at most 32-bit
(weights, or errors already wrapped to int32), so a sum of K < 2^23 terms is below 2^(8 + 31 + 23) = 2^62;
the engine checks the actual bound anyway and raises rather than wrap.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..engine import matmul
from .layers import IntegerConv2d, IntegerLinear, scaling

Layer = IntegerLinear | IntegerConv2d


def wrap_int8(x: Any) -> Any:
    """x modulo 256 into [-128, 127], as an int8 subtraction wraps."""
    return x.astype(np.int8)


def wrap_int32(x: Any) -> Any:
    """Exact integers (int64 or an exact float accumulator) modulo 2^32 into [-2^31, 2^31 - 1]."""
    return x.astype(np.int64, copy=False).astype(np.int32)


@dataclass
class WrapCounts:
    """Entries that wrapped since the last `take`: what the reference's arithmetic changed, measured."""

    loss_errors: int = 0
    sums: int = 0

    def take(self) -> tuple[int, int]:
        """(loss errors, sums) wrapped so far; starts the count again."""
        counts = (self.loss_errors, self.sums)
        self.loss_errors = self.sums = 0
        return counts


@dataclass(frozen=True)
class Arithmetic:
    """The four reference behaviours of spec section 6, each off unless asked for (`compat` config group)."""

    int8_loss_error: bool = False
    int32_accumulation: bool = False
    head_pool_zero_padding: bool = False
    cnn_linear_double_update: bool = False
    wraps: WrapCounts = field(default_factory=WrapCounts, compare=False, repr=False)

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> Arithmetic:
        """From a `compat` config (its `name` is only a label); None means exact."""
        return cls(**{k: bool(v) for k, v in (cfg or {}).items() if k != "name"})

    def to_config(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "wraps"}

    @property
    def counts_wraps(self) -> bool:
        """Whether anything can wrap, so that `wraps` is worth reporting."""
        return self.int8_loss_error or self.int32_accumulation

    def _wrap32(self, x: Any) -> Any:
        wrapped = wrap_int32(x)
        self.wraps.sums += int((wrapped != x).sum())
        return wrapped

    def loss_error(self, y_hat: Any, y: Any) -> Any:
        """y_hat - y: exact in int64, or wrapped in int8 (where it flips the sign of large errors)."""
        if self.int8_loss_error:
            exact = y_hat.astype(np.int16) - y
            wrapped = wrap_int8(exact)
            self.wraps.loss_errors += int((wrapped != exact).sum())
            return wrapped
        return y_hat.astype(np.int64) - y.astype(np.int64)

    def forward_scaled(self, layer: Layer, x: Any) -> Any:
        """Scaling(layer(x)); with int32 accumulation the sums wrap before the division and the clip."""
        if self.int32_accumulation:
            return scaling(self._wrap32(layer.forward(x)), layer.fan_in)
        return layer.forward_scaled(x)

    def weight_grad(self, layer: Layer, x: Any, delta: Any) -> Any:
        grad = layer.weight_grad(x, delta)
        return self._wrap32(grad) if self.int32_accumulation else grad

    def input_error(self, layer: IntegerLinear, delta: Any) -> Any:
        """delta @ W (the head's error into its block)."""
        if self.int32_accumulation:
            return self._wrap32(matmul(delta, layer.weight))
        return layer.input_error(delta)

    @property
    def head_pool_pad_value(self) -> int | None:
        """0 (competes in the max) or None (padding never wins)."""
        return 0 if self.head_pool_zero_padding else None

    def local_updates(self, block_is_linear: bool, in_cnn: bool) -> int:
        """How many times a block and its head are updated per step."""
        return 2 if self.cnn_linear_double_update and block_is_linear and in_cnn else 1


EXACT = Arithmetic()

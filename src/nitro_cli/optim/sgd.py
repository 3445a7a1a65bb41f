"""IntegerSGD (spec section 4.4): integer updates with per-layer learning-rate amplification and decay."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine import sgd_update


def _positive_or_none(value: int | None, name: str) -> int | None:
    if value is None or value == 0:
        return None
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a positive integer or null (off), got {value!r}")
    return int(value)


class IntegerSGD:
    """W -= trunc(grad / (lr_inv * amp)) + trunc(W / decay_inv).

    Block layers, linear and conv alike, use amp (default 2^6 * classes) and fwd_decay_inv; learning heads and
    the output layer use amp 1 and subnet_decay_inv. `conv_amp_multiplier` (opt-in, off in every preset)
    multiplies a conv block's amp by its `amp_factor`: an earlier spec did, the published runs never did.
    """

    def __init__(self, lr_inv: int, fwd_decay_inv: int | None = None, subnet_decay_inv: int | None = None,
                 amp: int | None = None, conv_amp_multiplier: bool = False) -> None:
        if not isinstance(lr_inv, int | np.integer) or isinstance(lr_inv, bool) or lr_inv < 1:
            raise ValueError(f"lr_inv must be a positive integer, got {lr_inv!r}")
        self.lr_inv = int(lr_inv)
        self.fwd_decay_inv = _positive_or_none(fwd_decay_inv, "fwd_decay_inv")
        self.subnet_decay_inv = _positive_or_none(subnet_decay_inv, "subnet_decay_inv")
        self.amp = _positive_or_none(amp, "amp")
        self.conv_amp_multiplier = bool(conv_amp_multiplier)

    def layer_amp(self, layer: Any, num_classes: int) -> int:
        if layer.role != "block":
            return 1
        amp = self.amp if self.amp is not None else 2**6 * num_classes
        return amp * layer.amp_factor if self.conv_amp_multiplier else amp

    def step(self, layer: Any, grad: Any, num_classes: int) -> None:
        """Apply one update to `layer.weight` (int32); raises instead of wrapping if it would overflow."""
        decay_inv = self.fwd_decay_inv if layer.role == "block" else self.subnet_decay_inv
        layer.weight = sgd_update(layer.weight, grad, self.lr_inv * self.layer_amp(layer, num_classes),
                                  decay_inv, f"weight update of layer {layer.name}")

    def state_dict(self) -> dict[str, int | None]:
        return {"lr_inv": self.lr_inv, "fwd_decay_inv": self.fwd_decay_inv,
                "subnet_decay_inv": self.subnet_decay_inv, "amp": self.amp,
                "conv_amp_multiplier": self.conv_amp_multiplier}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr_inv = int(state["lr_inv"])

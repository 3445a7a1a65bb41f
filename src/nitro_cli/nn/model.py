"""Integer local-loss blocks, their learning heads, and the networks built from them (spec sections 3-4)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from ..engine import narrowest_int, to_host
from ..errors import NitroError
from .arithmetic import EXACT, Arithmetic
from .layers import (
    IntegerConv2d,
    IntegerLinear,
    LayerInputError,
    PoolGeometry,
    dropout,
    dropout_mask,
    dropout_scale,
    maxpool2d,
    maxpool2d_backward,
    maxpool2d_gather,
    nitro_relu,
    nitro_relu_backward,
)

DECODER_DIM = 4096


class Optimizer(Protocol):
    def step(self, layer: Any, grad: Any, num_classes: int) -> None: ...


@dataclass
class StepResult:
    """What one training step tells the runner (host numbers, for logging only)."""

    loss: float
    correct: int
    head_correct: list[int]
    n: int
    # entries the reference's arithmetic wrapped in this step (0 unless compat switches them on)
    wrapped_loss_errors: int = 0
    wrapped_sums: int = 0


@dataclass
class EvalResult:
    correct: int
    n: int
    head_correct: list[int]
    confusion: np.ndarray = field(repr=False)
    logits: np.ndarray | None = field(default=None, repr=False)  # output logits, if kept (and any)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def head_accuracies(self) -> list[float]:
        return [c / self.n if self.n else 0.0 for c in self.head_correct]


def head_pool_geometry(channels: int, h: int, w: int, decoder_dim: int = DECODER_DIM) -> PoolGeometry:
    """The head's max-pool that shrinks C*h*w to at most `decoder_dim` features (spec section 3)."""
    kh = kw = 1
    oh, ow = h, w
    while channels * oh * ow > decoder_dim and kh < h:
        kh *= 2
        oh = math.ceil(h / kh)
        if channels * oh * ow > decoder_dim and kw < w:
            kw *= 2
            ow = math.ceil(w / kw)
    return PoolGeometry(kh, kw, kh * (oh - h // kh) // 2, kw * (ow - w // kw) // 2)


class LocalBlock:
    """Linear or conv layer -> Scaling -> NITRO-ReLU, trained by its own learning head.

    A Dropout that follows the block is a stage of its own (spec section 3): the head learns from the block's
    output before the mask, so no error ever passes through dropout.
    """

    def __init__(self, name: str, layer: IntegerLinear | IntegerConv2d, out_shape: tuple[int, ...],
                 num_classes: int, rng: np.random.Generator, xp: ModuleType, *, slope: int = 4,
                 decoder_dim: int = DECODER_DIM, arith: Arithmetic = EXACT,
                 updates_per_step: int = 1) -> None:
        self.name, self.layer, self.out_shape, self.slope = name, layer, out_shape, slope
        self.arith, self.updates_per_step = arith, updates_per_step
        layer.role, layer.amp_factor = "block", 1
        self.pool: PoolGeometry | None = None
        head_dim = out_shape[0]
        if len(out_shape) == 3:
            c, h, w = out_shape  # the activations themselves are channels last: [N, h, w, c]
            self.pool = head_pool_geometry(c, h, w, decoder_dim)
            ph, pw = self.pool.out_size(h, w)
            head_dim = c * ph * pw
            layer.amp_factor = (h * w) // (self.pool.kh * self.pool.kw)  # used only when opted in
        self.head = IntegerLinear(f"{name}_head", head_dim, num_classes, rng, xp)
        self.head.role, self.head.amp_factor = "head", 1

    def forward(self, x: Any) -> Any:
        return nitro_relu(self.arith.forward_scaled(self.layer, x), self.slope)

    def head_input(self, out: Any, with_index: bool = True) -> tuple[Any, Any]:
        """Pool (conv blocks) and flatten the block output; also returns the pool's argmax indices (which
        training routes the error through)."""
        index = None
        if self.pool is not None:
            out, index = maxpool2d(out, self.pool, self.arith.head_pool_pad_value, with_index)
        return out.reshape(out.shape[0], -1), index

    def head_forward(self, out: Any) -> Any:
        flat, _ = self.head_input(out, with_index=False)
        return self.arith.forward_scaled(self.head, flat)

    def train_step(self, x: Any, y: Any, optimizer: Optimizer, num_classes: int,
                   trace: dict[str, Any] | None = None) -> tuple[Any, Any]:
        """Forward, local loss, and updates of the head and the block layer; returns (output, head logits).

        Every update reuses this forward pass's input, pre-activation and output; a second update (reference
        behaviour) re-runs only the head, with its once-updated weights.
        """
        pre = self.arith.forward_scaled(self.layer, x)
        out = nitro_relu(pre, self.slope)
        flat, index = self.head_input(out)
        first_logits = None
        for update in range(self.updates_per_step):
            y_local = self.arith.forward_scaled(self.head, flat)
            delta = self.arith.loss_error(y_local, y)
            head_grad = self.arith.weight_grad(self.head, flat, delta)
            err = self.arith.input_error(self.head, delta)  # pre-update head weights
            optimizer.step(self.head, head_grad, num_classes)
            err_pre = self._error_into_layer(err, pre, index, tuple(out.shape))
            optimizer.step(self.layer, self.arith.weight_grad(self.layer, x, err_pre), num_classes)
            if trace is not None:
                self._trace(trace, "_pass2" if update else "", out, flat, y_local, delta, err, pre, index)
            first_logits = y_local if first_logits is None else first_logits
        return out, first_logits

    def _error_into_layer(self, err: Any, pre: Any, index: Any, out_shape: tuple[int, ...]) -> Any:
        """The head's error back through (pool,) NITRO-ReLU and Scaling (identity) to the layer's output.

        In the narrowest integer type that holds it: a conv block's routed error is a full-size map, mostly
        zeros, that the weight gradient reads several times (bound, limb split), so its width is memory
        traffic (int64 for errors that fit int16 in a fresh network)."""
        err = narrowest_int(err)
        if self.pool is None:
            return nitro_relu_backward(pre, err.reshape(out_shape), self.slope)
        # Only each window's first maximum receives error, and the ReLU backward is elementwise and maps
        # 0 to 0: apply it at pooled size, then route (exactly equal). Error routed to a padding cell that
        # won the max (reference behaviour) is cropped away by the routing.
        err = err.reshape(index.shape)
        err = nitro_relu_backward(maxpool2d_gather(pre, index, self.pool), err, self.slope)
        return maxpool2d_backward(err, index, self.pool, out_shape[1:3])

    def _trace(self, trace: dict[str, Any], suffix: str, out: Any, flat: Any, y_local: Any, delta: Any,
               err: Any, pre: Any, index: Any) -> None:
        """Record this update's intermediates (for the oracle tests), at the block output's full size."""
        err_out = err.reshape(out.shape) if self.pool is None else \
            maxpool2d_backward(err.reshape(index.shape), index, self.pool, out.shape[1:3])
        values = {"out": out, "head_in": flat, "y_local": y_local, "head_err": delta, "err_out": err_out,
                  "err_pre": nitro_relu_backward(pre, err_out, self.slope)}
        trace.update({f"{self.name}__{k}{suffix}": to_host(v) for k, v in values.items()})


class Dropout:
    """Dropout between stages (spec section 3): what the next stage receives is trunc(x * mask * r / 1000);
    identity at evaluation. It has no backward pass, as no error crosses a block boundary."""

    def __init__(self, name: str, p: float) -> None:
        self.name, self.p, self.r = name, p, dropout_scale(p)

    def forward(self, x: Any) -> Any:
        return x

    def train_forward(self, x: Any, mask: Any) -> Any:
        return dropout(x, mask, self.r)


class FeaturePool:
    """A 2x2 max-pool between conv blocks (channels last): forward only, as no error crosses blocks."""

    def __init__(self) -> None:
        self.geom = PoolGeometry(2, 2)

    def forward(self, x: Any) -> Any:
        return maxpool2d(x, self.geom, with_index=False)[0]


class Flatten:
    def forward(self, x: Any) -> Any:
        return x.reshape(x.shape[0], -1)


Stage = LocalBlock | Dropout | FeaturePool | Flatten
# (dropout stage name, activation shape) -> keep mask (1 = kept); replaces the random draw, e.g. to replay
# recorded masks.
MaskSource = Callable[[str, tuple[int, ...]], Any]


class NitroNet:
    """A stack of integer local-loss blocks with an integer output layer, trained without backpropagation."""

    def __init__(self, stages: list[Stage], output: IntegerLinear, in_shape: tuple[int, int, int],
                 num_classes: int, config: dict, xp: ModuleType, arith: Arithmetic = EXACT) -> None:
        self.stages, self.output, self.arith = stages, output, arith
        self.output.role, self.output.amp_factor = "output", 1
        self.in_shape, self.num_classes, self.config, self.xp = in_shape, num_classes, config, xp
        self.blocks = [s for s in stages if isinstance(s, LocalBlock)]
        self.channels_last = any(isinstance(b.layer, IntegerConv2d) for b in self.blocks)

    @property
    def head_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def layers(self) -> list[IntegerLinear | IntegerConv2d]:
        """Every trainable layer, in a fixed order (blocks, their heads, then the output layer)."""
        found: list[IntegerLinear | IntegerConv2d] = []
        for block in self.blocks:
            found += [block.layer, block.head]
        return [*found, self.output]

    def _check(self, x: Any) -> Any:
        """Refuse bad images; move them to the device, channels last when the network convolves."""
        if x.dtype.kind not in "iu":
            raise LayerInputError(f"network input must be an integer array, got dtype {x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise LayerInputError(f"network expects images [N, {', '.join(map(str, self.in_shape))}], "
                                  f"got {list(x.shape)}")
        if self.channels_last:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return self.xp.asarray(x)

    def train_step(self, x: Any, y_onehot: Any, labels: Any, optimizer: Optimizer,
                   dropout_rng: np.random.Generator | None = None, *, masks: MaskSource | None = None,
                   trace: dict[str, Any] | None = None) -> StepResult:
        """One NITRO-D step: every block learns from its head; the output layer from the final error.

        Dropout masks are drawn from `dropout_rng` unless `masks` supplies them; `trace`, when given,
        collects every block's intermediates as host arrays (see LocalBlock._trace).
        """
        h = self._check(x)
        y = self.xp.asarray(y_onehot)
        labels = np.asarray(labels)
        self.arith.wraps.take()  # what evaluation wrapped is not this step's
        head_correct = []
        for stage in self.stages:
            if isinstance(stage, LocalBlock):
                h, y_local = stage.train_step(h, y, optimizer, self.num_classes, trace)
                head_correct.append(int((to_host(y_local.argmax(axis=1)) == labels).sum()))
            elif isinstance(stage, Dropout):
                shape = tuple(h.shape)
                mask = masks(stage.name, shape) if masks is not None else \
                    self.xp.asarray(dropout_mask(shape, stage.p, dropout_rng))
                h = stage.train_forward(h, mask)
            else:
                h = stage.forward(h)
        y_hat = self.arith.forward_scaled(self.output, h)
        delta = self.arith.loss_error(y_hat, y)
        optimizer.step(self.output, self.arith.weight_grad(self.output, h, delta), self.num_classes)
        if trace is not None:
            trace.update({"output__y_hat": to_host(y_hat), "output__err": to_host(delta)})
        delta = delta.astype(np.int64, copy=False)
        loss = float(to_host((delta * delta).sum())) / 2 / len(labels)
        correct = int((to_host(y_hat.argmax(axis=1)) == labels).sum())
        return StepResult(loss, correct, head_correct, len(labels), *self.arith.wraps.take())

    def predict(self, x: Any) -> tuple[np.ndarray, list[np.ndarray]]:
        """Output logits and every head's logits, in evaluation mode (no dropout), as host arrays."""
        h = self._check(x)
        heads = []
        for stage in self.stages:
            h = stage.forward(h)
            if isinstance(stage, LocalBlock):
                heads.append(to_host(stage.head_forward(h)))
        return to_host(self.arith.forward_scaled(self.output, h)), heads

    def evaluate(self, x: np.ndarray, labels: np.ndarray, batch_size: int = 256,
                 on_batch: Callable[[int, int], None] | None = None, keep_logits: bool = False) -> EvalResult:
        """Accuracy of the output and of every head over all of `x` (the last partial batch included).

        `on_batch(images done, images in all)` is called after each batch, for a progress display;
        `keep_logits` also returns the output logits of every image (computed anyway; keeping them
        costs only memory).
        """
        labels = np.asarray(labels).astype(np.int64)
        correct, head_correct = 0, [0] * len(self.blocks)
        confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        kept: list[np.ndarray] = []
        for start in range(0, len(labels), batch_size):
            out, heads = self.predict(x[start : start + batch_size])
            if keep_logits:
                kept.append(out)
            truth = labels[start : start + batch_size]
            pred = out.argmax(axis=1)
            correct += int((pred == truth).sum())
            head_correct = [c + int((hd.argmax(axis=1) == truth).sum())
                            for c, hd in zip(head_correct, heads, strict=True)]
            confusion += np.bincount(truth * self.num_classes + pred,
                                     minlength=self.num_classes**2).reshape(confusion.shape)
            if on_batch is not None:
                on_batch(min(start + batch_size, len(labels)), len(labels))
        logits = np.concatenate(kept) if kept else None
        return EvalResult(correct, len(labels), head_correct, confusion, logits)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters as host int32 arrays under `param/<layer-name>/weight` (and `/bias`)."""
        state = {}
        for layer in self.layers():
            state[f"param/{layer.name}/weight"] = to_host(layer.weight).copy()
            if layer.bias is not None:
                state[f"param/{layer.name}/bias"] = to_host(layer.bias).copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(k for k in state if k.startswith("param/") and k not in expected)
        if missing or extra:
            raise NitroError(f"parameters do not match this model (missing: {missing[:3]}, unexpected: "
                             f"{extra[:3]}); was the checkpoint made with another model or dataset?")
        for key, ref in expected.items():
            if state[key].shape != ref.shape or state[key].dtype != ref.dtype:
                raise NitroError(f"parameter {key} has shape {state[key].shape} {state[key].dtype}, "
                                 f"this model needs {ref.shape} {ref.dtype}")
        for layer in self.layers():
            layer.weight = self.xp.asarray(state[f"param/{layer.name}/weight"])
            if layer.bias is not None:
                layer.bias = self.xp.asarray(state[f"param/{layer.name}/bias"])

    @property
    def num_parameters(self) -> int:
        return sum(int(layer.weight.size) for layer in self.layers())

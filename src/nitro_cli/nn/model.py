"""Integer local-loss blocks, their learning heads, and the networks built from them (spec sections 3-4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from ..engine import array_module, to_host
from ..errors import NitroError
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


@dataclass
class EvalResult:
    correct: int
    n: int
    head_correct: list[int]
    confusion: np.ndarray = field(repr=False)

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


def output_error(y_hat: Any, y: Any) -> Any:
    """y_hat - y in int64: the reference computed this in int8 and flipped signs by wrapping around."""
    return y_hat.astype(np.int64) - y.astype(np.int64)


class LocalBlock:
    """Linear or conv layer -> Scaling -> NITRO-ReLU (-> Dropout), trained by its own learning head."""

    def __init__(self, name: str, layer: IntegerLinear | IntegerConv2d, out_shape: tuple[int, ...],
                 num_classes: int, rng: np.random.Generator, xp: ModuleType, *, dropout_p: float = 0.0,
                 slope: int = 4, decoder_dim: int = DECODER_DIM) -> None:
        self.name, self.layer, self.out_shape, self.slope = name, layer, out_shape, slope
        self.dropout_p = dropout_p
        self.dropout_r = dropout_scale(dropout_p) if dropout_p > 0 else 0
        layer.role, layer.amp_factor = "block", 1
        self.pool: PoolGeometry | None = None
        head_dim = out_shape[0]
        if len(out_shape) == 3:
            c, h, w = out_shape  # the activations themselves are channels last: [N, h, w, c]
            self.pool = head_pool_geometry(c, h, w, decoder_dim)
            ph, pw = self.pool.out_size(h, w)
            head_dim = c * ph * pw
            layer.amp_factor = (h * w) // (self.pool.kh * self.pool.kw)
        self.head = IntegerLinear(f"{name}_head", head_dim, num_classes, rng, xp)
        self.head.role, self.head.amp_factor = "head", 1

    def forward(self, x: Any) -> Any:
        """Evaluation forward pass (dropout is the identity there)."""
        return nitro_relu(self.layer.forward_scaled(x), self.slope)

    def head_input(self, out: Any) -> tuple[Any, Any]:
        """Pool (conv blocks) and flatten the block output; also returns the pool's argmax indices."""
        index = None
        if self.pool is not None:
            out, index = maxpool2d(out, self.pool)
        return out.reshape(out.shape[0], -1), index

    def head_forward(self, out: Any) -> Any:
        flat, _ = self.head_input(out)
        return self.head.forward_scaled(flat)

    def train_step(self, x: Any, y: Any, optimizer: Optimizer, num_classes: int,
                   dropout_rng: np.random.Generator | None) -> tuple[Any, Any]:
        """Forward, local loss, and updates of the head and the block layer; returns (output, head logits)."""
        xp = array_module(x)
        pre = self.layer.forward_scaled(x)
        act = nitro_relu(pre, self.slope)
        mask = None
        if self.dropout_p > 0:
            mask = xp.asarray(dropout_mask(tuple(act.shape), self.dropout_p, dropout_rng))
            out = dropout(act, mask, self.dropout_r)
        else:
            out = act
        flat, index = self.head_input(out)
        y_local = self.head.forward_scaled(flat)
        delta = output_error(y_local, y)
        head_grad = self.head.weight_grad(flat, delta)
        err = self.head.input_error(delta)  # pre-update head weights
        optimizer.step(self.head, head_grad, num_classes)
        if self.pool is not None:
            # Only each window's first maximum receives error, and the dropout and ReLU backward passes
            # are elementwise and map 0 to 0: apply them at pooled size, then route (exactly equal).
            hw = tuple(out.shape[1:3])
            err = err.reshape(index.shape)
            if mask is not None:
                err = dropout(err, maxpool2d_gather(mask, index, self.pool), self.dropout_r)
            err = nitro_relu_backward(maxpool2d_gather(pre, index, self.pool), err, self.slope)
            err = maxpool2d_backward(err, index, self.pool, hw)
        else:
            err = err.reshape(out.shape)
            if mask is not None:
                err = dropout(err, mask, self.dropout_r)
            err = nitro_relu_backward(pre, err, self.slope)  # Scaling's backward is the identity
        optimizer.step(self.layer, self.layer.weight_grad(x, err), num_classes)
        return out, y_local


class FeaturePool:
    """A 2x2 max-pool between conv blocks (channels last): forward only, as no error crosses blocks."""

    def __init__(self) -> None:
        self.geom = PoolGeometry(2, 2)

    def forward(self, x: Any) -> Any:
        return maxpool2d(x, self.geom)[0]


class Flatten:
    def forward(self, x: Any) -> Any:
        return x.reshape(x.shape[0], -1)


Stage = LocalBlock | FeaturePool | Flatten


class NitroNet:
    """A stack of integer local-loss blocks with an integer output layer, trained without backpropagation."""

    def __init__(self, stages: list[Stage], output: IntegerLinear, in_shape: tuple[int, int, int],
                 num_classes: int, config: dict, xp: ModuleType) -> None:
        self.stages, self.output = stages, output
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
                   dropout_rng: np.random.Generator | None = None) -> StepResult:
        """One NITRO-D step: every block learns from its head; the output layer from the final error."""
        h = self._check(x)
        y = self.xp.asarray(y_onehot)
        labels = np.asarray(labels)
        head_correct = []
        for stage in self.stages:
            if isinstance(stage, LocalBlock):
                h, y_local = stage.train_step(h, y, optimizer, self.num_classes, dropout_rng)
                head_correct.append(int((to_host(y_local.argmax(axis=1)) == labels).sum()))
            else:
                h = stage.forward(h)
        y_hat = self.output.forward_scaled(h)
        delta = output_error(y_hat, y)
        optimizer.step(self.output, self.output.weight_grad(h, delta), self.num_classes)
        loss = float(to_host((delta * delta).sum())) / 2 / len(labels)
        correct = int((to_host(y_hat.argmax(axis=1)) == labels).sum())
        return StepResult(loss, correct, head_correct, len(labels))

    def predict(self, x: Any) -> tuple[np.ndarray, list[np.ndarray]]:
        """Output logits and every head's logits, in evaluation mode (no dropout), as host arrays."""
        h = self._check(x)
        heads = []
        for stage in self.stages:
            h = stage.forward(h)
            if isinstance(stage, LocalBlock):
                heads.append(to_host(stage.head_forward(h)))
        return to_host(self.output.forward_scaled(h)), heads

    def evaluate(self, x: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> EvalResult:
        """Accuracy of the output and of every head over all of `x` (the last partial batch included)."""
        labels = np.asarray(labels).astype(np.int64)
        correct, head_correct = 0, [0] * len(self.blocks)
        confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        for start in range(0, len(labels), batch_size):
            out, heads = self.predict(x[start : start + batch_size])
            truth = labels[start : start + batch_size]
            pred = out.argmax(axis=1)
            correct += int((pred == truth).sum())
            head_correct = [c + int((hd.argmax(axis=1) == truth).sum())
                            for c, hd in zip(head_correct, heads, strict=True)]
            confusion += np.bincount(truth * self.num_classes + pred,
                                     minlength=self.num_classes**2).reshape(confusion.shape)
        return EvalResult(correct, len(labels), head_correct, confusion)

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

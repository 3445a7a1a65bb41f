"""Integer preprocessing of spec §1.3-1.6: centring, per-channel mean/MAD scaling to int8, scaled one-hot.

All arithmetic is exact integer arithmetic; `trunc` rounds toward zero (not NumPy's floor division).
Because the normalized value of a pixel depends only on its byte and channel, `Normalizer.apply` uses a
256-entry lookup table per channel: bit-identical to the formula, fast, and light on memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine import trunc_div
from ..errors import NitroError

TARGET_SCALE = 51  # 51 ~ 64 / 1.25: normalized values get a standard deviation of about 64
_CHUNK = 1 << 20


def _check_images(x: np.ndarray) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"expected uint8 images [N, C, H, W], got {got}")


@dataclass
class Normalizer:
    """Per-channel training statistics of the centred images (x = pixel - 128): mean and MAD, int64 [C]."""

    mean: np.ndarray
    mad: np.ndarray

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.int64).reshape(-1)
        self.mad = np.asarray(self.mad, dtype=np.int64).reshape(-1)
        if self.mean.shape != self.mad.shape:
            raise NitroError(f"normalizer mean has {self.mean.size} channels but mad has {self.mad.size}")
        if (self.mad <= 0).any():
            raise NitroError(f"normalizer mean absolute deviation must be positive, got {self.mad.tolist()}")

    def table(self) -> np.ndarray:
        """int8 [C, 256]: the normalized value of every pixel byte, per channel (spec §1.5)."""
        x = np.arange(256, dtype=np.int64)[None, :] - 128
        q = trunc_div((x - self.mean[:, None]) * TARGET_SCALE, self.mad[:, None])
        return np.clip(q, -128, 127).astype(np.int8)

    def apply(self, x_uint8: np.ndarray) -> np.ndarray:
        """int8 [N, C, H, W]: clip(trunc((pixel - 128 - mean) * 51 / mad), -128, 127) per channel."""
        _check_images(x_uint8)
        if x_uint8.shape[1] != self.mean.size:
            raise NitroError(f"images have {x_uint8.shape[1]} channels, the normalizer {self.mean.size}")
        lut = self.table()
        out = np.empty(x_uint8.shape, dtype=np.int8)
        for c in range(lut.shape[0]):
            np.take(lut[c], x_uint8[:, c], out=out[:, c], mode="wrap")  # bytes index 0..255: never wraps
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to store in a checkpoint, so evaluation normalizes with the training statistics."""
        return {"mean": self.mean.copy(), "mad": self.mad.copy()}

    @classmethod
    def from_state_dict(cls, d: dict[str, np.ndarray]) -> Normalizer:
        """Inverse of `state_dict`."""
        try:
            return cls(mean=np.asarray(d["mean"]), mad=np.asarray(d["mad"]))
        except KeyError as e:
            raise NitroError(f"normalizer state lacks {e}") from None


def fit_normalizer(train_x_uint8: np.ndarray, max_images: int = 25000) -> Normalizer:
    """Spec §1.4: per channel, on the first min(N, max_images) images of the (already shuffled) train set,
    mean = trunc(sum(x) / count) and mad = trunc(sum(|x - mean|) / count) with x = pixel - 128.

    Exact: the sums come from per-channel byte histograms in int64.
    """
    _check_images(train_x_uint8)
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    x = train_x_uint8[:max_images]
    n, c = x.shape[:2]
    if n == 0:
        raise NitroError("cannot fit the normalizer on an empty training set")
    count = n * x.shape[2] * x.shape[3]
    values = np.arange(256, dtype=np.int64) - 128
    means, mads = [], []
    for ch in range(c):
        flat = x[:, ch].reshape(-1)
        hist = np.zeros(256, dtype=np.int64)
        for i in range(0, flat.size, _CHUNK):  # chunks: bincount widens bytes to intp
            hist += np.bincount(flat[i:i + _CHUNK], minlength=256)
        mean = int(trunc_div(np.int64((hist * values).sum()), count))
        mad = int((hist * np.abs(values - mean)).sum()) // count  # non-negative: floor == trunc
        if mad == 0:
            raise NitroError(f"channel {ch} of the first {n} training images is (nearly) constant: its mean "
                             "absolute deviation truncates to 0, so it cannot be normalized; check the "
                             "dataset files")
        means.append(mean)
        mads.append(mad)
    return Normalizer(np.array(means, dtype=np.int64), np.array(mads, dtype=np.int64))


def one_hot(labels: np.ndarray, num_classes: int, value: int = 32) -> np.ndarray:
    """int8 [N, num_classes]: `value` at each label's class, 0 elsewhere (spec §1.6)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-d integer array, got {labels.dtype} {labels.shape}")
    if not -128 <= value <= 127:
        raise ValueError(f"one-hot value {value} does not fit in int8")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    out = np.zeros((labels.size, num_classes), dtype=np.int8)
    out[np.arange(labels.size), labels] = value
    return out

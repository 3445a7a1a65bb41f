"""Integer data augmentation (spec §5): random crop of a padded image and horizontal flip.

Pure index shuffling on int8 images: no arithmetic, so it is exact by construction. Vectorized over the
batch (a sliding-window view of the padded batch, gathered with one fancy index), no per-sample loop.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def augment_batch(x: np.ndarray, rng: np.random.Generator, crop_pad: int, flip: bool, per_batch: bool,
                  p: float = 0.5) -> np.ndarray:
    """A new augmented batch, same shape and dtype as `x` (int8 [N, C, H, W]).

    Crop: pad each image by `crop_pad` on every side with the padding value, then take the H x W window
    whose top-left corner is (dy, dx), dy, dx in 0..2*crop_pad (crop_pad, crop_pad is the identity).
    The padding value is the minimum of the batch (per_batch=True, the paper's) or of each image over all
    its channels (per_batch=False). Flip (only when `flip`): reverse the columns of the cropped image.

    Draws, always in this order and always all of them, whatever the outcome (so the generator's position
    after the call depends only on N and per_batch):
      per_batch=True:  u_crop = rng.random(); (dy, dx) = rng.integers(0, 2*crop_pad + 1, size=2);
                       u_flip = rng.random()
      per_batch=False: u_crop = rng.random(N); dydx = rng.integers(0, 2*crop_pad + 1, size=(N, 2));
                       u_flip = rng.random(N)
    The crop is applied where u_crop < p, the flip where `flip` and u_flip < p.
    """
    if x.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {x.shape}")
    if crop_pad < 0:
        raise ValueError(f"crop_pad must be >= 0, got {crop_pad}")
    n = x.shape[0]
    span = 2 * crop_pad + 1
    if per_batch:
        u_crop = rng.random()
        dy, dx = (int(v) for v in rng.integers(0, span, size=2))
        u_flip = rng.random()
        out = x
        if n and u_crop < p and crop_pad:
            padded = _pad(x, np.full(n, x.min(), dtype=x.dtype), crop_pad)
            out = padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
        if flip and u_flip < p:
            out = out[..., ::-1]
        return np.ascontiguousarray(out) if out is not x else x.copy()

    u_crops = rng.random(n)
    offsets = rng.integers(0, span, size=(n, 2))
    u_flips = rng.random(n)
    if n == 0:
        return x.copy()
    crop = u_crops < p
    dys = np.where(crop, offsets[:, 0], crop_pad)
    dxs = np.where(crop, offsets[:, 1], crop_pad)
    padded = _pad(x, x.reshape(n, -1).min(axis=1), crop_pad)
    windows = sliding_window_view(padded, x.shape[2:], axis=(2, 3))  # [N, C, span, span, H, W]
    out = windows[np.arange(n), :, dys, dxs]  # advanced indices first: [N, C, H, W], a copy
    if flip:
        flips = u_flips < p
        out[flips] = out[flips][..., ::-1]
    return out


def _pad(x: np.ndarray, fill: np.ndarray, pad: int) -> np.ndarray:
    """x padded by `pad` on both spatial sides with the per-image value `fill` [N]."""
    n, c, h, w = x.shape
    padded = np.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    padded[...] = fill[:, None, None, None]
    padded[:, :, pad:pad + h, pad:pad + w] = x
    return padded

"""End-to-end learning with the library alone: determinism and the MLP1 accuracy the spec implies."""

import os
from pathlib import Path

import numpy as np
import pytest

from nitro_cli.data import fit_normalizer, load_dataset, one_hot
from nitro_cli.engine import RngStreams
from nitro_cli.nn import build_model
from nitro_cli.optim import IntegerSGD


def train_epochs(name: str, seed: int, epochs: int, root: str | None = None, train_images: int | None = None):
    """Spec protocol: shuffle once with the seed, normalize on the training set, reshuffle every epoch."""
    raw = load_dataset(name, root)
    rngs = RngStreams(seed)
    order = rngs.shuffle.permutation(len(raw.train_y))[:train_images]
    train_x, train_y = raw.train_x[order], raw.train_y[order]
    norm = fit_normalizer(train_x)
    x, xt = norm.apply(train_x), norm.apply(raw.test_x)
    y = one_hot(train_y, 10)
    model = build_model("mlp1", x.shape[1:], 10, seed_rng=rngs.init)
    opt = IntegerSGD(lr_inv=512, fwd_decay_inv=12000, subnet_decay_inv=3000)
    for _ in range(epochs):
        perm = rngs.shuffle.permutation(len(train_y))
        for start in range(0, len(perm) - 63, 64):
            batch = perm[start : start + 64]
            model.train_step(x[batch], y[batch], train_y[batch], opt, rngs.dropout)
    return model, model.evaluate(xt, raw.test_y)


def test_same_seed_gives_identical_parameters_and_another_seed_does_not():
    a, _ = train_epochs("mnist_mini", seed=7, epochs=1, train_images=3000)
    b, _ = train_epochs("mnist_mini", seed=7, epochs=1, train_images=3000)
    c, _ = train_epochs("mnist_mini", seed=8, epochs=1, train_images=3000)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not all(np.array_equal(sa[k], sc[k]) for k in sa)


def _full_mnist_root() -> str | None:
    root = os.environ.get("NITRO_DATA")
    return root if root and (Path(root) / "MNIST" / "raw").is_dir() else None


@pytest.mark.skipif(_full_mnist_root() is None, reason="full MNIST not found under $NITRO_DATA")
def test_mlp1_reaches_92_5_percent_on_full_mnist_in_three_epochs():
    _, result = train_epochs("mnist", seed=42, epochs=3, root=_full_mnist_root())
    assert result.n == 10_000
    assert result.accuracy >= 0.925, f"MLP1 test accuracy after 3 epochs: {result.accuracy:.4f}"

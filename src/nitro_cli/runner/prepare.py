"""The data pipeline of a run (spec section 1 and the trainer protocols), shared by training and eval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import DATASETS, Normalizer, dataset_sizes, fit_normalizer, load_dataset
from ..engine import RngStreams
from ..errors import NitroError


@dataclass
class Prepared:
    """Normalized int8 splits of one run; labels as int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray | None
    val_y: np.ndarray | None
    test_x: np.ndarray
    test_y: np.ndarray
    normalizer: Normalizer
    in_shape: tuple[int, int, int]
    num_classes: int
    class_names: list[str]


def scored_test_count(n: int, trainer: dict[str, Any]) -> int:
    """How many test images count: all of them, or whole batches only (the paper's 9,984 of 10,000)."""
    if trainer["test_drop_last"]:
        return n - n % trainer["batch_size"]
    return n


def split_sizes(cfg: dict[str, Any], n_train_images: int, n_test_images: int) -> tuple[int, int, int]:
    """Training, validation and scored test images of a run; raises NitroError when a split is unusable."""
    data, trainer = cfg["data"], cfg["trainer"]
    n_val = int(round(trainer["val_fraction"] * n_train_images))
    n_train = n_train_images - n_val
    if n_train < trainer["batch_size"]:
        raise NitroError(f"trainer.batch_size={trainer['batch_size']} exceeds the {n_train} training images "
                         f"of {data['name']} (after the validation split); lower trainer.batch_size")
    if trainer["val_fraction"] > 0 and n_val == 0:
        raise NitroError(f"trainer.val_fraction={trainer['val_fraction']} leaves no validation image; "
                         "raise it")
    n_test = scored_test_count(n_test_images, trainer)
    if n_test == 0:
        raise NitroError("no test image is scored: trainer.batch_size exceeds the test set with "
                         "trainer.test_drop_last=true")
    return n_train, n_val, n_test


def check_data(cfg: dict[str, Any]) -> None:
    """Refuse a run whose dataset is missing or too small for its splits, without reading the data."""
    split_sizes(cfg, *dataset_sizes(cfg["data"]["name"], cfg["data"]["root"]))


def prepare_data(cfg: dict[str, Any], rngs: RngStreams) -> Prepared:
    """Shuffle once with the run seed, split validation off, fit the normalizer on the training part only,
    and normalize every split with it."""
    data = cfg["data"]
    raw = load_dataset(data["name"], data["root"])
    info = DATASETS[data["name"]]
    order = rngs.shuffle.permutation(len(raw.train_y))
    x, y = raw.train_x[order], raw.train_y[order].astype(np.int64)
    n_train, n_val, n_test = split_sizes(cfg, len(y), len(raw.test_y))
    normalizer = fit_normalizer(x[:n_train])
    return Prepared(
        train_x=normalizer.apply(x[:n_train]), train_y=y[:n_train],
        val_x=normalizer.apply(x[n_train:]) if n_val else None, val_y=y[n_train:] if n_val else None,
        test_x=normalizer.apply(raw.test_x[:n_test]), test_y=raw.test_y[:n_test].astype(np.int64),
        normalizer=normalizer, in_shape=tuple(int(d) for d in info.shape),  # type: ignore[arg-type]
        num_classes=int(info.num_classes), class_names=list(raw.class_names),
    )

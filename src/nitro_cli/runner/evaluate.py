"""Evaluating a checkpoint on its own: model, normalizer and test protocol all come from the file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import DATASETS, Normalizer, dataset_sizes, load_dataset
from ..engine import BackendUnavailable, get_backend
from ..errors import NitroError
from ..nn import NitroNet, build_from_config
from .checkpoint import Checkpoint, load_checkpoint
from .config import validate_train_config
from .prepare import scored_test_count


@dataclass
class EvalReport:
    """What `nitro eval` prints and writes to eval.json."""

    ckpt: str
    data: str
    epoch: int
    n: int
    test_accuracy: float
    head_names: list[str]
    head_accuracies: list[float]
    confusion: np.ndarray
    class_names: list[str]
    n_test: int  # images in the test split; `n` of them, the first ones, were scored
    limit: int | None = None  # the `limit` asked for (None: the protocol's count)
    logits: np.ndarray | None = field(default=None, repr=False)  # output logits of the scored images, if kept

    def to_json(self) -> dict[str, Any]:
        """eval.json's fields, apart from the logits (their own file, which the caller writes and names)."""
        return {"ckpt": self.ckpt, "data": self.data, "epoch": self.epoch, "n": self.n, "limit": self.limit,
                "test_accuracy": self.test_accuracy,
                "head_accuracies": dict(zip(self.head_names, self.head_accuracies, strict=True)),
                "confusion": self.confusion.tolist(), "class_names": self.class_names}


def model_from_checkpoint(ckpt: Checkpoint, xp: Any = np) -> NitroNet:
    """Rebuild the network from the checkpoint's own model config and load its parameters."""
    config = ckpt.state.get("model")
    try:
        # The initial draw is overwritten by the stored parameters; any generator does.
        model = build_from_config(config, np.random.default_rng(0), xp)  # type: ignore[arg-type]
    except NitroError as exc:
        raise NitroError(f"{ckpt.path}: its model cannot be rebuilt ({exc})") from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, MemoryError):
        raise NitroError(f"{ckpt.path}: its model description is missing or malformed") from None
    try:
        model.load_state_dict(ckpt.section("param/"))
    except NitroError as exc:
        raise NitroError(f"{ckpt.path}: {exc}") from None
    return model


@dataclass
class EvalJob:
    """A checked evaluation: the checkpoint, its test protocol and the dataset to score it on."""

    ckpt: Checkpoint
    trainer: dict[str, Any]
    name: str
    epoch: int
    normalizer: Normalizer


def check_eval(path: str | Path, data: dict[str, Any] | None = None, *, find_dataset: bool = True) -> EvalJob:
    """Everything that can refuse an evaluation, checked without reading the dataset: the checkpoint, its
    run record, the dataset's shape and presence. `nitro export` runs the same checks on what it copies
    into generated files, without `find_dataset` (it reads no images)."""
    ckpt = load_checkpoint(path)
    state = ckpt.state
    try:
        trainer = validate_train_config(state["config"])["trainer"]
        name = data["name"] if data else state["config"]["data"]["name"]
        epoch = int(state.get("epoch", 0))
        normalizer = Normalizer.from_state_dict(ckpt.section("norm/", strip=True))
        in_shape, num_classes = tuple(state["model"]["in_shape"]), int(state["model"]["num_classes"])
    except (KeyError, TypeError, ValueError, AttributeError, NitroError) as exc:
        raise NitroError(f"{path}: its run record is incomplete or malformed ({exc}); it was not written by "
                         "`nitro train`") from None
    info = DATASETS[name]
    if tuple(info.shape) != in_shape or info.num_classes != num_classes:
        raise NitroError(f"the checkpoint's model takes {'x'.join(map(str, in_shape))} images and "
                         f"{num_classes} classes; {name} has {'x'.join(map(str, info.shape))} and "
                         f"{info.num_classes}: evaluate it on a dataset of the same shape")
    if find_dataset:
        dataset_sizes(name, data.get("root") if data else None)
    return EvalJob(ckpt, trainer, name, epoch, normalizer)


def evaluate_checkpoint(path: str | Path, *, data: dict[str, Any] | None = None, backend: str = "auto",
                        batch_size: int = 256, on_batch: Callable[[int, int], None] | None = None,
                        limit: int | None = None, keep_logits: bool = False) -> EvalReport:
    """Accuracy, per-head accuracies and the confusion matrix of a checkpoint on a test split.

    `data` (a data config: name, root) picks another dataset; by default the checkpoint's own dataset is
    read from the data root (never from a path stored in the file). The checkpoint's normalizer and its
    trainer's test protocol are used, so a last.npz reproduces its run's final test accuracy exactly.
    `limit` scores exactly the first `limit` test images instead (a quick look; see `check_limit`), and
    `keep_logits` keeps the output logits of the scored images in the report.
    `on_batch(images done, images in all)` reports progress.
    """
    job = check_eval(path, data)
    try:
        xp = get_backend(backend)
    except BackendUnavailable as exc:
        raise NitroError(str(exc)) from None
    model = model_from_checkpoint(job.ckpt, xp)
    raw = load_dataset(job.name, data.get("root") if data else None)
    n_test = len(raw.test_y)
    check_limit(limit, job.name, n_test)
    n = scored_test_count(n_test, job.trainer) if limit is None else limit
    x = job.normalizer.apply(raw.test_x[:n])
    result = model.evaluate(x, raw.test_y[:n].astype(np.int64), batch_size, on_batch, keep_logits)
    return EvalReport(ckpt=str(path), data=job.name, epoch=job.epoch, n=result.n,
                      test_accuracy=result.accuracy, head_names=model.head_names,
                      head_accuracies=result.head_accuracies, confusion=result.confusion,
                      class_names=list(raw.class_names), n_test=n_test, limit=limit, logits=result.logits)


def check_limit(limit: int | None, name: str, n_test: int) -> None:
    """Refuse a `limit` past the test split: scoring fewer images than asked would pass unnoticed."""
    if limit is not None and limit > n_test:
        raise NitroError(f"limit={limit} exceeds the {n_test} test images of {name}; choose 1 to {n_test}, "
                         "or limit=null to score the whole test split")

"""The datasets nitro knows: where their files live under the data root, their checksums, their shapes.

One table for readers, `verify_dataset`, `nitro data list/fetch` and the trainer (crop padding, flips), so
that a file name or an MD5 is written exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from nitro_cli.errors import NitroError

DEFAULT_ROOT = Path("~/.cache/nitro/datasets")


@dataclass(frozen=True)
class FileSpec:
    """One expected file, relative to the data root.

    `md5`/`size` describe the uncompressed content (None: not known in advance). When `gz_ok`, the file may
    also be stored gzip-compressed as `path + ".gz"`; the uncompressed file wins when both exist.
    """

    path: str
    md5: str | None
    size: int | None
    split: str  # "train" | "test"
    kind: str  # "images" | "labels" | "batch"
    count: int  # records (images or labels) in the file
    gz_ok: bool = False


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: geometry, classes, augmentation settings, files, how to get them.

    `files` is the primary on-disk layout; `alt_files` an alternative one the readers accept as well
    (CIFAR-10: the binary batches first, the python pickles of torchvision's download second).
    """

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    crop_pad: int
    flip: bool
    files: tuple[FileSpec, ...]
    instructions: str
    source: str
    licence: str
    alt_files: tuple[FileSpec, ...] = field(default=())
    embedded: bool = False

    @property
    def layouts(self) -> list[tuple[FileSpec, ...]]:
        """The accepted layouts, preferred first."""
        return [lay for lay in (self.files, self.alt_files) if lay]


def _idx_files(folder: str, md5s: dict[str, str]) -> tuple[FileSpec, ...]:
    """The four IDX files of a torchvision-style MNIST folder with their uncompressed sizes."""
    sizes = {"train": 60000, "t10k": 10000}
    specs = []
    for prefix, split in (("train", "train"), ("t10k", "test")):
        n = sizes[prefix]
        specs.append(FileSpec(f"{folder}/raw/{prefix}-images-idx3-ubyte", md5s[f"{prefix}-images"],
                              16 + n * 784, split, "images", n, gz_ok=True))
        specs.append(FileSpec(f"{folder}/raw/{prefix}-labels-idx1-ubyte", md5s[f"{prefix}-labels"],
                              8 + n, split, "labels", n, gz_ok=True))
    return tuple(specs)


def _idx_instructions(folder: str, fetch: str, url: str) -> str:
    names = ", ".join(f"{p}-{k}-idx{d}-ubyte[.gz]" for p in ("train", "t10k")
                      for k, d in (("images", 3), ("labels", 1)))
    return (f"run `nitro data fetch {fetch}` (needs torchvision and network), or place {names} "
            f"in <root>/{folder}/raw/ (from {url})")


_CIFAR_BIN_MD5 = {
    "data_batch_1": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
# MD5s of the files in the official cifar-10-python.tar.gz (the ones torchvision checks too).
_CIFAR_PY_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR_RECORDS = 10000
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32


def _cifar_split(batch: str) -> str:
    return "test" if batch == "test_batch" else "train"


MNIST_CLASSES = tuple(str(d) for d in range(10))

DATASETS: dict[str, DatasetInfo] = {
    "mnist_mini": DatasetInfo(
        name="mnist_mini", shape=(1, 28, 28), num_classes=10, class_names=MNIST_CLASSES, crop_pad=2,
        flip=False, files=(), embedded=True,
        instructions="ships with the package (src/nitro_cli/data/embedded/mnist_mini.npz); nothing to fetch",
        source="stratified subset of MNIST (10,000 train / 2,000 test), see data/embedded/README.md",
        licence="CC BY-SA 3.0",
    ),
    "mnist": DatasetInfo(
        name="mnist", shape=(1, 28, 28), num_classes=10, class_names=MNIST_CLASSES, crop_pad=2, flip=False,
        files=_idx_files("MNIST", {
            "train-images": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels": "a25bea736e30d166cdddb491f175f624",
            "t10k-images": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels": "27ae3e4e09519cfbb04c329615203637",
        }),
        instructions=_idx_instructions("MNIST", "mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        source="MNIST (LeCun, Cortes, Burges)", licence="CC BY-SA 3.0",
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist", shape=(1, 28, 28), num_classes=10,
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                     "Bag", "Ankle boot"),
        # The spec turns flips off for MNIST only; FashionMNIST flips like CIFAR-10.
        crop_pad=2, flip=True,
        files=_idx_files("FashionMNIST", {
            "train-images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels": "15d484375f8d13e6eb1aabb0c3f46965",
        }),
        instructions=_idx_instructions("FashionMNIST", "fashion_mnist",
                                       "https://github.com/zalandoresearch/fashion-mnist"),
        source="Fashion-MNIST (Xiao, Rasul, Vollgraf; Zalando Research)", licence="MIT",
    ),
    "cifar10": DatasetInfo(
        name="cifar10", shape=(3, 32, 32), num_classes=10,
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                     "truck"),
        crop_pad=4, flip=True,
        files=tuple(FileSpec(f"cifar-10-batches-bin/{b}.bin", m, CIFAR_RECORDS * CIFAR_RECORD_BYTES,
                             _cifar_split(b), "batch", CIFAR_RECORDS) for b, m in _CIFAR_BIN_MD5.items()),
        alt_files=tuple(FileSpec(f"cifar-10-batches-py/{b}", m, None, _cifar_split(b), "batch", CIFAR_RECORDS)
                        for b, m in _CIFAR_PY_MD5.items()),
        instructions=("run `nitro data fetch cifar10` (needs torchvision and network; writes "
                      "<root>/cifar-10-batches-py/), or unpack cifar-10-binary.tar.gz from "
                      "https://www.cs.toronto.edu/~kriz/cifar.html so that <root>/cifar-10-batches-bin/ "
                      "holds data_batch_1.bin..data_batch_5.bin and test_batch.bin"),
        source="CIFAR-10 (Krizhevsky 2009)", licence="see https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
}


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where datasets live: `root` if given, else $NITRO_DATA, else ~/.cache/nitro/datasets."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get("NITRO_DATA", "")
    if env:
        return Path(env).expanduser()
    return DEFAULT_ROOT.expanduser()


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for `name`; an unknown name is a user error that lists the valid ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise NitroError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}") from None

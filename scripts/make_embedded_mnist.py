"""Build src/nitro_cli/data/embedded/mnist_mini.npz: a stratified, seeded subset of the real MNIST.

10,000 training images (1,000 per class) and 2,000 test images (200 per class), drawn without replacement
with numpy.random.default_rng(SEED) class by class (0..9, train first, then test), kept in their original
order. The npz is written with fixed zip timestamps and deflate level 9, so the same MNIST files and the
same NumPy/zlib give a byte-identical file (its SHA-256 is in data/embedded/README.md).

usage: NITRO_DATA=/path/to/datasets python scripts/make_embedded_mnist.py [--root DIR] [--out FILE] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from nitro_cli.data import load_dataset
from nitro_cli.data.readers import embedded_path
from nitro_cli.errors import NitroError

SEED = 20240711
PER_CLASS = {"train": 1000, "test": 200}
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def select(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `per_class` images of each class, drawn without replacement."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def build(root: str | None) -> bytes:
    """The npz file's bytes (train_x, train_y, test_x, test_y as uint8), deterministic."""
    mnist = load_dataset("mnist", root)  # checks the MD5 of every source file
    rng = np.random.default_rng(SEED)
    tr = select(mnist.train_y, PER_CLASS["train"], rng)
    te = select(mnist.test_y, PER_CLASS["test"], rng)
    arrays = {"train_x": mnist.train_x[tr], "train_y": mnist.train_y[tr],
              "test_x": mnist.test_x[te], "test_y": mnist.test_y[te]}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(arr, dtype=np.uint8), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue(), compresslevel=9)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="data root holding MNIST/raw/ (default: $NITRO_DATA)")
    parser.add_argument("--out", type=Path, default=embedded_path(), help="where to write the npz")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    try:
        data = build(args.root)
    except NitroError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sha = hashlib.sha256(data).hexdigest()
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == data
        print(f"{'identical' if same else 'DIFFERENT'}: rebuilt sha256 {sha}, {args.out}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes), sha256 {sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

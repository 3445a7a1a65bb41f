"""Running exported models next to nitro's own evaluation: ONNX Runtime, a C compiler, test-file writers.

Used by the tests (bit-exactness of every logit) and by scripts/export_bench.py (accuracy and images/s).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Normalizer
from ..nn import NitroNet
from .c_source import DRIVER_FILE, MODEL_SOURCES

# The flags the C export must compile cleanly with (warnings are errors).
STRICT_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def nitro_logits(model: NitroNet, normalizer: Normalizer, images: np.ndarray,
                 batch_size: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    """nitro's own output logits [N, classes] and each head's logits, as int8 (evaluation mode)."""
    outs, heads = [], []
    for start in range(0, len(images), batch_size):
        out, hd = model.predict(normalizer.apply(images[start:start + batch_size]))
        outs.append(out)
        heads.append(hd)
    per_head = [np.concatenate([h[i] for h in heads]) for i in range(len(model.blocks))] if heads else []
    return np.concatenate(outs), per_head


def onnx_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_outputs(session: Any, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Every output of the exported graph for uint8 `images` [N, C, H, W], concatenated over batches."""
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(images), batch_size):
        for name, value in zip(names, session.run(None, {"image": images[start:start + batch_size]}),
                               strict=True):
            parts[name].append(value)
    return {n: np.concatenate(v) for n, v in parts.items()}


def compile_c(src: Path, exe: Path, opt: str = "-O2", cc: str | None = None,
              extra_flags: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Compile main.c and the model's sources with the strict flags (and `extra_flags`, e.g. -D settings of
    the driver or the model); raises CalledProcessError on any warning."""
    compiler = cc or shutil.which("cc") or "gcc"
    sources = [str(src / name) for name in (DRIVER_FILE, *MODEL_SOURCES)]
    res = subprocess.run([compiler, *STRICT_FLAGS, *extra_flags, opt, "-o", str(exe), *sources],
                         capture_output=True, text=True)
    if res.returncode != 0 or res.stderr.strip():
        raise subprocess.CalledProcessError(res.returncode or 1, res.args, res.stdout, res.stderr)
    return res


def write_idx(images: np.ndarray, labels: np.ndarray, folder: Path, stem: str = "test") -> tuple[Path, Path]:
    """IDX files (MNIST format) of single-channel uint8 images [N, 1, H, W] and their labels."""
    n, c, h, w = images.shape
    assert c == 1 and images.dtype == np.uint8
    img, lbl = folder / f"{stem}-images-idx3-ubyte", folder / f"{stem}-labels-idx1-ubyte"
    img.write_bytes(struct.pack(">IIII", 2051, n, h, w) + np.ascontiguousarray(images).tobytes())
    lbl.write_bytes(struct.pack(">II", 2049, n) + np.asarray(labels, dtype=np.uint8).tobytes())
    return img, lbl


def write_cifar(images: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """A CIFAR-10 binary batch: per image one label byte and 3072 bytes of channel planes."""
    n = len(images)
    records = np.empty((n, 1 + images[0].size), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(n, -1)
    path.write_bytes(records.tobytes())
    return path


def run_c_driver(exe: Path, files: list[Path], fmt: str = "idx", limit: int | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Run the compiled driver with --logits: (labels, predictions, logits [N, classes + heads * classes]
    (the output layer's, then each head's), accuracy line)."""
    args = [str(exe), "--logits", *(["--limit", str(limit)] if limit is not None else []), fmt,
            *map(str, files)]
    res = subprocess.run(args, capture_output=True, text=True, check=True)
    lines = res.stdout.splitlines()
    rows = np.array([[int(v) for v in line.split()] for line in lines[:-1]], dtype=np.int64)
    return rows[:, 0], rows[:, 1], rows[:, 2:], lines[-1]

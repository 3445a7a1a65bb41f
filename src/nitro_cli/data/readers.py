"""Dataset readers: MNIST-style IDX files (raw or .gz), CIFAR-10 binary batches and python pickles.

Every reader checks headers, sizes, counts and label ranges and turns any problem into a NitroError that
names the file and says how to get a good copy, so a bad download never becomes a silent bad run.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import pickle
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nitro_cli.data.registry import (
    DatasetInfo,
    FileSpec,
    data_root,
    dataset_info,
)
from nitro_cli.errors import NitroError, name_too_long

try:  # NumPy 2 moved the array reconstructor; genuine CIFAR pickles name the NumPy 1 module.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct

EMBEDDED_FILE = "mnist_mini.npz"
# SHA-256 of data/embedded/mnist_mini.npz as built by scripts/make_embedded_mnist.py (also in its README).
EMBEDDED_SHA256 = "e311e7cb2bc1aee14bb178b83c304e951bd62d5840668cf55e55c8f3405b2e1c"

_READ_ERRORS = (OSError, EOFError, zlib.error)


@dataclass
class RawDataset:
    """A dataset as stored: uint8 images [N, C, H, W] and uint8 labels [N], train and test splits."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class FileStatus:
    """Outcome of checking one expected file: ok, or the problem (missing, truncated, checksum...)."""

    path: Path
    ok: bool
    problem: str | None = None


# --------------------------------------------------------------------------------------------- locating


def _is_file(path: Path) -> bool:
    """Whether `path` is a regular file; False, not an error, for anything else, a name too long included
    (`_obstacle` says what is there)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _locate(root: Path, spec: FileSpec) -> Path | None:
    """The file for `spec` under `root`: the uncompressed one if present, else its .gz, else None."""
    plain = root / spec.path
    if _is_file(plain):
        return plain
    gz = root / (spec.path + ".gz")
    if spec.gz_ok and _is_file(gz):
        return gz
    return None


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return kind
    return "a special file"


def _obstacle(root: Path, rel: str) -> tuple[Path, str] | None:
    """The first thing on the way from the data root to the file `rel` under it that is not what it should
    be (a folder on the way, a regular file at the end), with what it is; None when there is simply nothing
    there (or the file itself).

    `is_file()` is False for a symlink loop, a FIFO, a folder or a name too long alike; calling them all
    `missing` sent users looking for a file that was there, or fetching a dataset they had.
    """
    steps = [root, *(root / p for p in reversed(Path(rel).parents[:-1])), root / rel]
    for i, step in enumerate(steps):
        want = "a regular file" if i == len(steps) - 1 else "a folder"
        try:
            mode = step.stat().st_mode
        except OSError as e:
            if e.errno == errno.ELOOP:
                return step, "is a symlink loop (its symbolic links lead back to themselves)"
            if e.errno == errno.ENAMETOOLONG:
                return step, name_too_long(step)
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                return step, f"cannot be read ({e.strerror})"
            if os.path.islink(step):
                return step, f"is a broken symbolic link (to {os.readlink(step)}, which does not exist)"
            return None
        if _kind(mode) != want:
            return step, f"is {_kind(mode)}, not {want}"
    return None


def _choose_layout(info: DatasetInfo, root: Path) -> tuple[FileSpec, ...]:
    """The first complete layout; else the first partly present one (to report it); else the primary."""
    layouts = info.layouts
    for layout in layouts:
        if all(_locate(root, s) is not None for s in layout):
            return layout
    for layout in layouts:
        if any(_locate(root, s) is not None for s in layout):
            return layout
    return layouts[0]


def _shown(root: Path, spec: FileSpec) -> str:
    return str(root / spec.path) + ("[.gz]" if spec.gz_ok else "")


def _absent_file(root: Path, spec: FileSpec) -> tuple[Path, str]:
    """Where the file for `spec` is not found and why: what stands in its way (see `_obstacle`) or that
    it is missing."""
    for rel in (spec.path, spec.path + ".gz") if spec.gz_ok else (spec.path,):
        found = _obstacle(root, rel)
        if found is not None:
            return found
    return Path(_shown(root, spec)), "missing"


def _missing_error(info: DatasetInfo, root: Path, spec: FileSpec) -> NitroError:
    path, problem = _absent_file(root, spec)
    if problem == "missing":
        return NitroError(f"dataset {info.name!r}: missing file {path} (data root {root}); "
                          f"{info.instructions}")
    if problem.startswith("file name too long"):
        return NitroError(f"dataset {info.name!r}: cannot read its files under the data root: {problem}; "
                          "set data.root (or $NITRO_DATA) to a path with shorter names")
    if path == root:
        return NitroError(f"dataset {info.name!r}: the data root {root} {problem}; point data.root (or "
                          "$NITRO_DATA) at the folder that holds the datasets")
    where = "a dataset file" if path in (root / spec.path, root / (spec.path + ".gz")) else "a folder"
    return NitroError(f"dataset {info.name!r}: {path} {problem}, where {where} belongs (data root {root}); "
                      f"delete it and {info.instructions}")


def _bad_file(info: DatasetInfo, path: Path, problem: str) -> NitroError:
    return NitroError(f"dataset {info.name!r}: file {path} {problem}; delete it and {info.instructions}")


# --------------------------------------------------------------------------------------------- raw bytes


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115


def _read_into(f: BinaryIO, buf: np.ndarray) -> int:
    """Fill `buf` from `f` until it is full or the stream ends; the number of bytes read."""
    view = memoryview(buf).cast("B")
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _file_chunks(path: Path, chunk: int = 1 << 22) -> Iterator[bytes]:
    with _open(path) as f:
        while block := f.read(chunk):
            yield block


def file_digest(path: Path, algorithm: str = "md5") -> tuple[str, int]:
    """Hex digest and length of the (uncompressed, for .gz) content of `path`; raises OSError/EOFError."""
    h = hashlib.new(algorithm)
    size = 0
    for block in _file_chunks(path):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


# --------------------------------------------------------------------------------------------- IDX


def _read_idx(info: DatasetInfo, path: Path, spec: FileSpec) -> np.ndarray:
    """An IDX file as uint8 [count, C, H, W] (images) or [count] (labels), checked header and length."""
    images = spec.kind == "images"
    ndim = 3 if images else 1
    count = spec.count
    want_dims = (count, info.shape[1], info.shape[2]) if images else (count,)
    try:
        with _open(path) as f:
            header = f.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise _bad_file(info, path, f"is truncated ({len(header)} bytes, shorter than an IDX header)")
            magic = int.from_bytes(header[:4], "big")
            if magic != 0x0800 | ndim:
                raise _bad_file(info, path, f"has magic number 0x{magic:08x}, expected 0x{0x0800 | ndim:08x} "
                                            f"(IDX {'images' if images else 'labels'}, unsigned bytes)")
            dims = tuple(int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
            if dims != want_dims:
                raise _bad_file(info, path, f"holds dimensions {dims}, expected {want_dims}")
            n = int(np.prod(dims))
            buf = np.empty(n + 1, dtype=np.uint8)  # one spare byte detects trailing garbage
            got = _read_into(f, buf)
    except _READ_ERRORS as e:
        raise _bad_file(info, path, f"cannot be read ({type(e).__name__}: {e})") from None
    if got < n:
        raise _bad_file(info, path, f"is truncated ({got} of {n} data bytes)")
    if got > n:
        raise _bad_file(info, path, f"is longer than its header says ({n} data bytes expected)")
    data = buf[:n]
    _check_md5(info, path, spec, hashlib.md5(header), data)
    if images:
        return data.reshape(count, 1, info.shape[1], info.shape[2])
    _check_labels(info, path, data)
    return data


def _check_md5(info: DatasetInfo, path: Path, spec: FileSpec, h: Any, data: np.ndarray | bytes) -> None:
    """Compare the content's MD5 with the registry (costs ~0.1 s for MNIST's 47 MB of images)."""
    if spec.md5 is None:
        return
    h.update(data)
    if h.hexdigest() != spec.md5:
        raise _bad_file(info, path, f"fails its checksum (md5 {h.hexdigest()}, expected {spec.md5})")


def _check_labels(info: DatasetInfo, path: Path, labels: np.ndarray) -> None:
    if labels.size and int(labels.max()) >= info.num_classes:
        raise _bad_file(info, path, f"holds label {int(labels.max())}, but {info.name} has "
                                    f"{info.num_classes} classes")


def _load_idx(info: DatasetInfo, root: Path, layout: tuple[FileSpec, ...]) -> RawDataset:
    arrays: dict[tuple[str, str], np.ndarray] = {}
    for spec in layout:
        path = _locate(root, spec)
        if path is None:
            raise _missing_error(info, root, spec)
        arrays[(spec.split, spec.kind)] = _read_idx(info, path, spec)
    return RawDataset(info.name, arrays[("train", "images")], arrays[("train", "labels")],
                      arrays[("test", "images")], arrays[("test", "labels")], info.class_names)


# --------------------------------------------------------------------------------------------- CIFAR-10


def _read_cifar_bin(info: DatasetInfo, path: Path, spec: FileSpec) -> tuple[np.ndarray, np.ndarray]:
    """One binary CIFAR-10 batch: spec.count (10,000) records of a label byte and 3,072 pixel bytes
    (R, G, B planes)."""
    count, record = spec.count, 1 + int(np.prod(info.shape))
    want = count * record
    try:
        size = path.stat().st_size
        if size != want:
            raise _bad_file(info, path, f"has {size} bytes, expected {want} "
                                        f"({count} records of {record} bytes)")
        records = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise _bad_file(info, path, f"cannot be read ({e})") from None
    if records.size != want:
        raise _bad_file(info, path, f"changed while being read ({records.size} of {want} bytes)")
    _check_md5(info, path, spec, hashlib.md5(), records)
    records = records.reshape(count, record)
    labels = records[:, 0].copy()
    _check_labels(info, path, labels)
    return records[:, 1:].reshape(count, *info.shape), labels


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 python batches without running code from the file.

    The genuine batches are Python 2 pickles of a dict holding lists, strings and one uint8 NumPy array;
    the only globals they name are NumPy's array reconstructor, `ndarray` and `dtype`. Every other global
    (os.system, builtins.eval, ...) is refused before it can be called.
    """

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise NitroError(f"refusing to unpickle {module}.{name}: not part of a CIFAR-10 batch") from None


def restricted_loads(data: bytes) -> Any:
    """`pickle.loads` through RestrictedUnpickler, decoding Python 2 strings as latin-1 (as NumPy needs)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _read_cifar_py(info: DatasetInfo, path: Path, spec: FileSpec) -> tuple[np.ndarray, np.ndarray]:
    """One python-pickle CIFAR-10 batch: {'data': uint8 [count, 3072], 'labels': [count ints], ...}."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _bad_file(info, path, f"cannot be read ({e})") from None
    _check_md5(info, path, spec, hashlib.md5(), raw)
    try:
        batch = restricted_loads(raw)
    except NitroError as e:
        raise _bad_file(info, path, f"is not a CIFAR-10 batch ({e})") from None
    except Exception as e:  # any malformed pickle: truncated, wrong opcodes, bad array state
        raise _bad_file(info, path, f"is not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise _bad_file(info, path, f"holds a {type(batch).__name__}, expected a dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    count, pixels = spec.count, int(np.prod(info.shape))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape == (count, pixels)):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _bad_file(info, path, f"has 'data' {got}, expected uint8 ({count}, {pixels})")
    if not (isinstance(labels, list) and len(labels) == count
            and all(type(v) is int and 0 <= v < info.num_classes for v in labels)):
        raise _bad_file(info, path, f"has no list of {count} labels in 0..{info.num_classes - 1}")
    return np.ascontiguousarray(data).reshape(count, *info.shape), np.asarray(labels, np.uint8)


def _load_cifar(info: DatasetInfo, root: Path, layout: tuple[FileSpec, ...]) -> RawDataset:
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for spec in layout:
        path = _locate(root, spec)
        if path is None:
            raise _missing_error(info, root, spec)
        reader = _read_cifar_bin if path.suffix == ".bin" else _read_cifar_py
        parts[spec.split].append(reader(info, path, spec))
    split = {k: (np.concatenate([x for x, _ in v]), np.concatenate([y for _, y in v]))
             for k, v in parts.items()}
    return RawDataset(info.name, *split["train"], *split["test"], info.class_names)


# --------------------------------------------------------------------------------------------- embedded


def embedded_path() -> Path:
    """Path of the embedded MNIST subset inside the installed package."""
    return Path(str(resources.files("nitro_cli.data").joinpath("embedded", EMBEDDED_FILE)))


def _load_embedded(info: DatasetInfo) -> RawDataset:
    path = embedded_path()
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    except (OSError, KeyError, ValueError, zlib.error) as e:
        raise NitroError(f"the embedded dataset {path} is damaged ({e}); reinstall nitro-cli or rebuild it "
                         "with scripts/make_embedded_mnist.py") from None
    return RawDataset(info.name, arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                      info.class_names)


# --------------------------------------------------------------------------------------------- public


def load_dataset(name: str, root: str | None = None) -> RawDataset:
    """Read a dataset from the data root (see `data_root`), checking every file's header and size.

    A missing, truncated or wrong file raises NitroError naming it and saying how to fix it.
    """
    info = dataset_info(name)
    if info.embedded:
        return _load_embedded(info)
    base = data_root(root)
    layout = _choose_layout(info, base)
    if info.name == "cifar10":
        return _load_cifar(info, base, layout)
    return _load_idx(info, base, layout)


def dataset_sizes(name: str, root: str | None = None) -> tuple[int, int]:
    """Training and test images of a dataset, from its file list (nothing read but the embedded subset), so
    that a run can be refused before it starts; a missing file raises the NitroError `load_dataset` would."""
    info = dataset_info(name)
    if info.embedded:
        raw = _load_embedded(info)
        return len(raw.train_y), len(raw.test_y)
    base = data_root(root)
    layout = _choose_layout(info, base)
    for spec in layout:
        if _locate(base, spec) is None:
            raise _missing_error(info, base, spec)
    train, test = (sum(s.count for s in layout if s.split == split and s.kind != "images")
                   for split in ("train", "test"))
    return train, test


def _check_file(info: DatasetInfo, root: Path, spec: FileSpec) -> FileStatus:
    path = _locate(root, spec)
    if path is None:
        absent, problem = _absent_file(root, spec)
        return FileStatus(absent, False, problem)
    try:
        md5, size = file_digest(path, "md5")
    except _READ_ERRORS as e:
        return FileStatus(path, False, f"unreadable ({type(e).__name__}: {e})")
    if spec.size is not None and size != spec.size:
        return FileStatus(path, False, f"wrong size ({size} bytes, expected {spec.size})")
    if spec.md5 is not None and md5 != spec.md5:
        return FileStatus(path, False, f"checksum mismatch (md5 {md5}, expected {spec.md5})")
    return FileStatus(path, True)


def verify_dataset(name: str, root: str | None = None) -> list[FileStatus]:
    """Check each expected file of the layout in use by size and MD5 of its (uncompressed) content.

    For CIFAR-10 the binary layout is checked when it is complete or partly present, else the python one.
    The embedded subset is checked against its SHA-256.
    """
    info = dataset_info(name)
    if info.embedded:
        path = embedded_path()
        try:
            sha, _ = file_digest(path, "sha256")
        except OSError as e:
            return [FileStatus(path, False, f"unreadable ({e})")]
        if sha != EMBEDDED_SHA256:
            return [FileStatus(path, False, f"checksum mismatch (sha256 {sha}, expected {EMBEDDED_SHA256})")]
        return [FileStatus(path, True)]
    base = data_root(root)
    return [_check_file(info, base, spec) for spec in _choose_layout(info, base)]


def dataset_files(name: str, root: str | None = None) -> list[tuple[FileSpec, Path | None]]:
    """The files of the layout in use (as `verify_dataset` picks it), each with its path or None if absent.

    Cheap (no reading): for presence checks and for telling the user where files go.
    """
    info = dataset_info(name)
    base = data_root(root)
    return [(spec, _locate(base, spec)) for spec in (_choose_layout(info, base) if not info.embedded else ())]

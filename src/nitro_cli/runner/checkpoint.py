"""Checkpoint files: `.npz` archives with a format version and a SHA-256 manifest, written atomically.

Why this shape: the reference stored pickles, and loading one runs arbitrary code. Here every entry is a
plain integer or text array read with `allow_pickle=False`; the manifest catches bit rot and partial
writes; the temp-file + fsync + rename dance means a crash at any moment leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NitroError, os_error_text

FORMAT = "nitro-d-checkpoint"
VERSION = 1
FORMAT_KEY = "meta/format"
VERSION_KEY = "meta/version"
STATE_KEY = "meta/state"
MANIFEST_KEY = "meta/manifest"
_RESERVED = (FORMAT_KEY, VERSION_KEY, STATE_KEY, MANIFEST_KEY)
_ALLOWED_KINDS = "iub"  # integer, unsigned and bool arrays; text only in the meta entries
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@dataclass
class Checkpoint:
    """What a checkpoint holds: named integer arrays and a JSON-able state dict."""

    arrays: dict[str, np.ndarray]
    state: dict[str, Any]
    path: Path | None = None

    def section(self, prefix: str, strip: bool = False) -> dict[str, np.ndarray]:
        """The arrays under `prefix` (e.g. "param/" for a model's state_dict, "norm/" for the normalizer)."""
        return {(k[len(prefix):] if strip else k): v for k, v in self.arrays.items() if k.startswith(prefix)}


def _digest(key: str, a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{key}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write through `write(fileobj)` to a temp file beside `path`, fsync it, then rename it over `path`.

    On any error the temp file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs should be like any other file
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically replace a small text file (summary.json, metrics.csv on resume)."""
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def save_checkpoint(path: Path, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
    """Write `arrays` (integer arrays) and `state` (JSON-able) atomically to `path` with a manifest."""
    entries: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if key in _RESERVED or key.startswith("meta/"):
            raise ValueError(f"checkpoint key {key!r} is reserved")
        a = np.asarray(value)
        if a.dtype.kind not in _ALLOWED_KINDS:
            raise ValueError(f"checkpoint array {key!r} has dtype {a.dtype}; only integer arrays are stored")
        entries[key] = a
    entries[FORMAT_KEY] = np.array(FORMAT)
    entries[VERSION_KEY] = np.array(VERSION, dtype=np.int64)
    entries[STATE_KEY] = np.array(json.dumps(state, sort_keys=True, allow_nan=False))
    manifest = {"algorithm": "sha256", "entries": {k: _digest(k, a) for k, a in sorted(entries.items())}}
    entries[MANIFEST_KEY] = np.array(json.dumps(manifest, sort_keys=True))
    buf = io.BytesIO()
    np.savez(buf, **entries)
    atomic_write_bytes(Path(path), lambda fh: fh.write(buf.getbuffer()))


def _refuse(path: Path, why: str) -> NitroError:
    return NitroError(f"{path} is not a usable nitro checkpoint: {why}. Pass a checkpoints/last.npz or "
                      "best.npz written by `nitro train` (a damaged file cannot be repaired: use the other "
                      "checkpoint of the run or train again)")


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint; any problem (missing, truncated, corrupt, foreign, pickled, tampered)
    raises NitroError with a one-line message. Nothing in the file is ever unpickled or executed."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NitroError(f"checkpoint {path} does not exist; pass the path of a checkpoints/last.npz or "
                         "best.npz written by `nitro train`") from None
    except OSError as exc:  # a symlink loop, a name too long: not "does not exist", nor a traceback
        raise NitroError(f"checkpoint: {os_error_text(exc)}; pass the path of a checkpoints/last.npz or "
                         "best.npz written by `nitro train`") from None
    if not stat.S_ISREG(mode):
        raise NitroError(f"checkpoint {path} is not a file; pass the path of a checkpoints/*.npz file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise NitroError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if magic != b"PK\x03\x04":
        raise _refuse(path, "it is not an .npz archive (a zip file)" if magic else "it is empty")
    raw: dict[str, np.ndarray] = {}
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise _refuse(path, "it is a single .npy array, not an .npz archive")
        with archive:
            for key in archive.files:
                raw[key] = archive[key]
    except NitroError:
        raise
    except ValueError as exc:
        why = str(exc)
        if "pickle" in why.lower() or "object arrays" in why.lower():
            why = "it holds Python objects (pickle), which are never loaded"
        raise _refuse(path, why) from None
    except Exception as exc:  # zip, zlib, header and size errors of a damaged or hostile file
        raise _refuse(path, f"unreadable archive ({exc.__class__.__name__}: {exc}); the file is truncated "
                      "or corrupt") from None

    if FORMAT_KEY not in raw or raw[FORMAT_KEY].dtype.kind != "U" or str(raw[FORMAT_KEY]) != FORMAT:
        raise _refuse(path, "it is a foreign .npz archive (no nitro format marker)")
    try:
        version = int(raw[VERSION_KEY])
    except (KeyError, TypeError, ValueError):
        raise _refuse(path, "its format version is missing") from None
    if version != VERSION:
        raise _refuse(path, f"format version {version} is not supported (this nitro reads version {VERSION})")
    try:
        manifest = json.loads(str(raw[MANIFEST_KEY]))
        expected = manifest["entries"]
        if manifest.get("algorithm") != "sha256" or not isinstance(expected, dict):
            raise ValueError("bad manifest")
    except (KeyError, TypeError, ValueError):
        raise _refuse(path, "its SHA-256 manifest is missing or unreadable") from None
    present = set(raw) - {MANIFEST_KEY}
    if set(expected) != present:
        diff = sorted(set(expected) ^ present)
        raise _refuse(path, f"entries do not match its manifest ({', '.join(diff[:3])}); it was altered")
    for key in sorted(present):
        if _digest(key, raw[key]) != expected[key]:
            raise _refuse(path, f"entry {key} fails its SHA-256 check; the file is corrupt or was altered")
    for key, a in raw.items():
        if key not in _RESERVED and a.dtype.kind not in _ALLOWED_KINDS:
            raise _refuse(path, f"entry {key} has dtype {a.dtype}, not an integer array")
    try:
        state = json.loads(str(raw[STATE_KEY]))
        if not isinstance(state, dict):
            raise ValueError("not an object")
    except (KeyError, ValueError):
        raise _refuse(path, "its state record is missing or unreadable") from None
    arrays = {k: v for k, v in raw.items() if k not in _RESERVED}
    return Checkpoint(arrays=arrays, state=state, path=path)

"""Checkpoint files on plain dicts of arrays: round trip, atomic writes, every kind of bad file refused."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import pickled_checkpoint
from nitro_cli.errors import NitroError
from nitro_cli.runner import checkpoint as ck
from nitro_cli.runner.checkpoint import load_checkpoint, save_checkpoint

ARRAYS = {"param/block1/weight": np.arange(-60, 60, dtype=np.int32).reshape(10, 12),
          "norm/mean": np.array([3], dtype=np.int64), "flags": np.array([True, False])}
STATE = {"epoch": 3, "rng": {"init": json.dumps({"state": 1})}, "metrics": [[1, 0.5, None]]}


def test_round_trip_keeps_arrays_and_state_exactly(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.npz", ARRAYS, STATE)
    ckpt = load_checkpoint(tmp_path / "c.npz")
    assert ckpt.state == STATE
    assert set(ckpt.arrays) == set(ARRAYS)
    for k, a in ARRAYS.items():
        assert ckpt.arrays[k].dtype == a.dtype and np.array_equal(ckpt.arrays[k], a)
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temp file left behind


def test_float_and_object_arrays_are_not_written(tmp_path: Path) -> None:
    for bad in (np.zeros(3), np.array([object()], dtype=object)):
        with pytest.raises(ValueError, match="only integer arrays"):
            save_checkpoint(tmp_path / "c.npz", {"x": bad}, {})
    assert not (tmp_path / "c.npz").exists()


def test_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.npz"
    save_checkpoint(path, ARRAYS, STATE)
    before = path.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, ARRAYS, {**STATE, "epoch": 4})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "c.npz"
    save_checkpoint(path, ARRAYS, STATE)
    return path


def _refused(path: Path, match: str) -> str:
    with pytest.raises(NitroError, match=match) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = path.read_bytes()
    for keep in (len(data) // 2, 100, 10):
        path.write_bytes(data[:keep])
        _refused(path, "not a usable nitro checkpoint")
    path.write_bytes(b"")
    _refused(path, "empty")


def test_every_flipped_byte_in_the_arrays_is_caught(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    raw = bytes(ARRAYS["param/block1/weight"].tobytes())
    start = bytes(data).index(raw)
    for offset in (0, len(raw) // 2, len(raw) - 1):
        bad = bytearray(data)
        bad[start + offset] ^= 0x01
        path.write_bytes(bytes(bad))
        _refused(path, "corrupt|SHA-256|CRC")


def test_tampered_array_with_stale_manifest_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    entries["param/block1/weight"] = entries["param/block1/weight"] + 1
    np.savez(path, **entries)
    _refused(path, "fails its SHA-256 check")
    del entries["param/block1/weight"]
    np.savez(path, **entries)
    _refused(path, "do not match its manifest")


def test_foreign_npz_text_and_npy_files_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "foreign.npz", weights=np.ones(3, dtype=np.int32))
    _refused(tmp_path / "foreign.npz", "foreign")
    (tmp_path / "t.npz").write_text("just some text\n")
    _refused(tmp_path / "t.npz", "not an .npz archive")
    np.save(tmp_path / "a.npy", np.ones(3, dtype=np.int32))
    _refused(tmp_path / "a.npy", "not an .npz archive")
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as zf:
        zf.writestr("readme.txt", "a zip, not an npz")
    _refused(tmp_path / "z.npz", "not a usable")
    with pytest.raises(NitroError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")
    with pytest.raises(NitroError, match="not a file"):
        load_checkpoint(tmp_path)


def test_pickled_entry_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    base = _saved(tmp_path)
    for b in (None, base):
        path = pickled_checkpoint(tmp_path / "evil.npz", marker, b)
        _refused(path, "pickle")
        assert not marker.exists()
    # Control: the file really would run code if it were unpickled.
    with np.load(path, allow_pickle=True) as z:
        z["param/evil"]
    assert marker.exists()


def test_unsupported_version_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    entries[ck.VERSION_KEY] = np.array(99, dtype=np.int64)
    np.savez(path, **entries)
    _refused(path, "version 99")


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~ck._UMASK
    assert os.access(path, os.R_OK)

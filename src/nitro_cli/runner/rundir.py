"""One writer per run folder: an exclusive lock, and the run statuses a folder can be left in.

Why a lock: two commands writing into one folder (the same default folder, or the same hydra.run.dir) would
interleave their metrics and overwrite each other's checkpoints while both report success. The lock is an
flock on `<folder>/.lock`, so the kernel releases it when its process dies, however it dies; the file holds
the holder's PID and host only to name it in the refusal. A lock left by a dead process is taken over.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path

from ..errors import NitroError

LOCK_NAME = ".lock"
# Statuses of summary.json. `interrupted` (Ctrl-C, SIGTERM) is resumable; `failed` needs a fix first.
RUNNING, COMPLETED, INTERRUPTED, FAILED = "running", "completed", "interrupted", "failed"

_HELD: dict[Path, int] = {}  # folder -> open descriptor of its lock file, for this process


def _describe_holder(lock: Path) -> str:
    try:
        pid, _, host = lock.read_text().strip().partition(" ")
    except OSError:
        return "another process"
    return f"process {pid} on {host}" if pid else "another process"


def lock_holder(folder: Path) -> str | None:
    """Who holds `folder`'s lock ("process 123 on host"), or None when nobody does (or this process does)."""
    folder = Path(folder).resolve()
    lock = folder / LOCK_NAME
    if folder in _HELD or not lock.is_file():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe_holder(lock)
    finally:
        os.close(fd)  # also drops the shared lock taken just to test
    return None


def busy_error(folder: Path, holder: str) -> NitroError:
    return NitroError(f"{folder} is in use by {holder} (lock {Path(folder) / LOCK_NAME}); wait for it to "
                      "finish, or write to another folder (hydra.run.dir=... / hydra.sweep.dir=...)")


def lock_folder(folder: Path) -> Path:
    """Create `folder` and take its lock for the rest of this process (a no-op if this process holds it).

    Raises NitroError naming the holder when another live process has it, or when the folder cannot be
    created. The lock is released at exit, or earlier with `unlock_folder`.
    """
    folder = Path(folder).resolve()
    if folder in _HELD:
        return folder
    lock = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise busy_error(folder, _describe_holder(lock)) from None
            # The holder we waited on may have removed the file meanwhile: lock the file that is there now.
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    except OSError as exc:
        raise NitroError(f"cannot create the output folder {folder}: {exc.strerror or exc}; choose a "
                         "writable folder (hydra.run.dir=... / hydra.sweep.dir=...)") from None
    _HELD[folder] = fd
    return folder


def unlock_folder(folder: Path) -> None:
    """Release this process's lock on `folder` and remove the lock file."""
    fd = _HELD.pop(Path(folder).resolve(), None)
    if fd is not None:
        with contextlib.suppress(OSError):  # removed while still held, so nobody can be waiting on this file
            os.unlink(Path(folder).resolve() / LOCK_NAME)
        os.close(fd)


@atexit.register
def _unlock_all() -> None:
    for folder in list(_HELD):
        unlock_folder(folder)


def read_status(folder: Path) -> str | None:
    """The status in `folder`/summary.json, or None without a readable one."""
    try:
        summary = json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary.get("status") if isinstance(summary, dict) else None

"""Jobs that run in a sweep's worker processes stop, and their workers exit, once the sweep's process is gone.

Why: joblib's loky workers outlive a sweep process killed with SIGKILL. They finish the jobs already queued,
then block for good sending results that nobody reads, and keep loky's resource trackers alive with them.
A worker that multiprocessing started knows its parent's PID; a daemon thread compares it with getppid()
(the kernel gives an orphan another parent). Once the parent is gone, the job in progress is stopped as
SIGTERM stops it (a training run saves checkpoints/last.npz and records itself as interrupted, so that the
sweep continues with resume=auto), no queued job starts, and the worker exits. Jobs that Hydra's basic
launcher runs in the sweep's own process, or that submitit starts as commands, are not watched.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

POLL_SECONDS = 1.0
EXIT_CODE = 128 + signal.SIGTERM  # as if the worker had been sent SIGTERM

_job_running = threading.Event()
_orphaned = threading.Event()
_watched_in: int | None = None  # the process whose watcher thread runs (a forked child has none)


@contextmanager
def stop_when_orphaned() -> Iterator[None]:
    """Run one job; in a worker process that multiprocessing started, stop it when the parent is gone."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        yield
        return
    _start_watcher(parent.pid)
    if _orphaned.is_set():  # a job queued before the sweep's process died: nobody waits for it
        _exit()
    _job_running.set()
    try:
        yield
    finally:
        _job_running.clear()


def _start_watcher(parent_pid: int) -> None:
    global _watched_in
    if _watched_in != os.getpid():
        _watched_in = os.getpid()
        threading.Thread(target=_watch, args=(parent_pid,), name="nitro-parent-watch", daemon=True).start()


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    _orphaned.set()
    print(f"nitro: the sweep's process {parent_pid} is gone; worker {os.getpid()} stops its job and exits",
          file=sys.stderr, flush=True)
    asked = False
    while _job_running.is_set():
        # SIGTERM only once the job handles it (a training run's clean stop); the default action would end
        # the process in the middle of writing its outputs.
        if not asked and callable(signal.getsignal(signal.SIGTERM)):
            os.kill(os.getpid(), signal.SIGTERM)
            asked = True
        time.sleep(0.1)
    _exit()


def _exit() -> None:
    """End the worker at once: its main thread may be blocked sending a result to the dead parent."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_CODE)

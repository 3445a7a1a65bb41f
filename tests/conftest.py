"""Shared fixtures: run the real `nitro` command in subprocesses, with tiny budgets, writing into tmp_path."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

NITRO = Path(sys.executable).parent / "nitro"
# A run small enough for a test (a second or two): one hidden block of 32 on the embedded MNIST subset.
TINY = ["model.hidden=[32]", "trainer.max_epochs=1", "engine=numpy"]


def nitro_cmd() -> list[str]:
    """The installed console script, or the module when the venv has no script (e.g. not installed)."""
    return [str(NITRO)] if NITRO.exists() else [sys.executable, "-m", "nitro_cli.cli"]


def nitro_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "160"
    return env


def absolute_nitro_data() -> None:
    """Make a relative $NITRO_DATA (e.g. ../shared/datasets, from the repository root) absolute, for the
    `nitro` subprocesses, which run in other folders."""
    if os.environ.get("NITRO_DATA"):
        os.environ["NITRO_DATA"] = os.path.abspath(os.path.expanduser(os.environ["NITRO_DATA"]))


absolute_nitro_data()


def real_data_root(*rel: str) -> Path:
    """$NITRO_DATA when it holds the given files (raw or .gz), else skip the test with the reason."""
    env = os.environ.get("NITRO_DATA")
    if not env:
        pytest.skip("NITRO_DATA is not set (run the tests with NITRO_DATA=../shared/datasets or wherever "
                    "`nitro data list` finds the datasets)")
    root = Path(env)
    for r in rel:
        if not ((root / r).is_file() or (root / (r + ".gz")).is_file()):
            pytest.skip(f"{root / r} is absent")
    return root


@pytest.fixture
def nitro(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`nitro(*args, timeout=...)` runs the real command in tmp_path and returns the finished process."""

    def run(*args: str, timeout: float = 180, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*nitro_cmd(), *args], capture_output=True, text=True, cwd=tmp_path,
                              env=nitro_env(), timeout=timeout, **kw)  # type: ignore[call-overload]

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny training run (2 epochs), shared by the tests that only read its outputs."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    res = subprocess.run([*nitro_cmd(), "train", *TINY, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"],
                         capture_output=True, text=True, env=nitro_env(), timeout=180,
                         cwd=run_dir.parent)
    assert res.returncode == 0, res.stderr
    return run_dir


@pytest.fixture
def tiny_ckpt(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run's last.npz that a test may damage."""
    dst = tmp_path / "last.npz"
    shutil.copyfile(tiny_run / "checkpoints" / "last.npz", dst)
    return dst


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by relative path: equal before and after means untouched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def params(npz: Path) -> dict[str, np.ndarray]:
    """The parameter arrays of a checkpoint."""
    with np.load(npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith("param/")}


class _Boom:
    """Unpickling this touches a marker file: the test proves that never happens."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (open, (self.marker, "w"))


def pickled_checkpoint(path: Path, marker: Path, base: Path | None = None) -> Path:
    """A checkpoint-like npz (optionally all entries of `base`) plus an object array that would run code."""
    entries: dict[str, np.ndarray] = {}
    if base is not None:
        with np.load(base, allow_pickle=False) as z:
            entries = {k: z[k] for k in z.files}
    obj = np.empty(1, dtype=object)
    obj[0] = _Boom(str(marker))
    buf = io.BytesIO()
    np.savez(buf, **entries, **{"param/evil": obj})
    path.write_bytes(buf.getvalue())
    return path


@contextmanager
def lock_held_elsewhere(folder: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding `folder`'s run lock; SIGKILLed on exit (no clean-up: its lock file stays)."""
    code = (f"from nitro_cli.runner.rundir import lock_folder; import time; lock_folder({str(folder)!r}); "
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()

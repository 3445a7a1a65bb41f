"""Trackers that mirror a run into TensorBoard or MLflow. metrics.csv and summary.json stay the record.

Why a tracker may fail alone: it is a view next to the record, so one that fails (a server out of reach, a
full disk, a bad URI, a package missing on a cluster node) logs one warning and is off for the rest of the
session; training goes on. Their libraries are imported only when a run selects them (startup time).

Why `tracking.json` in the run folder: it says where each tracker logged (MLflow's run id, TensorBoard's
folder and how many epochs it holds), so that a run continued after SIGTERM or a crash goes on in the same
MLflow run and TensorBoard folder, each epoch logged once at the step of an uninterrupted run (step = epoch).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import NitroError

STATE_FILE = "tracking.json"
# What each tracker imports; `pip install 'nitro-cli[tracking]'` brings them all.
PACKAGES = {"tensorboard": ("tensorboardX",), "mlflow": ("mlflow", "sqlalchemy", "alembic")}
# summary.json's numbers that a completed run logs as summary/<key>, at the step of its last epoch.
SUMMARY_METRICS = ("test_accuracy", "best_test_accuracy", "best_epoch", "val_accuracy", "epochs_run",
                   "wall_seconds", "samples_per_s")


def check_loggers(loggers: Mapping[str, Any]) -> None:
    """Refuse, before a run starts, loggers whose packages are not installed here."""
    for name in loggers:
        missing = [p for p in PACKAGES.get(name, ()) if importlib.util.find_spec(p) is None]
        if missing:
            raise NitroError(f"logger {name} needs {', '.join(missing)}, not installed in this Python: "
                             f"pip install 'nitro-cli[tracking]' (or leave {name} out of logger=)")


@dataclass(frozen=True)
class Place:
    """Where a run sits: its folder and, for a job of a sweep (-m), the sweep's folder. A sweep is one view:
    its jobs log into the sweep's MLflow store and side by side under its TensorBoard folder."""

    run_dir: Path
    sweep_dir: Path | None = None

    @property
    def job(self) -> str | None:
        """The job's folder relative to its sweep's ("3"), None for a run of its own."""
        if self.sweep_dir is None:
            return None
        try:
            return self.run_dir.relative_to(self.sweep_dir).as_posix()
        except ValueError:
            return self.run_dir.name

    @property
    def root(self) -> Path:
        """The folder that holds the default stores: the sweep's, else the run's."""
        return self.sweep_dir or self.run_dir

    @property
    def name(self) -> str:
        """The run's name in a tracker: its folder's, or `<sweep folder>/<job>`."""
        return self.run_dir.name if self.sweep_dir is None else f"{self.sweep_dir.name}/{self.job}"


def epoch_metrics(header: list[str], row: list[Any]) -> dict[str, float]:
    """A metrics.csv row as tracker metrics named by its columns; empty cells (no val split) left out."""
    return {k: float(v) for k, v in zip(header, row, strict=True) if k != "epoch" and v not in (None, "")}


def run_tags(summary: Mapping[str, Any], place: Place) -> dict[str, str]:
    """What a tracker can filter and group runs by."""
    tags = {k: str(summary[k]) for k in ("experiment", "seed", "group", "trainer")}
    tags["compat"] = str(summary["compat"]["name"])
    tags["nitro_commit"] = nitro_commit()
    tags["run_dir"] = str(place.run_dir)
    if place.sweep_dir is not None:
        tags["sweep"], tags["job"] = str(place.sweep_dir), str(place.job)
    return tags


def nitro_commit() -> str:
    """`git describe` of the nitro-cli checkout this code runs from, else the package version."""
    source = Path(__file__).resolve().parents[1]
    try:
        top = subprocess.run(["git", "-C", str(source), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() / "src" / "nitro_cli" != source:
            return __version__  # installed from a wheel (maybe inside another repository)
        described = subprocess.run(["git", "-C", str(source), "describe", "--tags", "--always", "--dirty"],
                                   capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return __version__
    return (described.returncode == 0 and described.stdout.strip()) or __version__


class Tracker(ABC):
    """One tracker of a run."""

    name = ""

    @abstractmethod
    def open(self, previous: Mapping[str, Any] | None, hparams: Mapping[str, Any], tags: Mapping[str, str],
             epochs_done: int) -> int:
        """Start a record, or continue the one `previous` (its `state()` of an earlier session) names;
        returns how many of the run's `epochs_done` epochs it already holds."""

    @abstractmethod
    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Log one epoch's metrics at step = epoch."""

    @abstractmethod
    def finish(self, summary: Mapping[str, Any]) -> None:
        """Record how the session ended (and a completed run's summary), then release the tracker."""

    @abstractmethod
    def close(self) -> None:
        """Release what the tracker holds, after a failure (must not raise)."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """What a later session of the run needs to continue this record (kept in tracking.json)."""


def _make(name: str, settings: Mapping[str, Any], place: Place) -> Tracker:
    if name == "tensorboard":
        from .tensorboard import TensorBoardTracker

        return TensorBoardTracker(settings, place)
    from .mlflow import MlflowTracker

    return MlflowTracker(settings, place)


class Trackers:
    """The trackers a run's `logger` config selects, each failing alone with one warning.

    The runner calls `start` once its state is restored (with the epochs done so far, which a tracker that
    lacks them catches up on), `log_epoch` after each epoch's row is in metrics.csv, and `finish` at the end.
    `save_text(path, text)` writes tracking.json (atomically).
    """

    def __init__(self, loggers: Mapping[str, Mapping[str, Any]], place: Place, log: logging.Logger,
                 save_text: Callable[[Path, str], None]) -> None:
        self.loggers = {k: v for k, v in loggers.items() if k != "csv"}  # csv: the record itself
        self.place, self.log, self.save_text = place, log, save_text
        self.active: list[Tracker] = []
        self.header: list[str] = []
        self.state_failed = False

    def start(self, header: list[str], rows: list[list[Any]], hparams: Mapping[str, Any],
              summary: Mapping[str, Any]) -> None:
        """Open each tracker (continuing its record from tracking.json) and log the epochs it lacks."""
        if not self.loggers:
            return
        self.header = header
        previous = self._read_state()
        tags = run_tags(summary, self.place)
        for name, settings in self.loggers.items():
            tracker: Tracker | None = None
            try:
                tracker = _make(name, settings, self.place)
                held = tracker.open(previous.get(name), hparams, tags, len(rows))
                for row in rows[held:]:
                    tracker.log_epoch(int(row[0]), epoch_metrics(header, row))
            except Exception as exc:
                self._failed(name, tracker, exc)
                continue
            self.active.append(tracker)
        self._save_state()

    def log_epoch(self, row: list[Any]) -> None:
        """One metrics.csv row and nothing else: an epoch caught up after a kill reads like a live one."""
        if not self.active:
            return
        metrics = epoch_metrics(self.header, row)
        for tracker in list(self.active):
            self._call(tracker, tracker.log_epoch, int(row[0]), metrics)
        self._save_state()

    def finish(self, summary: Mapping[str, Any]) -> None:
        if not self.active:
            return
        for tracker in list(self.active):
            self._call(tracker, tracker.finish, summary)
        self._save_state()
        self.active = []

    def _call(self, tracker: Tracker, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception as exc:
            self.active.remove(tracker)
            self._failed(tracker.name, tracker, exc)

    def _failed(self, name: str, tracker: Tracker | None, exc: Exception) -> None:
        if tracker is not None:
            tracker.close()
        what = " ".join(f"{exc.__class__.__name__}: {exc}".split())
        self.log.warning(f"warning: logger {name} failed ({what[:500]}); it is off for the rest of this "
                         "run, training goes on and metrics.csv stays the record")

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.place.run_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self) -> None:
        state = {**self._read_state(), **{t.name: t.state() for t in self.active}}
        try:
            self.save_text(self.place.run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")
        except Exception as exc:
            if not self.state_failed:
                self.state_failed = True
                self.log.warning(f"warning: cannot write {STATE_FILE} ({exc}); the trackers go on, but a "
                                 "resumed run would start new tracker records")

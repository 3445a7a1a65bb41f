"""Finding training runs on disk and reading what they wrote (summary.json, metrics.csv).

A run dir is a folder holding `.hydra/config.yaml` whose config has a `trainer` key: a single training run
or one job of a multirun. Other Hydra run dirs (reports, evaluations, data commands) are not runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Folders inside a run dir that never hold other runs; skipping them keeps the walk cheap.
_SKIP_DIRS = {".hydra", "checkpoints", "__pycache__", ".git", ".venv", "node_modules"}


@dataclass
class Run:
    """One training run as found on disk. Only runs with status "completed" are averaged."""

    path: Path
    # "completed" | "interrupted" (resumable) | "failed" | "running" | "missing summary" | "unreadable"
    status: str
    error: str | None = None
    experiment: str = "?"
    trainer: str = "?"
    group: str = "?"
    seed: int | None = None
    model: str = "?"
    data: str = "?"
    test_accuracy: float | None = None
    best_test_accuracy: float | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    max_epochs: int | None = None
    wall_seconds: float | None = None
    # the config it ran with (.hydra/config.yaml), and when its summary.json was last written
    config: dict[str, Any] = field(default_factory=dict)
    finished_at: float = 0.0
    # per-epoch test accuracy from metrics.csv: epoch -> fraction
    test_acc_per_epoch: dict[int, float] = field(default_factory=dict)
    # problems that do not stop the run from being averaged (e.g. an unreadable metrics.csv)
    notes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def find_run_dirs(roots: Iterable[Path]) -> list[Path]:
    """All run dirs under `roots` (a root may itself be one), sorted, without duplicates.

    No folder is skipped for where it lies: a report's output folder may be the folder that holds the runs
    (`runs=X out=X`), and the report's own files and Hydra dir are not runs by their content.
    """
    found: set[Path] = set()
    for root in roots:
        root = root.resolve()
        if not root.is_dir():
            continue
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            if _is_training_run(here):
                found.add(here)
                dirnames.clear()  # a run's own folders hold no further runs
                continue
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    return sorted(found)


def _is_training_run(folder: Path) -> bool:
    cfg_file = folder / ".hydra" / "config.yaml"
    if not cfg_file.is_file():
        return False
    cfg = _load_config(cfg_file)
    # An unreadable config is still reported (as broken) so that the user sees it.
    return cfg is None or "trainer" in cfg


def _load_config(cfg_file: Path) -> dict[str, Any] | None:
    try:
        cfg = yaml.safe_load(cfg_file.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return cfg if isinstance(cfg, dict) else None


def read_run(path: Path) -> Run:
    """Read one run dir. Never raises for a broken run: the problem goes into `status` and `error`."""
    cfg = _load_config(path / ".hydra" / "config.yaml")
    if cfg is None:
        return Run(path=path, status="unreadable", error="cannot parse .hydra/config.yaml")
    run = Run(path=path, status="missing summary", error="no summary.json (run never started or was killed)")
    _fill_from_config(run, cfg)

    summary_file = path / "summary.json"
    if summary_file.is_file():
        try:
            run.finished_at = summary_file.stat().st_mtime
            summary = json.loads(summary_file.read_text())
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            run.status, run.error = "unreadable", f"summary.json: {exc}"
            return run
        _fill_from_summary(run, summary)

    rows: list[int] | None = None
    if (path / "metrics.csv").is_file():
        try:
            rows, run.test_acc_per_epoch = read_metrics(path / "metrics.csv")
        except (OSError, ValueError, csv.Error) as exc:
            run.notes.append(f"metrics.csv unreadable, left out of the per-epoch plot: {exc}")
            return run
    _check_metrics_rows(run, rows)
    return run


def _check_metrics_rows(run: Run, epochs: list[int] | None) -> None:
    """A note when metrics.csv (None: absent) does not hold one row per epoch that summary.json says ran:
    a truncated or edited file would otherwise pass as a shorter curve. A running run's summary may lag
    its metrics by an epoch, so it is not checked."""
    ran = run.epochs_run
    if not isinstance(ran, int) or run.status == "running" or epochs == list(range(1, ran + 1)):
        return
    if epochs is None:
        if ran > 0:
            run.notes.append(f"no metrics.csv but summary.json says {ran} epochs ran; "
                             "left out of the per-epoch table and plot")
        return
    run.notes.append(f"metrics.csv has {len(epochs)} epoch row(s) but summary.json says {ran} epochs ran "
                     "(truncated or edited?); the per-epoch table and plot show only its rows")


def _fill_from_config(run: Run, cfg: dict[str, Any]) -> None:
    trainer = cfg.get("trainer")
    run.config = cfg
    run.experiment = str(cfg.get("experiment", run.experiment))
    if isinstance(trainer, dict):
        run.trainer = str(trainer.get("name", run.trainer))
        if isinstance(trainer.get("max_epochs"), int):
            run.max_epochs = trainer["max_epochs"]
    if isinstance(cfg.get("seed"), int):
        run.seed = cfg["seed"]
    for key in ("model", "data"):
        sub = cfg.get(key)
        if isinstance(sub, dict) and "name" in sub:
            setattr(run, key, str(sub["name"]))
        elif isinstance(sub, str):
            setattr(run, key, sub)


def _fill_from_summary(run: Run, s: dict[str, Any]) -> None:
    for key in ("experiment", "trainer", "group", "model", "data"):
        if s.get(key) is not None:
            setattr(run, key, str(s[key]))
    if isinstance(s.get("seed"), int):
        run.seed = s["seed"]
    run.status = str(s.get("status", "unknown"))
    run.error = str(s["error"]) if s.get("error") else None
    run.best_epoch = s.get("best_epoch")
    run.epochs_run = s.get("epochs_run")
    run.wall_seconds = s.get("wall_seconds")
    if not run.completed:
        return
    try:
        run.test_accuracy = _fraction(s["test_accuracy"])
        run.best_test_accuracy = _fraction(s["best_test_accuracy"])
        if "group" not in s:
            raise KeyError("group")
    except (KeyError, TypeError, ValueError) as exc:
        run.status, run.error = "unreadable", f"summary.json: completed but bad or missing field {exc}"


def _fraction(value: Any) -> float:
    x = float(value)
    if not (math.isfinite(x) and 0.0 <= x <= 1.0):
        raise ValueError(f"accuracy {value!r} is not a fraction in [0, 1]")
    return x


def read_metrics(metrics_csv: Path) -> tuple[list[int], dict[int, float]]:
    """The epoch of every row of metrics.csv, in file order, and the test accuracy per epoch (rows with an
    empty test_acc are left out of the accuracies)."""
    epochs: list[int] = []
    acc: dict[int, float] = {}
    with metrics_csv.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"epoch", "test_acc"} <= set(reader.fieldnames):
            raise ValueError("header lacks epoch/test_acc columns")
        for row in reader:
            if row.get("epoch") in (None, ""):
                continue
            epochs.append(int(row["epoch"]))
            if row.get("test_acc") not in (None, ""):
                acc[epochs[-1]] = _fraction(row["test_acc"])
    return epochs, acc

"""MLflow runs, written with MlflowClient (mlflow-skinny; a SQLite store needs SQLAlchemy and Alembic).

By default the store is a SQLite file in the run's folder, or in the sweep's folder for all its jobs, so that
tracking works offline and a sweep is one view (its jobs carry the tags `sweep` and `job`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import SUMMARY_METRICS, Place, Tracker

# Set unless the user set them: no usage telemetry sent from a training run, and a tracking server out of
# reach stalls training for seconds, not the minutes of MLflow's own retry defaults, before its warning.
ENV_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# At most this many metrics, params and tags per log_batch call (MLflow's limit for params and tags).
BATCH = 100
# Every metrics.csv row has it: its history tells how many epochs a run holds.
EPOCH_METRIC = "train_loss"
STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}  # anything else: FAILED


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, settings: Mapping[str, Any], place: Place) -> None:
        uri = settings.get("tracking_uri")
        self.uri = uri or f"sqlite:///{place.root / 'mlflow.db'}"
        # Nothing is logged as an artifact; the default store still records a place for them beside it.
        self.artifacts = None if uri else (place.root / "mlartifacts").as_uri()
        self.experiment = settings.get("experiment_name")
        self.run_name = settings.get("run_name") or place.name
        self.client: Any = None
        self.run_id: str | None = None

    def open(self, previous: Mapping[str, Any] | None, hparams: Mapping[str, Any], tags: Mapping[str, str],
             epochs_done: int) -> int:
        for key, value in ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # a new store's table creation is no news for the user
            logging.getLogger(name).setLevel(logging.WARNING)
        with _store_lock(self.uri):  # the client's first use of a store creates its tables
            self.client = MlflowClient(self.uri)
            experiment_id = self._experiment_id(self.experiment or tags["experiment"])
        params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in hparams.items()}
        run = self._run(previous)
        if run is None:
            run = self.client.create_run(experiment_id, run_name=self.run_name, tags=dict(tags))
            self.run_id = run.info.run_id
            self._log_batch(params=[Param(k, v) for k, v in params.items()])
            return 0
        self.run_id = run.info.run_id
        self.client.update_run(self.run_id, status="RUNNING")
        # Params cannot change: a key a resume may change (trainer.max_epochs) gets a tag with its new value.
        stored = run.data.params
        changed = [RunTag(f"resumed_with.{k}", v) for k, v in params.items() if stored.get(k, v) != v]
        self._log_batch(params=[Param(k, v) for k, v in params.items() if k not in stored],
                        tags=[*(RunTag(k, v) for k, v in tags.items()), *changed])
        history = self.client.get_metric_history(self.run_id, EPOCH_METRIC)
        return min(max((m.step for m in history), default=0), epochs_done)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._log_metrics(metrics, epoch)

    def finish(self, summary: Mapping[str, Any]) -> None:
        if summary["status"] == "completed":
            numbers = {f"summary/{k}": summary[k] for k in SUMMARY_METRICS if summary.get(k) is not None}
            self._log_metrics(numbers, summary["epochs_run"])
        self.client.set_tag(self.run_id, "status", summary["status"])
        self.client.set_terminated(self.run_id, STATUS.get(summary["status"], "FAILED"))

    def close(self) -> None:
        """MlflowClient holds nothing to release; the run stays as the store last saw it."""

    def state(self) -> dict[str, Any]:
        return {"tracking_uri": self.uri, "run_id": self.run_id}

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=self.artifacts))
        except MlflowException:  # another job of the sweep created it meanwhile (a tracking server)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _run(self, previous: Mapping[str, Any] | None) -> Any:
        """The MLflow run an earlier session of this run logged into this store, or None."""
        from mlflow.exceptions import MlflowException

        if previous is None or previous.get("tracking_uri") != self.uri or not previous.get("run_id"):
            return None
        try:
            run = self.client.get_run(previous["run_id"])
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return None if run.info.lifecycle_stage == "deleted" else run

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log_batch(metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def _log_batch(self, metrics: Sequence[Any] = (), params: Sequence[Any] = (),
                   tags: Sequence[Any] = ()) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        while metrics or params or tags:
            self.client.log_batch(self.run_id, metrics=metrics[:BATCH], params=params[:BATCH],
                                  tags=tags[:BATCH])
            metrics, params, tags = metrics[BATCH:], params[BATCH:], tags[BATCH:]


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, one process at a time: the jobs of a sweep that start together (joblib, SLURM)
    would otherwise race to create its tables and experiments. Locks the folder that holds the file."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    folder = Path(uri[len("sqlite:///"):].split("?")[0]).absolute().parent
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

"""Loggers (logger=tensorboard | mlflow | many_loggers): what the trackers hold, read back with TensorBoard's
and MLflow's own readers, equals metrics.csv, summary.json and the config; for a run, a sweep, a run resumed
after SIGTERM or SIGKILL, and a tracker that fails. Real `nitro train` subprocesses on a tiny config."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import TINY, nitro_cmd, nitro_env
from nitro_cli.errors import NitroError
from nitro_cli.runner.checkpoint import atomic_write_text
from nitro_cli.track import Place, Trackers, check_loggers

for _package in ("tensorboardX", "mlflow", "tensorboard"):
    pytest.importorskip(_package, reason="the tracking extra: pip install -e '.[dev]'")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

# Three short epochs (20 batches each) of the tiny run.
RUN = [*(a for a in TINY if not a.startswith("trainer.max_epochs")), "trainer.max_epochs=3",
       "trainer.limit_train_batches=20"]
# About a second per epoch: long enough to be interrupted in the middle of the run.
SLOW = ["model.hidden=[32]", "trainer.batch_size=8", "trainer.max_epochs=3", "engine=numpy"]
# Keys that only say where and how a session runs: not hyperparameters.
NOT_HPARAMS = ("logger", "resume", "data.root", "engine", "trainer.progress", "trainer.eval_batch_size")
SUMMARY_NUMBERS = ("test_accuracy", "best_test_accuracy", "best_epoch", "val_accuracy", "epochs_run",
                   "wall_seconds", "samples_per_s")
TAGS = ("experiment", "seed", "compat", "group", "trainer", "nitro_commit")


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables and no run. Creating the tables takes seconds (MLflow runs all
    its migrations): the resume tests start from a copy of this one, in the default place."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def _with_store(folder: Path, empty_store: Path) -> None:
    folder.mkdir(parents=True)
    shutil.copyfile(empty_store, folder / "mlflow.db")


def _csv(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / "metrics.csv").open(newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def _expected_hparams(run_dir: Path) -> dict[str, Any]:
    """The run's .hydra/config.yaml as dotted keys, without the session-only keys."""
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = prefix + k
            if any(key == n or key.startswith(n + ".") for n in NOT_HPARAMS):
                continue
            if isinstance(v, dict) and v:
                walk(v, key + ".")
            else:
                out[key] = v

    walk(yaml.safe_load((run_dir / ".hydra/config.yaml").read_text()), "")
    return out


def _tb(log_dir: Path) -> EventAccumulator:
    """What TensorBoard shows for one run folder (it applies purge_step, as its UI does)."""
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return ea


def _tb_steps(log_dir: Path) -> list[tuple[str, int]]:
    """Every (tag, step) written to the folder's event files, raw: a duplicate shows here."""
    return [(v.tag, e.step) for f in sorted(log_dir.glob("events.out.tfevents.*"))
            for e in EventFileLoader(str(f)).Load() for v in e.summary.value
            if not v.tag.startswith("_hparams_/")]


def _tb_hparams(ea: EventAccumulator) -> dict[str, Any]:
    content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def _check_tensorboard(log_dir: Path, run_dir: Path) -> None:
    """Each epoch's metrics.csv row at step = epoch (nothing else per epoch), the summary, the hparams."""
    rows, summary = _csv(run_dir), json.loads((run_dir / "summary.json").read_text())
    ea = _tb(log_dir)
    assert {k for k in ea.Tags()["scalars"] if not k.startswith("summary/")} == set(rows[0]) - {"epoch"}
    for column in rows[0]:
        if column != "epoch":
            got = [(s.step, s.value) for s in ea.Scalars(column)]
            assert got == [(int(r["epoch"]), pytest.approx(r[column], rel=1e-6)) for r in rows], column
    for key in SUMMARY_NUMBERS:
        [point] = ea.Scalars(f"summary/{key}")
        assert (point.step, point.value) == (summary["epochs_run"], pytest.approx(summary[key], rel=1e-6))
    hparams = _tb_hparams(ea)
    for key, value in _expected_hparams(run_dir).items():
        if isinstance(value, bool) or isinstance(value, str):
            assert hparams[key] == value, key
        elif isinstance(value, int | float):
            assert hparams[key] == pytest.approx(value), key
        else:
            assert hparams[key] == json.dumps(value), key
    for tag in TAGS:
        assert f"tag.{tag}" in hparams
    assert hparams["tag.group"] == summary["group"]


def _mlflow_runs(db: Path) -> list[Any]:
    client = MlflowClient(f"sqlite:///{db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _check_mlflow(db: Path, run: Any, run_dir: Path) -> None:
    """The same run in MLflow: metric histories, params, tags, the summary and the run's status."""
    client = MlflowClient(f"sqlite:///{db}")
    rows, summary = _csv(run_dir), json.loads((run_dir / "summary.json").read_text())
    run_id = run.info.run_id
    per_epoch = {k for k in run.data.metrics if not k.startswith("summary/")}
    assert per_epoch == set(rows[0]) - {"epoch"}  # a metrics.csv row and nothing else
    for column in rows[0]:
        if column != "epoch":
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, column))
            assert history == [(int(r["epoch"]), r[column]) for r in rows], column
    for key in SUMMARY_NUMBERS:
        assert run.data.metrics[f"summary/{key}"] == summary[key], key
    expected = {k: v if isinstance(v, str) else json.dumps(v) for k, v in _expected_hparams(run_dir).items()}
    assert run.data.params == expected
    tags = run.data.tags
    assert {k: tags[k] for k in ("experiment", "seed", "group", "trainer")} == \
        {k: str(summary[k]) for k in ("experiment", "seed", "group", "trainer")}
    assert tags["compat"] == summary["compat"]["name"] and tags["nitro_commit"]
    assert tags["run_dir"] == str(run_dir) and tags["status"] == "completed"
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == summary["experiment"]


def test_tensorboard_and_mlflow_hold_every_epoch_the_config_and_the_summary(nitro, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    res = nitro("train", *RUN, "logger=many_loggers", f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stderr
    assert "warning: logger" not in res.stdout
    assert len(_csv(run_dir)) == 3
    _check_tensorboard(run_dir / "tensorboard", run_dir)
    [run] = _mlflow_runs(run_dir / "mlflow.db")
    _check_mlflow(run_dir / "mlflow.db", run, run_dir)
    assert run.info.run_name == "run"
    assert not (tmp_path / "mlruns").exists()  # nothing written outside the run folder


def test_a_sweep_is_one_view_in_each_tracker(nitro, tmp_path: Path) -> None:
    """Two jobs at once (joblib) that share the sweep's new MLflow store: one of them creates its tables."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the cluster extra")
    sweep = tmp_path / "sweep"
    res = nitro("train", "-m", "seed=1,2", *RUN, "logger=[tensorboard,mlflow]", "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr
    assert "warning: logger" not in res.stdout
    runs = sorted(_mlflow_runs(sweep / "mlflow.db"), key=lambda r: r.data.tags["job"])
    assert [(r.data.tags["job"], r.data.tags["seed"], r.data.tags["sweep"]) for r in runs] == \
        [("0", "1", str(sweep)), ("1", "2", str(sweep))]
    assert len({r.info.experiment_id for r in runs}) == 1
    for run in runs:
        job = run.data.tags["job"]
        assert run.info.run_name == f"sweep/{job}"
        _check_mlflow(sweep / "mlflow.db", run, sweep / job)
        _check_tensorboard(sweep / "tensorboard" / job, sweep / job)
        assert _tb_hparams(_tb(sweep / "tensorboard" / job))["seed"] == int(job) + 1
        assert not (sweep / job / "mlflow.db").exists() and not (sweep / job / "tensorboard").exists()


def _wait_rows(run_dir: Path, rows: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.csv"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) > rows:
            return
        time.sleep(0.01)
    raise AssertionError(f"the run did not reach {rows} epochs: {proc.poll()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_resumed_run_continues_its_records_with_no_epoch_twice(sig: signal.Signals, nitro, tmp_path: Path,
                                                                 empty_store: Path) -> None:
    run_dir = tmp_path / "run"
    _with_store(run_dir, empty_store)
    proc = subprocess.Popen([*nitro_cmd(), "train", *SLOW, "logger=many_loggers", f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=nitro_env(),
                            cwd=tmp_path)
    _wait_rows(run_dir, 1, proc)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (128 + signal.SIGTERM, -signal.SIGKILL), err
    first = json.loads((run_dir / "tracking.json").read_text())
    if sig == signal.SIGTERM:
        [run] = _mlflow_runs(run_dir / "mlflow.db")
        assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"
    res = nitro("train", f"resume={run_dir / 'checkpoints/last.npz'}", f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stderr
    assert len(_csv(run_dir)) == 3
    [run] = _mlflow_runs(run_dir / "mlflow.db")  # the same MLflow run, continued
    assert run.info.run_id == first["mlflow"]["run_id"]
    _check_mlflow(run_dir / "mlflow.db", run, run_dir)
    log_dir = run_dir / "tensorboard"
    _check_tensorboard(log_dir, run_dir)
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2  # one file per session
    steps = _tb_steps(log_dir)
    if sig == signal.SIGTERM:  # a clean stop: no epoch is written twice at all
        assert len(steps) == len(set(steps))


def test_an_epoch_a_kill_kept_from_the_trackers_is_caught_up_as_if_logged_live(tmp_path: Path,
                                                                              empty_store: Path) -> None:
    """SIGKILL can land after an epoch's metrics.csv row and before its tracker calls; the next session logs
    that epoch from the row. Both trackers must then hold exactly what an uninterrupted run's hold."""
    header = ["epoch", "train_loss", "test_accuracy", "seconds"]
    rows: list[list[Any]] = [[e, 10.0 / e, 0.1 * e, 1.5 + e] for e in (1, 2, 3)]
    summary = {"experiment": "x", "seed": 1, "group": "g", "trainer": "paper", "compat": {"name": "exact"},
               "status": "interrupted"}
    loggers = {"mlflow": {"tracking_uri": None}, "tensorboard": {"save_dir": None}}
    log = logging.getLogger("test_tracking")

    def session(run_dir: Path, csv_rows: list[list[Any]], live: list[list[Any]], end: bool) -> None:
        trackers = Trackers(loggers, Place(run_dir), log, atomic_write_text)
        trackers.start(header, csv_rows, {"seed": 1}, summary)
        for row in live:
            trackers.log_epoch(row)
        if end:
            trackers.finish(summary)

    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    for folder in (uninterrupted, killed):
        _with_store(folder, empty_store)
    session(uninterrupted, [], rows, end=True)
    session(killed, [], rows[:1], end=False)  # killed after epoch 2's row, before its tracker calls
    session(killed, rows[:2], rows[2:], end=True)

    def held(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
        [run] = _mlflow_runs(run_dir / "mlflow.db")
        client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
        mlflow = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
                  for k in run.data.metrics}
        ea = _tb(run_dir / "tensorboard")
        tensorboard = {k: [(s.step, s.value) for s in ea.Scalars(k)] for k in ea.Tags()["scalars"]}
        return mlflow, tensorboard

    assert held(killed) == held(uninterrupted)
    assert sorted(held(killed)[0]) == sorted(header[1:])


@pytest.mark.parametrize("logger, setting, failing", [
    ("tensorboard", "logger.tensorboard.save_dir={tmp}/a_file/tb", "tensorboard"),
    ("many_loggers", "logger.mlflow.tracking_uri=http://127.0.0.1:9", "mlflow"),
])
def test_a_failing_tracker_leaves_the_run_completed_with_one_warning(logger: str, setting: str, failing: str,
                                                                     tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    run_dir = tmp_path / "run"
    env = {**nitro_env(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    res = subprocess.run([*nitro_cmd(), "train", *RUN, f"logger={logger}", setting.format(tmp=tmp_path),
                          f"hydra.run.dir={run_dir}"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=180)
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stdout.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and f"logger {failing} failed" in warnings[0], res.stdout
    assert "metrics.csv stays the record" in warnings[0] and "Traceback" not in res.stdout + res.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert len(_csv(run_dir)) == 3
    assert warnings[0].split("] ", 1)[1] in (run_dir / "train.log").read_text()
    if failing == "mlflow":  # the other tracker is unaffected
        _check_tensorboard(run_dir / "tensorboard", run_dir)


@pytest.mark.parametrize("override, needle", [
    ("logger.tensorboard.save_dir=3", "logger.tensorboard.save_dir must be a non-empty string or null"),
    ("+logger.mlflow.uri=x", "unknown config key logger.mlflow.uri"),
    ("+logger.wandb.project=x", "unknown logger logger.wandb"),
    ("logger=wandb", "unknown logger preset 'wandb'"),
])
def test_a_bad_logger_config_is_refused_before_anything_starts(override: str, needle: str, nitro,
                                                               tmp_path: Path) -> None:
    res = nitro("train", *RUN, "logger=tensorboard", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    [line] = [x for x in res.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ") and needle in line, line
    assert not (tmp_path / "run").exists()


def test_a_logger_whose_package_is_missing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "mlflow" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    check_loggers({"csv": {}, "tensorboard": {"save_dir": None}})
    with pytest.raises(NitroError, match=r"logger mlflow needs mlflow.*pip install 'nitro-cli\[tracking\]'"):
        check_loggers({"mlflow": {}})


def test_nitro_imports_no_tracker_library_unless_a_logger_asks() -> None:
    code = ("import sys, nitro_cli.cli, nitro_cli.apps.train, nitro_cli.runner, nitro_cli.track; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'tensorboardX', 'tensorboard', "
            "'sqlalchemy', 'alembic'}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"

"""Sweeps through Hydra launcher plugins (the `cluster` extra): real `nitro` subprocesses, real launchers.

submitit_local starts each job as its own process (the task function travels pickled), joblib runs them in
loky worker processes; either way every job writes its own run dir and `nitro report` aggregates them.
The SLURM preset is only composed here; submitting off a cluster fails with one clean line
(tests/test_slurm.py submits to a real one).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import nitro_cmd, nitro_env
from nitro_cli import cli
from nitro_cli.apps import train
from nitro_cli.runner import load_checkpoint

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the cluster extra")
pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the cluster extra")
# Imported once here: submitit configures its logger (its own handlers) when first imported.
slurm = pytest.importorskip("submitit.slurm.slurm", reason="needs the cluster extra")

# Tiny jobs (a second each); submitit_local polls its jobs, a short timeout bounds a stuck one.
JOB = ["trainer.max_epochs=1", "model.hidden=[16]", "engine=numpy"]
LAUNCHERS = {
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=2"],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}


def _sweep(nitro, sweep: Path, launcher: str, seeds: str) -> subprocess.CompletedProcess[str]:
    return nitro("train", "-m", f"seed={seeds}", *JOB, *LAUNCHERS[launcher], f"hydra.sweep.dir={sweep}",
                 timeout=120)


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_sweep_runs_each_job_in_its_own_process_and_report_aggregates_it(nitro, tmp_path: Path,
                                                                         launcher: str) -> None:
    sweep = tmp_path / "sweep"
    res = _sweep(nitro, sweep, launcher, "1,2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    summaries = [_summary(sweep / str(i)) for i in (0, 1)]
    assert [s["seed"] for s in summaries] == [1, 2]
    assert all(s["status"] == "completed" and s["epochs_run"] == 1 for s in summaries)
    for i in (0, 1):
        for f in ("metrics.csv", "train.log", "checkpoints/last.npz", "checkpoints/best.npz",
                  ".hydra/config.yaml"):
            assert (sweep / str(i) / f).is_file(), (i, f)
    if launcher == "submitit_local":  # a job's stdout is a log file: plain progress lines, no rich bars
        logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
        assert logs.count("epoch 1/1") == 2 and "\x1b" not in logs and "━" not in logs
    else:  # joblib's workers print to our stdout
        assert res.stdout.count("epoch 1/1") == 2 and "━" not in res.stdout

    out = tmp_path / "report"
    res = nitro("report", f"runs={sweep}", f"out={out}")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 1, rows
    assert rows[0]["n"] == "2" and rows[0]["seeds"] == "1 2" and rows[0]["experiment"] == "custom"


def test_a_failing_submitit_job_leaves_the_other_job_complete(nitro, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # lr_inv = amp = 1 without decay: the weights of job 1 outgrow int32 in its first epoch.
    res = nitro("train", "-m", "optimizer.lr_inv=512,1", "optimizer.amp=1", "optimizer.fwd_decay_inv=null",
                "optimizer.subnet_decay_inv=null", *JOB, *LAUNCHERS["submitit_local"],
                f"hydra.sweep.dir={sweep}", timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout
    last = res.stderr.strip().splitlines()[-1]
    # The job ran in another process whose stderr went to its log: the message carries its error.
    assert last.startswith("error: job 1 (optimizer.lr_inv=1"), last
    assert "integer overflow in epoch 1" in last and f"nitro report runs={sweep}" in last

    ok = _summary(sweep / "0")
    assert ok["status"] == "completed" and ok["seed"] == 42 and ok["error"] is None
    rows = list(csv.DictReader((sweep / "0" / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["test_acc"]) == ok["test_accuracy"]
    for name in ("last.npz", "best.npz"):
        ckpt = load_checkpoint(sweep / "0" / "checkpoints" / name)
        assert ckpt.state["epoch"] == 1 and ckpt.state["config"]["optimizer"]["lr_inv"] == 512
    failed = _summary(sweep / "1")
    assert failed["status"] == "failed" and "integer overflow" in failed["error"]
    assert not list((sweep / "1").rglob("*.npz"))

    res = nitro("report", f"runs={sweep}", f"out={tmp_path / 'report'}")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((tmp_path / "report" / "report.csv").open()))
    assert len(rows) == 1 and rows[0]["n"] == "1" and rows[0]["seeds"] == "42"


def test_slurm_preset_composes_and_takes_overrides(nitro) -> None:
    res = nitro("train", "hydra/launcher=slurm_cluster", "hydra.launcher.partition=gpu",
                "hydra.launcher.timeout_min=30", "--cfg", "hydra")
    assert res.returncode == 0, res.stderr
    launcher = yaml.safe_load(res.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["timeout_min"] == 30
    assert launcher["gpus_per_node"] == 1 and launcher["cpus_per_task"] == 8 and launcher["mem_gb"] == 32
    assert launcher["array_parallelism"] == 16
    assert any("NITRO_AUTO_BLAS_THREADS" in line and "$SLURM_CPUS_PER_TASK" in line
               for line in launcher["setup"])


def test_slurm_preset_becomes_the_sbatch_script(monkeypatch, tmp_path: Path) -> None:
    """The preset's settings, mapped as the submitit launcher maps them, in the script sbatch would get."""
    import submitit
    from hydra import compose, initialize_config_module
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm import slurm

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun exists"
    with initialize_config_module("nitro_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm_cluster", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert isinstance(params, dict)
    for key in ("_target_", "submitit_folder", "max_num_timeout"):  # not job parameters
        params.pop(key)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("nitro-job", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--time=480",
                 "--job-name=nitro"):
        assert f"#SBATCH {line}\n" in script, line
    setup = script.index("NITRO_AUTO_BLAS_THREADS")
    assert setup < script.index("nitro-job") and "OPENBLAS_NUM_THREADS=$SLURM_CPUS_PER_TASK" in script


@pytest.mark.parametrize(("preset", "target"), [("joblib", "JoblibLauncher"),
                                                ("submitit_local", "LocalLauncher"),
                                                ("submitit_slurm", "SlurmLauncher")])
def test_plugin_presets_compose(nitro, preset: str, target: str) -> None:
    res = nitro("train", f"hydra/launcher={preset}", "--cfg", "hydra")
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout)["hydra"]["launcher"]["_target_"].endswith(target)


def test_slurm_sweep_off_a_cluster_fails_in_one_line(nitro, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no SLURM commands, even where installed
    res = nitro("train", "-m", "hydra/launcher=slurm_cluster", *JOB, f"hydra.sweep.dir={tmp_path / 's'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the sweep's launcher could not run it"), lines
    assert "srun" in lines[0]


def test_submitit_errors_without_a_result_end_in_one_line() -> None:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    timeout = UncompletedJobError(
        "Job 7 (task: 0) with path /s/.submitit/7/7_0_result.pkl\nhas not produced any output (state: "
        "TIMEOUT)\nError stream produced:\n----------------------------------------\nslurmstepd: CANCELLED")
    msg = cli.user_error_message(timeout, "train")
    assert msg is not None and "\n" not in msg and "state: TIMEOUT" in msg
    assert "slurmstepd" not in msg and "nitro report runs=/s" in msg
    crash = FailedJobError(
        "Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent "
        "call last):\n  File \"x.py\", line 1\nMemoryError: out of memory\n----------------------\nYou can "
        "check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - /s/.submitit/7/7_0_log.err"
        "\n  - /s/.submitit/7/7_0_log.out")
    msg = cli.user_error_message(crash, "train")
    assert msg is not None and "Traceback" not in msg
    assert "MemoryError: out of memory" in msg and "/s/.submitit/7/7_0_log.err" in msg


def test_a_launched_job_names_its_sweeps_own_command(monkeypatch, tmp_path: Path) -> None:
    """A job that a launcher runs in another process (submitit, joblib) lacks the sweep's command line: the
    command that completes the sweep comes from the multirun.yaml Hydra wrote before launching (its
    hydra.mode=MULTIRUN is `-m`). tests/test_slurm.py runs it after a scancel."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    overrides = {"hydra": ["hydra/launcher=slurm_cluster", "hydra.launcher.partition=a b",
                           "hydra.sweep.dir=sweep", "hydra.mode=MULTIRUN"],
                 "task": ["seed=1,2", "model.hidden=[16]", "resume=auto"]}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": overrides}, "seed": 1}))
    job = {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(sweep)}}
    monkeypatch.setattr(HydraConfig, "get", lambda: OmegaConf.create(job))
    monkeypatch.setattr(sys, "argv", ["/venv/lib/submitit/core/_submit.py", str(sweep / ".submitit/7_1")])
    command = train._continue_command(sweep / "1", sweep / "1/checkpoints/last.npz")
    assert command == ("nitro train -m hydra/launcher=slurm_cluster 'hydra.launcher.partition=a b' seed=1,2 "
                       f"'model.hidden=[16]' hydra.sweep.dir={sweep} resume=auto")
    (sweep / "multirun.yaml").unlink()  # a sweep folder emptied by hand
    command = train._continue_command(sweep / "1", sweep / "1/checkpoints/last.npz")
    assert command == f"the sweep's command plus hydra.sweep.dir={sweep} resume=auto"


def test_sacct_failures_at_every_poll_become_one_note(monkeypatch, capsys) -> None:
    """On a cluster without accounting storage submitit warns at every poll (tests/test_slurm.py sees it)."""
    logger = logging.getLogger("submitit")

    def sweep() -> None:
        for call in (1, 2, 3):
            logger.warning(f"Call #{call} - Bypassing sacct error Command '['sacct', '-j', '7']' returned "
                           "non-zero exit status 1.")
        logger.warning("Bypassing signal SIGCONT")  # others pass

    monkeypatch.setattr(sys, "argv", sys.argv[:])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    for _ in range(2):  # once per command, not once per process
        with submitit_messages(keep_note=True) as shown:
            assert cli._run_hydra_app("train", sweep, []) == 0
        assert shown == ["Bypassing signal SIGCONT"]
        err = capsys.readouterr().err
        assert err.count("note: sacct cannot report the jobs' states here") == 1
        assert "run `sacct` to see its reason" in err and "repeat" not in err


@contextmanager
def submitit_messages(keep_note: bool = False) -> Iterator[list[str]]:
    """The messages that submitit's logger emits inside the block, instead of its own handlers (and, unless
    keep_note, nitro's note filter set aside too)."""
    logger, shown = logging.getLogger("submitit"), []
    handler = logging.Handler()
    handler.emit = lambda record: shown.append(record.getMessage())  # type: ignore[method-assign]
    handlers, filters = logger.handlers[:], logger.filters[:]
    logger.handlers = [handler]
    if not keep_note:
        logger.removeFilter(cli._SACCT_NOTE)
    try:
        yield shown
    finally:
        logger.handlers, logger.filters = handlers, filters


def _fake_sacct(folder: Path, monkeypatch, status: int) -> None:
    """A `sacct` first on PATH that answers on stdout, complains on stderr and exits with `status`."""
    (folder / "bin").mkdir()
    fake = folder / "bin" / "sacct"
    fake.write_text("#!/bin/sh\necho 'Slurm accounting storage is disabled' >&2\n"
                    "printf 'JobID|State|NodeList\\n7|RUNNING|node1\\n'\n"
                    f'echo "$*" >> {folder / "calls"}\nexit {status}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("status", [0, 1])
def test_sacct_polls_keep_its_stdout_and_exit_status_and_drop_only_its_stderr(
        tmp_path: Path, monkeypatch, capfd, status: int) -> None:
    """A SLURM sweep's status checks: what submitit reads of sacct is unchanged, its stderr goes nowhere."""
    _fake_sacct(tmp_path, monkeypatch, status)
    original = slurm.SlurmJob.watcher
    restore = cli._quiet_sacct_polls()
    try:
        watcher = slurm.SlurmJob.watcher
        assert watcher is not original and isinstance(watcher, slurm.SlurmInfoWatcher)
        assert watcher._delay_s == original._delay_s and cli._SACCT_NOTE.quiet
        assert watcher._make_command() is None  # no job yet: no call, as before
        watcher.register_job("7")
        with submitit_messages() as warnings:
            assert watcher.get_state("7", mode="force") == ("RUNNING" if status == 0 else "UNKNOWN")
        assert watcher.num_calls == 1
        assert (tmp_path / "calls").read_text() == "-o JobID,State,NodeList --parsable2 -j 7\n"
        assert capfd.readouterr() == ("", "")  # sacct's complaint reached neither stream
        assert len(warnings) == status  # a failure is still submitit's "Bypassing sacct error" (-> note)
        assert all("Bypassing sacct error" in w for w in warnings)
    finally:
        restore()
    assert slurm.SlurmJob.watcher is original and not cli._SACCT_NOTE.quiet


def test_sacct_polls_are_left_as_they_are_with_an_unexpected_submitit(monkeypatch, capsys) -> None:
    """Another submitit version whose watcher is not what nitro knows: today's behaviour, not a crash."""
    odd = object()
    monkeypatch.setattr(slurm.SlurmJob, "watcher", odd)
    restore = cli._quiet_sacct_polls()
    assert slurm.SlurmJob.watcher is odd and not cli._SACCT_NOTE.quiet
    restore()
    assert slurm.SlurmJob.watcher is odd
    logger = logging.getLogger("submitit")

    def sweep() -> None:
        logger.warning("Call #1 - Bypassing sacct error Command '['sacct']' returned non-zero exit status 1.")

    monkeypatch.setattr(sys, "argv", sys.argv[:])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    assert cli._run_hydra_app("train", sweep, []) == 0
    err = capsys.readouterr().err
    assert err.count("note: sacct cannot report") == 1 and "sacct's own one-line reason may repeat" in err


@pytest.mark.parametrize(("load", "args", "threads"), [
    (0.0, ["-m", "seed=1,2", "hydra/launcher=submitit_local"], "1"),  # all jobs at once: one thread each
    (0.0, ["-m", "seed=1,2", "hydra/launcher=joblib"], None),  # joblib sizes its workers' threads
    (0.0, ["seed=1"], None),
    (99.0, ["-m", "seed=1,2", "hydra/launcher=joblib"], "1"),  # busy machine: jobs inherit one thread
])
def test_blas_threads_chosen_before_numpy_reach_the_jobs(monkeypatch, load: float, args: list[str],
                                                         threads: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (*cli._THREAD_VARS, cli.AUTO_THREADS_MARK)}
    monkeypatch.setattr(os, "environ", env)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.delitem(sys.modules, "numpy")  # as in a fresh `nitro` process (restored afterwards)
    cli._single_blas_thread_when_busy(args)
    assert env.get("OPENBLAS_NUM_THREADS") == threads
    assert env.get(cli.AUTO_THREADS_MARK) == ("1" if threads else None)


def test_blas_threads_sleep_between_products_unless_the_user_says(monkeypatch) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    monkeypatch.setattr(os, "environ", env)
    monkeypatch.delitem(sys.modules, "numpy")  # as in a fresh `nitro` process (restored afterwards)
    cli._short_blas_spin()
    assert env["OPENBLAS_THREAD_TIMEOUT"] == "4"
    env["OPENBLAS_THREAD_TIMEOUT"] = "20"
    cli._short_blas_spin()
    assert env["OPENBLAS_THREAD_TIMEOUT"] == "20"


def _group_members(pgid: int) -> list[str]:
    """The live processes of process group `pgid` (pid and command line), read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(f"{stat.parent.name}: {cmdline[:150]}")
    return members


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from /proc")
def test_a_joblib_sweep_killed_hard_leaves_no_process_behind(tmp_path: Path) -> None:
    """kill -9 of the sweep's own process only: its loky workers stop their jobs (recorded as interrupted,
    resumable) and exit, and so do the resource trackers; nothing is left in the sweep's process group."""
    sweep = tmp_path / "sweep"
    cmd = [*nitro_cmd(), "train", "-m", "seed=1,2,3,4", "model.hidden=[16]", "trainer.max_epochs=200",
           "engine=numpy", *LAUNCHERS["joblib"], f"hydra.sweep.dir={sweep}"]
    err = tmp_path / "sweep.err"
    with err.open("w") as stderr:
        parent = subprocess.Popen(cmd, cwd=tmp_path, env=nitro_env(), stdout=subprocess.DEVNULL,
                                  stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not all((sweep / job / "metrics.csv").is_file() for job in ("0", "1")):  # both jobs training
            assert parent.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.2)
        assert len(_group_members(parent.pid)) >= 3  # the sweep, its workers, the resource trackers
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 60
        while (left := _group_members(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == [], left
        for job in ("0", "1"):
            summary = _summary(sweep / job)
            assert summary["status"] == "interrupted" and summary["epochs_run"] < 200, summary
            assert (sweep / job / "checkpoints" / "last.npz").is_file()
        assert not list(sweep.glob("[23]/summary.json"))  # no queued job started once orphaned
    finally:
        with suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)

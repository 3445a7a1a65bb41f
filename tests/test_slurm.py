"""SLURM sweeps on a real single-node cluster (scripts/slurm-up.sh: munge, slurmctld, slurmd): submitted,
run, cancelled, failed and aggregated end to end through the real `nitro` command.

The cluster is the one named by NITRO_SLURM_DIR (.ci/run starts one), else one this module starts and stops
itself where it can (root, Debian's SLURM packages installed), else every test skips saying why. Like many
small clusters it keeps no accounting, so sacct fails and submitit follows the jobs through their result
files. Every wait is bounded.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import file_hashes, nitro_cmd, nitro_env, params

pytestmark = pytest.mark.slurm
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the cluster extra")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# The preset with CPU-only settings for scripts/slurm-up.sh's one partition.
SLURM = ["hydra/launcher=slurm_cluster", "hydra.launcher.partition=nitro", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
JOB = ["model.hidden=[16]", "trainer.max_epochs=1", "engine=numpy"]
# About a second per epoch, with dropout and augmentation so that every random stream matters on resume.
SLOW_JOB = ["model.hidden=[16]", "trainer.batch_size=8", "trainer.max_epochs=3", "model.dropout=0.1",
            "data.augment=true", "engine=numpy"]
WAIT = 180  # seconds: the bound on any sweep or wait here


def _slurm(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SLURM_CONF": str(conf)})


def _why_no_cluster() -> str | None:
    """Why this machine can neither reach a cluster nor start one, or None."""
    if os.environ.get("NITRO_SLURM_DIR"):
        return None
    if os.geteuid() != 0:
        return ("starting a SLURM cluster needs root (slurmd runs jobs as their users); or export "
                "NITRO_SLURM_DIR=DIR after `sudo scripts/slurm-up.sh DIR`")
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(c) is None]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} missing); `make slurm-up` installs Debian's "
                "packages (apt-get) and starts a cluster")
    return None


if (_reason := _why_no_cluster()) is not None:
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The slurm.conf of a running cluster: NITRO_SLURM_DIR's, or one started (and stopped) here."""
    given = os.environ.get("NITRO_SLURM_DIR")
    if given:
        conf = Path(given) / "slurm.conf"
        res = _slurm(conf, "sinfo", "-h", "-o", "%t")
        assert res.returncode == 0 and res.stdout.split() == ["idle"], \
            f"NITRO_SLURM_DIR={given}: its cluster does not answer: {res.stdout}{res.stderr}"
        yield conf
        return
    folder = tmp_path_factory.mktemp("slurm")
    up = subprocess.run([str(SCRIPTS / "slurm-up.sh"), str(folder)], capture_output=True, text=True,
                        timeout=120, stdin=subprocess.DEVNULL)
    assert up.returncode == 0, up.stdout + up.stderr
    yield folder / "slurm.conf"
    down = subprocess.run([str(SCRIPTS / "slurm-down.sh"), str(folder)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert down.returncode == 0 and "no process of it is left" in down.stdout, down.stdout + down.stderr
    assert not folder.exists()


@pytest.fixture
def nitro(cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`nitro(*args, env=..., timeout=...)`, the real command talking to the cluster (SLURM_CONF)."""
    monkeypatch.setenv("SLURM_CONF", str(cluster))

    def run(*args: str, timeout: float = WAIT, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*nitro_cmd(), *args], capture_output=True, text=True, cwd=tmp_path,
                              env={**nitro_env(), **env}, timeout=timeout)

    return run


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _report_rows(nitro, sweep: Path, out: Path) -> list[dict[str, str]]:
    res = nitro("report", f"runs={sweep}", f"out={out}")
    assert res.returncode == 0, res.stderr
    with open(out / "report.csv") as f:
        return list(csv.DictReader(f))


def _same_params(a: Path, b: Path) -> None:
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys() and pa
    for k in pa:
        assert (pa[k] == pb[k]).all() and pa[k].dtype == pb[k].dtype, k


def assert_interrupted(summary: dict) -> None:
    """How a stopped-and-resumable run is recorded: its own status, and the signal that stopped it."""
    assert summary["status"] == "interrupted", summary
    assert summary["error"].startswith("interrupted by SIGTERM"), summary


def _quiet_sacct(stdout: str, stderr: str) -> None:
    """sacct fails at every poll (no accounting storage): one note instead of submitit's warnings, and none
    of the lines sacct prints on its stderr ("Slurm accounting storage is disabled") at each poll."""
    out = stdout + stderr
    assert "Bypassing sacct error" not in out
    sacct_lines = [line for line in out.splitlines()
                   if "accounting storage is disabled" in line or line.startswith("sacct:")]
    assert not sacct_lines, f"{len(sacct_lines)} lines of sacct: {out[-3000:]}"
    assert stderr.count("note: sacct cannot report the jobs' states") == 1, stderr
    assert out.count("note: sacct") == 1, out[-3000:]


def _counting_sacct(folder: Path) -> tuple[dict[str, str], Path]:
    """A `sacct` first on PATH that logs each call and runs the real one (stdout, stderr and exit status
    untouched): the environment for `nitro`, and the log, one line per poll."""
    real, log = shutil.which("sacct"), folder / "sacct-calls.log"
    assert real is not None
    (folder / "bin").mkdir()
    shim = folder / "bin" / "sacct"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\nexec {shlex.quote(real)} "$@"\n')
    shim.chmod(0o755)
    return {"PATH": f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}"}, log


def test_seed_sweep_runs_on_slurm_as_with_the_basic_launcher(nitro, tmp_path: Path) -> None:
    sweep, local = tmp_path / "slurm", tmp_path / "local"
    # submitit polls sacct right after submitting, then when more than max(2 s, half the time since the
    # submission) has passed, looking every second (so about 3 s later): the jobs sleep 4 s before training,
    # so sacct fails at least twice, and the sweep shows neither its line nor more than one note.
    env, sacct_calls = _counting_sacct(tmp_path)
    res = nitro("train", "-m", *SLURM, 'hydra.launcher.setup=["sleep 4"]', "seed=1,2", *JOB,
                f"hydra.sweep.dir={sweep}", **env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout
    polls = sacct_calls.read_text().splitlines()
    assert len(polls) >= 2, polls
    _quiet_sacct(res.stdout, res.stderr)
    assert len(list(sweep.glob(".submitit/*_[01]/*_result.pkl"))) == 2  # both went through sbatch
    res = nitro("train", "-m", "seed=1,2", *JOB, f"hydra.sweep.dir={local}")
    assert res.returncode == 0, res.stderr[-3000:]

    for i, seed in enumerate((1, 2)):
        assert _summary(sweep / str(i))["status"] == "completed" and _summary(sweep / str(i))["seed"] == seed
        for name in ("last.npz", "best.npz"):
            _same_params(sweep / str(i) / "checkpoints" / name, local / str(i) / "checkpoints" / name)
    rows, local_rows = (_report_rows(nitro, d, tmp_path / f"report-{d.name}") for d in (sweep, local))
    assert len(rows) == 1 and rows[0]["n"] == "2" and rows[0]["seeds"] == "1 2", rows
    for row in (*rows, *local_rows):
        del row["mean_wall_seconds"]
    assert rows == local_rows


def _wait_for_epoch(run_dir: Path, proc: subprocess.Popen[str]) -> None:
    metrics, deadline = run_dir / "metrics.csv", time.monotonic() + WAIT
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{run_dir} did not finish an epoch in {WAIT} s"
        time.sleep(0.05)


def test_a_cancelled_job_is_interrupted_and_its_sweep_completed_through_slurm_bit_identically(
        nitro, cluster: Path, tmp_path: Path) -> None:
    sweep, sweep_args = tmp_path / "sweep", ["-m", *SLURM, "seed=1,2", *SLOW_JOB]
    proc = subprocess.Popen([*nitro_cmd(), "train", *sweep_args, f"hydra.sweep.dir={sweep}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=nitro_env())
    try:
        _wait_for_epoch(sweep / "1", proc)
        array = next(p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit())
        cancel = _slurm(cluster, "scancel", f"{array}_1")
        assert cancel.returncode == 0, cancel.stderr
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    _quiet_sacct(out, err)
    # The documented way on (README, Multirun): the sweep's own command with its folder and resume=auto.
    command = shlex.join(["nitro", "train", *sweep_args, f"hydra.sweep.dir={sweep}", "resume=auto"])
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: job 1 (seed=2 "), message
    assert "of the sweep stopped: interrupted by SIGTERM" in message, message
    assert f"continue the sweep with `{command}`" in message and f"nitro report runs={sweep}" in message
    assert _summary(sweep / "0")["status"] == "completed"  # the other job ran to the end
    finished = file_hashes(sweep / "0")
    stopped = _summary(sweep / "1")
    assert_interrupted(stopped)
    assert stopped["epochs_run"] < 3  # stopped mid-training, not after it

    res = nitro(*shlex.split(command)[1:])
    assert res.returncode == 0, res.stderr[-3000:]
    _quiet_sacct(res.stdout, res.stderr)
    results = list(sweep.glob(".submitit/*_[01]/*_result.pkl"))
    assert len(results) == 4 and len({p.parent.name.split("_")[0] for p in results}) == 2  # sbatch again
    assert file_hashes(sweep / "0") == finished  # the completed job was left as it was
    assert _summary(sweep / "1")["status"] == "completed" and _summary(sweep / "1")["epochs_run"] == 3
    reference = tmp_path / "reference"
    res = nitro("train", "seed=2", *SLOW_JOB, f"hydra.run.dir={reference}")
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("last.npz", "best.npz"):
        _same_params(sweep / "1" / "checkpoints" / name, reference / "checkpoints" / name)


def test_a_job_without_its_dataset_fails_alone_and_nitro_names_it(nitro, tmp_path: Path) -> None:
    sweep, empty = tmp_path / "sweep", tmp_path / "no-datasets"
    empty.mkdir()
    # The jobs see this node's $NITRO_DATA, which lacks MNIST; the embedded subset needs no files.
    res = nitro("train", "-m", *SLURM, "data=mnist,mnist_mini", *JOB, f"hydra.sweep.dir={sweep}",
                NITRO_DATA=str(empty))
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    message = res.stderr.strip().splitlines()[-1]
    assert message.startswith("error: job 0 (data=mnist ") and "missing file" in message, message
    assert f"nitro report runs={sweep}" in message
    failed = _summary(sweep / "0")
    assert failed["status"] == "failed" and failed["data"] == "mnist" and "missing file" in failed["error"]
    done = _summary(sweep / "1")
    assert done["status"] == "completed" and done["data"] == "mnist_mini" and done["epochs_run"] == 1
    _quiet_sacct(res.stdout, res.stderr)
    rows = _report_rows(nitro, sweep, tmp_path / "report")
    assert len(rows) == 1 and rows[0]["data"] == "mnist_mini" and rows[0]["n"] == "1", rows


def test_a_search_runs_its_trials_as_slurm_jobs_against_one_study(nitro, tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna", reason="needs the tune extra")
    sweep = tmp_path / "study"
    # Two trials at a time (array_parallelism): each one a SLURM job that opens its trial in the study's
    # SQLite file in the sweep folder (a shared file system: one node here) and records its own end.
    res = nitro("tune", "search=mlp1_mini", *SLURM, "hydra.launcher.array_parallelism=2",
                "hydra.sweeper.n_trials=4", *JOB, f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout and "2 at a time (SlurmLauncher)" in res.stdout
    _quiet_sacct(res.stdout, res.stderr)
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{sweep / 'study.db'}")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    jobs = {t.user_attrs["slurm_job"] for t in study.trials}
    assert len(jobs) == 4 and None not in jobs, jobs  # every trial ran in a job of its own
    assert len(list(sweep.glob(".submitit/*_[01]/*_result.pkl"))) == 4  # two arrays of two, through sbatch
    for t in study.trials:
        assert _summary(Path(t.user_attrs["run_dir"]))["status"] == "completed"
    best = json.loads((sweep / "best.json").read_text())
    assert best["best_trial"] == study.best_trial.number and (sweep / "experiment" / "best.yaml").is_file()

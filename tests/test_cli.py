"""The real `nitro` command end to end, in subprocesses: outputs, eval, multirun, resume, user errors."""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import (
    TINY,
    file_hashes,
    lock_held_elsewhere,
    nitro_cmd,
    nitro_env,
    params,
    pickled_checkpoint,
    real_data_root,
)
from nitro_cli.data import Normalizer, load_dataset
from nitro_cli.runner import load_checkpoint, model_from_checkpoint, save_checkpoint

SUMMARY_KEYS = {"experiment", "trainer", "seed", "status", "epochs_run", "test_accuracy",
                "best_test_accuracy", "best_epoch", "val_accuracy", "wall_seconds", "samples_per_s", "model",
                "data", "group", "compat", "error"}
# Slow enough to be interrupted mid-epoch (about a second per epoch), with dropout and augmentation so
# that every random stream matters for a bit-identical resume.
KILLABLE = ["model.hidden=[32]", "trainer.batch_size=8", "trainer.max_epochs=3", "model.dropout=0.1",
            "data.augment=true", "engine=numpy"]


def clean_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit code 2, one `error:` paragraph on stderr, no traceback; returns the message."""
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr + res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`nitro train` with no overrides at all (only the output folder)."""
    run_dir = tmp_path_factory.mktemp("quick") / "run"
    start = time.monotonic()
    res = subprocess.run([*nitro_cmd(), "train", f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                         env=nitro_env(), timeout=300, cwd=run_dir.parent)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - start < 120
    return run_dir, res


def test_quickstart_outputs_are_complete_and_accurate(quickstart) -> None:
    run_dir, res = quickstart
    for f in (".hydra/config.yaml", "metrics.csv", "summary.json", "train.log", "checkpoints/last.npz",
              "checkpoints/best.npz"):
        assert (run_dir / f).is_file(), f
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    cfg = yaml.safe_load((run_dir / ".hydra/config.yaml").read_text())
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["experiment"] == "custom" and summary["trainer"] == "default" and summary["seed"] == 42
    assert summary["compat"] == cfg["compat"] and summary["compat"]["name"] == "exact"
    assert summary["epochs_run"] == cfg["trainer"]["max_epochs"]
    assert summary["test_accuracy"] >= 0.90, summary
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_acc", "test_acc", "head1_acc",
                             "head2_acc", "lr_inv", "seconds"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, summary["epochs_run"] + 1))
    assert float(rows[-1]["test_acc"]) == summary["test_accuracy"]
    best = max(rows, key=lambda r: float(r["val_acc"]))  # first epoch with the best validation accuracy
    assert int(best["epoch"]) == summary["best_epoch"]
    assert float(best["test_acc"]) == summary["best_test_accuracy"]
    assert load_checkpoint(run_dir / "checkpoints/best.npz").state["epoch"] == summary["best_epoch"]
    assert f"epoch {summary['epochs_run']}/" in (run_dir / "train.log").read_text()
    assert "Traceback" not in res.stderr


def test_eval_of_last_checkpoint_reproduces_the_summary_exactly(quickstart, nitro, tmp_path: Path) -> None:
    run_dir, _ = quickstart
    res = nitro("eval", f"ckpt={run_dir / 'checkpoints/last.npz'}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "ev/eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert report["test_accuracy"] == summary["test_accuracy"]
    assert repr(summary["test_accuracy"]) in res.stdout
    assert report["n"] == 2000 and len(report["head_accuracies"]) == 2
    confusion = np.array(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 2000
    assert np.trace(confusion) / 2000 == report["test_accuracy"]
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [float(rows[-1][f"head{i}_acc"]) for i in (1, 2)] == list(report["head_accuracies"].values())


def test_paper_protocol_scores_whole_test_batches_and_eval_agrees(nitro, tmp_path: Path) -> None:
    run = tmp_path / "paper"
    res = nitro("train", "trainer=paper", *TINY, f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trainer"] == "paper" and summary["val_accuracy"] is None
    assert summary["best_test_accuracy"] == summary["test_accuracy"]  # one epoch: best over epochs = it
    res = nitro("eval", f"ckpt={run / 'checkpoints/last.npz'}", f"hydra.run.dir={tmp_path / 'ev'}")
    report = json.loads((tmp_path / "ev/eval.json").read_text())
    assert report["n"] == 1984  # 2,000 test images, whole batches of 64 only
    assert report["test_accuracy"] == summary["test_accuracy"]
    assert list(csv.DictReader((run / "metrics.csv").open()))[0]["val_acc"] == ""


def test_multirun_writes_one_run_dir_per_job_and_report_groups_them(nitro, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = nitro("train", "-m", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [s["seed"] for s in summaries] == [1, 2]
    assert all(s["status"] == "completed" for s in summaries)
    assert summaries[0]["group"] == summaries[1]["group"]
    assert summaries[0]["test_accuracy"] != summaries[1]["test_accuracy"]
    res = nitro("report", f"runs={sweep}", f"hydra.run.dir={tmp_path / 'rep'}")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "rep/report.md").is_file() and (tmp_path / "rep/report.csv").is_file()


# Without decay and with lr_inv = amp = 1 the weights outgrow int32 within the first epoch: a failure that
# only training finds.
OVERFLOW = ["optimizer.amp=1", "optimizer.fwd_decay_inv=null", "optimizer.subnet_decay_inv=null"]


def test_a_failing_job_does_not_stop_the_sweep(nitro, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = nitro("train", "-m", "optimizer.lr_inv=1,512", *OVERFLOW, *TINY, f"hydra.sweep.dir={sweep}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "1 job(s) of the sweep failed" in res.stderr.splitlines()[-1]
    failed = json.loads((sweep / "0/summary.json").read_text())
    assert failed["status"] == "failed" and "integer overflow" in failed["error"]
    assert json.loads((sweep / "1/summary.json").read_text())["status"] == "completed"


def test_a_sweep_with_a_bad_job_is_refused_before_any_job_runs(nitro, tmp_path: Path) -> None:
    clean_error(nitro("train", "-m", "trainer.batch_size=64,-1", *TINY), "job 1 (trainer.batch_size=-1",
                "trainer.batch_size must be in", "no job was run")
    assert not (tmp_path / "multirun").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "model=nope"], ["unknown model preset 'nope'", "mlp1", "model="]),
        (["train", "trainer.batch_size=0"], ["trainer.batch_size", "got 0"]),
        (["train", "+experiment=paper/mlp1_mnist"], ["write experiment=paper/mlp1_mnist, without the +"]),
        (["train", *TINY], ["already holds a run", "resume="]),
        (["train", "resume={run}/checkpoints/last.npz", "model.hidden=[64]"], ["cannot change model.hidden"]),
        (["train", "resume=nowhere.npz"], ["does not exist"]),
        (["train", "resume={run}/checkpoints/last.npz", "trainer.max_epochs=0"], ["trainer.max_epochs"]),
        (["eval", "ckpt={run}/checkpoints/last.npz", "data=cifar10"], ["cifar10 has 3x32x32"]),
        (["train", "trainer.batch_size=-1"], ["trainer.batch_size", "-1"]),
        (["train", "trainer.limit_train_batches=0"], ["trainer.limit_train_batches must be >= 1, got 0"]),
        (["train", "trainer.limit_test_batches=abc"], ["trainer.limit_test_batches must be an integer"]),
        (["train", "resume={run}/checkpoints/last.npz", "trainer.limit_train_batches=1.5"],
         ["trainer.limit_train_batches must be an integer or null, got 1.5"]),
        (["train", "data=mnist", "data.root=/nonexistent"], ["/nonexistent", "nitro data fetch mnist"]),
        (["eval", "ckpt=README.md"], ["README.md", "not an .npz archive"]),
        (["train", "experiment=paper/nope"], ["paper/mlp1_mnist"]),
        (["train", "trainer.epochs=3"], ["unknown config key 'trainer.epochs'", "--cfg job"]),
        (["train", "+trainer.epochs=3"], ["unknown config key trainer.epochs", "max_epochs"]),
        (["train", "optimizer.lr_inv=0"], ["optimizer.lr_inv"]),
        (["train", "model.dropout=1"], ["model.dropout", "[0.0, 1.0)"]),
        (["train", "model.hidden=[0,5]"], ["model.hidden"]),
        (["train", "seed=abc"], ["seed must be an integer"]),
        (["train", "trainer.batch_size=["], ["cannot parse the overrides"]),
        (["train", "model=vgg8b", "model.hidden=[]"], ["model.hidden"]),
        (["train", "trainer.batch_size=100000"], ["exceeds the 9000 training images"]),
        (["train", "engine=cupy"] if shutil.which("nvidia-smi") is None else ["train", "engine=nope"],
         ["engine"]),
        (["eval"], ["needs a checkpoint", "ckpt="]),
        (["eval", "ckpt=nowhere.npz"], ["does not exist"]),
        (["frobnicate"], ["unknown command", "train"]),
    ],
)
def test_refused_commands_end_in_one_line_and_touch_nothing(nitro, tiny_run: Path, tmp_path: Path,
                                                           args: list[str], needles: list[str]) -> None:
    """Each command is aimed at a completed run's folder: refused before anything is written, it leaves
    every file there byte-identical and no new folder under outputs/ or multirun/."""
    (tmp_path / "README.md").write_text("# not a checkpoint\n")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = file_hashes(run)
    args = [a.format(run=run) for a in args]
    res = nitro(*args, f"hydra.run.dir={run}" if args[0] != "frobnicate" else "")
    clean_error(res, *needles)
    assert file_hashes(run) == before
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("args", [["train", "trainer.batch_size=0"], ["train", "data=mnist", "data.root=/no"],
                                  ["train", "-m", "seed=1,2", "model=mlp1,nope"],
                                  ["eval", "ckpt=nowhere.npz"], ["report", "runs=nowhere"]])
def test_a_refused_command_leaves_no_folder_behind(nitro, tmp_path: Path, args: list[str]) -> None:
    clean_error(nitro(*args))
    assert list(tmp_path.iterdir()) == []


def _stand_in(path: Path, kind: str) -> None:
    """Put something that is not what belongs at `path` there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink loop":
        (path.parent / "other").symlink_to(path.name)
        path.symlink_to("other")
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:  # a link to nothing
        path.symlink_to(path.parent / "nowhere")


@pytest.mark.parametrize(("where", "kind", "needle"), [
    ("file", "symlink loop", "is a symlink loop"),
    ("file", "FIFO", "is a FIFO (named pipe), not a regular file, where a dataset file belongs"),
    ("file", "folder", "is a folder, not a regular file, where a dataset file belongs"),
    ("file", "dangling", "is a broken symbolic link"),
    ("folder", "FIFO", "is a FIFO (named pipe), not a folder, where a folder belongs"),
    ("root", "symlink loop", "the data root {root} is a symlink loop"),
    ("root", "FIFO", "the data root {root} is a FIFO (named pipe), not a folder"),
])
def test_a_dataset_path_that_is_not_a_file_is_called_what_it_is(nitro, tmp_path: Path, where: str, kind: str,
                                                                 needle: str) -> None:
    """is_file() is False for all of these: they used to be reported as missing files."""
    root = tmp_path / "data"
    path = {"file": root / "MNIST/raw/train-images-idx3-ubyte", "folder": root / "MNIST/raw",
            "root": root}[where]
    _stand_in(path, kind)
    res = nitro("train", "data=mnist", f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}", timeout=60)
    message = clean_error(res, "dataset 'mnist'", needle.format(root=root), str(path))
    assert "missing" not in message
    assert not (tmp_path / "run").exists()


LONG = "x" * 300  # a name longer than the 255 bytes a file name may have


@pytest.mark.parametrize(("args", "needles"), [
    (["train", "data=mnist", f"data.root={LONG}"], ["dataset 'mnist'", "file name too long", "300 bytes",
                                                    "set data.root (or $NITRO_DATA) to a path with shorter"]),
    (["train", f"data={LONG}"], ["unknown data preset 'xxxx", "(300 characters)", "choose one of: cifar10"]),
    (["train", f"experiment=paper/{LONG}"], ["unknown experiment preset 'paper/xxxx", "paper/mlp1_mnist"]),
    (["train", f"hydra.run.dir={LONG}/run"], ["file name too long", "300 bytes"]),
    (["train", f"resume={LONG}/last.npz"], ["file name too long", "300 bytes"]),
    (["eval", f"ckpt={LONG}/best.npz"], ["checkpoint: file name too long", "300 bytes"]),
    (["export", f"ckpt={LONG}/best.npz"], ["checkpoint: file name too long", "300 bytes"]),
    (["data", "list", "--root", LONG], ["file name too long", "300 bytes"]),
])
def test_a_name_too_long_is_called_that(nitro, args: list[str], needles: list[str]) -> None:
    """Not an "invalid override" with a hint about config groups, nor a traceback."""
    message = clean_error(nitro(*args, timeout=60), *needles)
    assert "invalid override" not in message and "config groups" not in message and LONG not in message


def test_an_output_folder_that_cannot_be_made_is_one_line(nitro, tmp_path: Path) -> None:
    clean_error(nitro("train", *TINY, "hydra.run.dir=/proc/nitro_run"), "cannot create the output folder",
                "/proc/nitro_run", "hydra.run.dir=")


def _help_groups(help_text: str) -> set[str]:
    """The config groups that a --help page offers."""
    if "== Configuration groups ==" not in help_text:
        return set()
    section = help_text.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    return {line.split(":", 1)[0] for line in section.splitlines()[1:] if ": " in line}


@pytest.mark.parametrize(("command", "groups"), [("eval", {"data", "engine"}), ("export", set()),
                                                 ("report", set())])
def test_each_help_page_lists_only_its_own_config_groups(nitro, command: str, groups: set[str]) -> None:
    """Every command's config shares one folder with train's groups; its --help must not offer them."""
    res = nitro(command, "--help")
    assert res.returncode == 0, res.stderr
    assert f"nitro {command}" in res.stdout and "== Config ==" in res.stdout
    assert _help_groups(res.stdout) == groups
    assert not any(line.startswith(("model:", "optimizer:", "trainer:")) for line in res.stdout.splitlines())


def test_the_train_help_page_lists_its_config_groups(nitro) -> None:
    res = nitro("train", "--help")
    assert res.returncode == 0, res.stderr
    assert {"compat", "data", "engine", "experiment/paper", "model", "optimizer", "trainer"} <= \
        _help_groups(res.stdout)
    assert "model: mlp1, mlp2, mlp3, mlp4, vgg11b, vgg8b" in res.stdout


def test_output_through_a_pipe_is_not_wrapped_unless_columns_says_so(tiny_run: Path, tmp_path: Path) -> None:
    """rich wrapped at 80 columns in logs and pipes, splitting paths (checkpoints/be / st.npz) and headers."""
    deep = tmp_path / ("a_folder_name_long_enough_to_pass_eighty_columns_" * 2) / "run"
    shutil.copytree(tiny_run, deep)
    best, out = deep / "checkpoints/best.npz", deep.parent / "report"
    env = nitro_env()
    del env["COLUMNS"]

    def nitro_piped(*args: str, **extra: str) -> str:
        res = subprocess.run([*nitro_cmd(), *args], capture_output=True, text=True, env={**env, **extra},
                             timeout=180, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert str(best) in nitro_piped("eval", f"ckpt={best}", f"hydra.run.dir={deep.parent / 'eval'}")
    report = nitro_piped("report", f"runs={deep}", f"out={out}")
    assert f"Report written to {out}" in report and "┃ Experiment ┃" in report
    assert str(best) not in nitro_piped("eval", f"ckpt={best}", f"hydra.run.dir={deep.parent / 'eval2'}",
                                        COLUMNS="80")


def test_help_version_and_composed_config(nitro) -> None:
    for args in ([], ["--help"]):
        res = nitro(*args)
        assert res.returncode == 0 and "usage: nitro" in res.stdout
        assert all(c in res.stdout for c in ("train", "eval", "report", "data"))
    res = nitro("--version")
    assert res.returncode == 0 and res.stdout.startswith("nitro ")
    res = nitro("train", "--help")
    assert res.returncode == 0 and "nitro train" in res.stdout and "experiment" in res.stdout
    res = nitro("train", "--cfg", "job", "experiment=paper/vgg8b_cifar10")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["experiment"] == "paper/vgg8b_cifar10" and cfg["trainer"]["name"] == "paper"
    assert cfg["model"]["preset"] == "vgg8b" and cfg["model"]["dropout"] == 0.15
    assert cfg["optimizer"]["fwd_decay_inv"] == 25000 and cfg["data"]["augment"] is True


# ----------------------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run that every interrupted-and-resumed run must match bit for bit."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    res = subprocess.run([*nitro_cmd(), "train", *KILLABLE, f"hydra.run.dir={run_dir}"], capture_output=True,
                         text=True, env=nitro_env(), timeout=300, cwd=run_dir.parent)
    assert res.returncode == 0, res.stderr
    return run_dir


def _start(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*nitro_cmd(), "train", *KILLABLE, f"hydra.run.dir={run_dir}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=nitro_env(),
                            cwd=run_dir.parent)


def _continue_command(stderr: str) -> list[str]:
    """The arguments of the `nitro ...` command an interrupted run prints to continue it."""
    [line] = [x for x in stderr.splitlines() if x.startswith("interrupted: ")]
    words = shlex.split(line.split("; continue with ", 1)[1])
    assert words[0] == "nitro", line
    return words[1:]


def _wait_rows(run_dir: Path, rows: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    metrics = run_dir / "metrics.csv"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) > rows:
            return
        time.sleep(0.01)
    raise AssertionError(f"run did not reach {rows} epochs: {proc.poll()}")


def _same_params(a: Path, b: Path) -> None:
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys() and pa
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k


def _same_metrics(a: Path, b: Path) -> None:
    def cut(p: Path) -> list[list[str]]:
        return [r[:-1] for r in csv.reader((p / "metrics.csv").open())]  # all but the wall-clock seconds

    assert cut(a) == cut(b)


def test_sigkill_after_epoch_two_then_resume_is_bit_identical(reference: Path, tmp_path: Path, nitro) -> None:
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_rows(run_dir, 2, proc)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(run_dir / "checkpoints/last.npz").state["epoch"] >= 2
    res = nitro("train", f"resume={run_dir / 'checkpoints/last.npz'}",
                f"hydra.run.dir={tmp_path / 'resumed'}")
    assert res.returncode == 0, res.stderr
    _same_params(reference / "checkpoints/last.npz", tmp_path / "resumed/checkpoints/last.npz")
    _same_metrics(reference, tmp_path / "resumed")
    ref, new = (json.loads((d / "summary.json").read_text()) for d in (reference, tmp_path / "resumed"))
    for key in ("test_accuracy", "best_test_accuracy", "best_epoch", "epochs_run", "group", "status"):
        assert ref[key] == new[key], key
    _same_params(reference / "checkpoints/best.npz", tmp_path / "resumed/checkpoints/best.npz")


MAX_KILLS = 8


def test_sigkill_at_random_moments_never_leaves_an_unreadable_checkpoint(reference: Path,
                                                                         tmp_path: Path) -> None:
    run_dir, rng, kills = tmp_path / "run", random.Random(7), 0
    proc = _start(run_dir)
    while kills < MAX_KILLS:  # bounded: on a slow host a start may never outlive 3 s
        try:
            proc.wait(timeout=rng.uniform(1.0, 3.0))
            break
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            kills += 1
        last = run_dir / "checkpoints/last.npz"
        if last.exists():
            load_checkpoint(last)  # never unreadable
            proc = _start(run_dir, f"resume={last}")
        else:  # killed before its first save, possibly before Hydra made the run folder
            shutil.rmtree(run_dir, ignore_errors=True)
            proc = _start(run_dir)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert kills >= 1
    _same_params(reference / "checkpoints/last.npz", run_dir / "checkpoints/last.npz")
    _same_metrics(reference, run_dir)


def test_sigterm_stops_mid_epoch_saves_and_resumes_bit_identically(reference: Path, tmp_path: Path,
                                                                   nitro) -> None:
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_rows(run_dir, 1, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    state = load_checkpoint(run_dir / "checkpoints/last.npz").state
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    hint = _continue_command(err)  # continues in the same folder, so the run stays one run
    assert hint == ["train", f"resume={run_dir / 'checkpoints/last.npz'}", f"hydra.run.dir={run_dir}"]
    res = nitro(*hint)
    assert res.returncode == 0, res.stderr
    if state["position"] is not None:
        assert f"batch {state['position']['next_batch']}" in res.stdout
    _same_params(reference / "checkpoints/last.npz", run_dir / "checkpoints/last.npz")
    _same_metrics(reference, run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


# A short MNIST run that reads its dataset from a data root named on the command line only.
MNIST_RUN = ["data=mnist", "model.hidden=[32]", "trainer.batch_size=8", "trainer.max_epochs=2",
             "trainer.limit_train_batches=2000", "trainer.limit_test_batches=2", "engine=numpy"]


@pytest.fixture
def own_data_root(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A data root of its own (a name Hydra must read quoted) linking to $NITRO_DATA's MNIST, and an
    environment whose $NITRO_DATA is empty: a command that forgets data.root finds no dataset."""
    real = real_data_root(*(f"MNIST/raw/{n}" for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")))
    root = tmp_path / "my data,v1"
    root.mkdir()
    (root / "MNIST").symlink_to(real / "MNIST")
    (tmp_path / "no data").mkdir()
    return root, {**nitro_env(), "NITRO_DATA": str(tmp_path / "no data")}


def _run_suggested(words: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a suggested `nitro ...` command as a user would paste it, from another folder."""
    assert words[0] == "nitro", words
    cwd.mkdir()
    return subprocess.run([*nitro_cmd(), *words[1:]], capture_output=True, text=True, env=env, timeout=300,
                          cwd=cwd)


def test_ctrl_c_suggests_a_command_that_carries_the_data_root(own_data_root: tuple[Path, dict[str, str]],
                                                              tmp_path: Path) -> None:
    root, env = own_data_root
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*nitro_cmd(), "train", *MNIST_RUN, f"data.root='{root}'",
                             f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    assert proc.stdout is not None
    for line in proc.stdout:  # training has started
        if "run dir" in line:
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err
    hint = _continue_command(err)
    assert hint == ["train", f"resume={run_dir / 'checkpoints/last.npz'}", f"hydra.run.dir={run_dir}",
                    f"data.root='{root}'"]
    res = _run_suggested(["nitro", *hint], env, tmp_path / "elsewhere")
    assert res.returncode == 0, res.stderr
    assert "resumed from" in res.stdout
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_disk_full_suggests_a_command_that_continues_the_run_in_its_folder(
        own_data_root: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, env = own_data_root
    run_dir = tmp_path / "run"
    res = subprocess.run([*nitro_cmd(), "train", *MNIST_RUN, "trainer.max_epochs=1", f"data.root='{root}'",
                          f"hydra.run.dir={run_dir}"], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    last = run_dir / "checkpoints/last.npz"
    limit = last.stat().st_size // 2

    def cap_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = subprocess.run([*nitro_cmd(), "train", f"resume={last}", "trainer.max_epochs=2",
                          f"data.root='{root}'", f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                         env=env, timeout=300, cwd=tmp_path, preexec_fn=cap_file_size)
    message = clean_error(res, "cannot write checkpoint", "is intact")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    res = _run_suggested(shlex.split(message.split("`")[1]), env, tmp_path / "elsewhere")
    assert res.returncode == 0, res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())  # the same run, in its own folder
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert not (tmp_path / "elsewhere/outputs").exists()


def test_resume_may_extend_the_run_but_not_change_it(tiny_run: Path, nitro, tmp_path: Path) -> None:
    last = tiny_run / "checkpoints/last.npz"
    clean_error(nitro("train", f"resume={last}", "model.hidden=[64]", f"hydra.run.dir={tmp_path / 'a'}"),
                "cannot change model.hidden")
    clean_error(nitro("train", f"resume={last}", "model=mlp2", f"hydra.run.dir={tmp_path / 'b'}"),
                "cannot change model")
    clean_error(nitro("train", f"resume={last}", "trainer=paper", f"hydra.run.dir={tmp_path / 'd'}"),
                "cannot change trainer")
    # naming the run's own trainer group again is no change, even with a longer run
    res = nitro("train", f"resume={last}", "trainer=default", "trainer.max_epochs=3",
                f"hydra.run.dir={tmp_path / 'c'}")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "c/summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["status"] == "completed"
    cfg = yaml.safe_load((tmp_path / "c/.hydra/config.yaml").read_text())
    assert cfg["model"]["hidden"] == [32] and cfg["trainer"]["max_epochs"] == 3


def test_limit_train_batches_trains_exactly_n_batches_and_may_change_on_resume(nitro, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = nitro("train", *TINY, "trainer.limit_train_batches=3", "trainer.limit_test_batches=2",
                f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr
    state = load_checkpoint(run / "checkpoints/last.npz").state
    assert state["samples"] == 3 * 64 and state["epoch"] == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples_per_s"] == round(state["samples"] / state["train_seconds"], 1)
    (row,) = csv.DictReader((run / "metrics.csv").open())
    ckpt = load_checkpoint(run / "checkpoints/last.npz")  # scored: the first 2 batches of 64 of each split
    raw, norm = load_dataset("mnist_mini"), Normalizer.from_state_dict(ckpt.section("norm/", strip=True))
    first = model_from_checkpoint(ckpt).evaluate(norm.apply(raw.test_x[:128]), raw.test_y[:128]).accuracy
    assert float(row["test_acc"]) == first and (float(row["val_acc"]) * 128).is_integer(), row
    assert "limited epochs: 3 training batches, 2 test/val batches" in (run / "train.log").read_text()
    last = run / "checkpoints/last.npz"
    res = nitro("train", f"resume={last}", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                "trainer.limit_train_batches=2")
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(last).state["samples"] == 5 * 64
    res = nitro("train", f"resume={last}", f"hydra.run.dir={run}", "trainer.max_epochs=3",
                "trainer.limit_train_batches=null", "trainer.limit_test_batches=null")
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(last).state["samples"] == 5 * 64 + 9000 // 64 * 64  # then a whole epoch
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and (float(rows[2]["val_acc"]) * 1000).is_integer()


def test_a_checkpoint_written_before_the_limits_existed_resumes_and_evaluates(tiny_ckpt: Path, tmp_path: Path,
                                                                              nitro) -> None:
    ckpt = load_checkpoint(tiny_ckpt)
    trainer = ckpt.state["config"]["trainer"]
    assert (trainer.pop("limit_train_batches"), trainer.pop("limit_test_batches")) == (None, None)
    old = tmp_path / "old.npz"
    save_checkpoint(old, ckpt.arrays, ckpt.state)
    res = nitro("eval", f"ckpt={old}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert res.returncode == 0, res.stderr
    res = nitro("train", f"resume={old}", "trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load((tmp_path / "run/.hydra/config.yaml").read_text())
    assert cfg["trainer"]["limit_train_batches"] is None and cfg["trainer"]["limit_test_batches"] is None


def test_a_new_run_never_overwrites_another_runs_checkpoints(tiny_run: Path, tmp_path: Path, nitro) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "checkpoints/last.npz").read_bytes()
    clean_error(nitro("train", *TINY, "model=mlp2", f"hydra.run.dir={run}"), "already holds a run", "resume=")
    assert (run / "checkpoints/last.npz").read_bytes() == before
    assert yaml.safe_load((run / ".hydra/config.yaml").read_text())["model"]["preset"] == "mlp1"


# ------------------------------------------------------------------------------- hostile checkpoints


def _bad_checkpoints(tiny_ckpt: Path, tmp_path: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    data = tiny_ckpt.read_bytes()
    out = {}
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    out["truncated"] = (tmp_path / "truncated.npz", "not a usable nitro checkpoint")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x10
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    out["flipped"] = (tmp_path / "flipped.npz", "not a usable nitro checkpoint")
    out["pickle"] = (pickled_checkpoint(tmp_path / "pickle.npz", marker, tiny_ckpt), "pickle")
    (tmp_path / "text.npz").write_text("epoch: 3\n")
    out["text"] = (tmp_path / "text.npz", "not an .npz archive")
    np.savez(tmp_path / "foreign.npz", w=np.zeros((3, 3), dtype=np.int32))
    out["foreign"] = (tmp_path / "foreign.npz", "foreign")
    # A forged file: a valid manifest (anyone can compute one) over nonsense run state.
    real = load_checkpoint(tiny_ckpt)
    forged = {**real.state, "config": {"model": 5}, "model": {"preset": "mlp1", "hidden": [10**12]},
              "epoch": "x", "rng": None}
    save_checkpoint(tmp_path / "forged.npz", real.arrays, forged)
    out["forged"] = (tmp_path / "forged.npz", "not written by `nitro train`")
    return out


@pytest.mark.parametrize("kind", ["truncated", "flipped", "pickle", "text", "foreign", "forged"])
def test_bad_checkpoints_are_refused_by_eval_and_resume(kind: str, tiny_ckpt: Path, tmp_path: Path,
                                                        nitro) -> None:
    marker = tmp_path / "pwned"
    path, needle = _bad_checkpoints(tiny_ckpt, tmp_path, marker)[kind]
    clean_error(nitro("eval", f"ckpt={path}", f"hydra.run.dir={tmp_path / 'e'}"), needle)
    clean_error(nitro("train", f"resume={path}", f"hydra.run.dir={tmp_path / 't'}"), needle)
    assert not marker.exists()
    assert not (tmp_path / "t/checkpoints/last.npz").exists()


def test_eval_refuses_a_dataset_of_another_shape(tiny_ckpt: Path, tmp_path: Path, nitro) -> None:
    clean_error(nitro("eval", f"ckpt={tiny_ckpt}", "data=cifar10", f"hydra.run.dir={tmp_path / 'e'}"),
                "1x28x28", "cifar10 has 3x32x32")


def test_full_disk_while_checkpointing_stops_cleanly_and_keeps_the_last_checkpoint(tiny_run: Path,
                                                                                   tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    last = run / "checkpoints/last.npz"
    limit = last.stat().st_size // 2  # caps every file the process writes: the checkpoint no longer fits

    def cap_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write() then raises instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = subprocess.run([*nitro_cmd(), "train", f"resume={last}", "trainer.max_epochs=3",
                          f"hydra.run.dir={run}"], capture_output=True, text=True, env=nitro_env(),
                         timeout=180, cwd=tmp_path, preexec_fn=cap_file_size)
    clean_error(res, "cannot write checkpoint", "is intact", f"resume={last}")
    assert load_checkpoint(last).state["epoch"] == 2
    assert not list(last.parent.glob(".*.tmp"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "cannot write checkpoint" in summary["error"]
    # The summary describes what is on disk: the two epochs of last.npz and metrics.csv, not the third.
    assert summary["epochs_run"] == 2 and len((run / "metrics.csv").read_text().splitlines()) == 3


def test_tab_completion_goes_through_the_subcommand(nitro) -> None:
    res = nitro("-sc", "install=bash")
    assert res.returncode == 0 and res.stdout.rstrip().endswith("hydra_bash_completion nitro")

    def query(line: str) -> list[str]:
        env = {**nitro_env(), "COMP_LINE": line, "COMP_POINT": str(len(line))}
        out = subprocess.run([*nitro_cmd(), "-sc", "query=bash"], capture_output=True, text=True, env=env,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert query("nitro tr") == ["train"]
    assert "model=vgg8b" in query("nitro train model=")
    assert "ckpt=" in query("nitro eval ck")


def test_an_integer_overflow_stops_the_run_with_a_clear_error(nitro, tmp_path: Path):
    """Without decay and with lr_inv = amp = 1 the weights outgrow int32 within the first epoch."""
    run_dir = tmp_path / "ovf"
    res = nitro("train", *TINY, "optimizer.lr_inv=1", *OVERFLOW, f"hydra.run.dir={run_dir}")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "integer overflow in epoch 1: weight update of layer block1" in res.stderr
    assert "do not fit int32" in res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "overflow" in summary["error"]


# ------------------------------------------------------------------------ one run, one folder


def test_two_runs_started_at_once_get_a_folder_each(tmp_path: Path) -> None:
    procs = [subprocess.Popen([*nitro_cmd(), "train", *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=nitro_env(), cwd=tmp_path) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    runs = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 2
    for run in runs:
        assert len((run / "metrics.csv").read_text().splitlines()) == 2  # its header and its one epoch
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        assert load_checkpoint(run / "checkpoints/last.npz").state["epoch"] == 1
        assert not (run / ".lock").exists()


def test_a_second_writer_is_refused_and_the_first_run_is_as_if_alone(reference: Path, tmp_path: Path,
                                                                      nitro) -> None:
    run_dir = tmp_path / "run"
    first = _start(run_dir)
    _wait_rows(run_dir, 0, first)  # its metrics.csv exists: it holds the folder
    first.send_signal(signal.SIGSTOP)  # held still, so that the second one surely meets it at work
    try:
        second = nitro("train", *KILLABLE, f"hydra.run.dir={run_dir}")
    finally:
        first.send_signal(signal.SIGCONT)
    clean_error(second, str(run_dir), f"in use by process {first.pid} on")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    _same_params(reference / "checkpoints/last.npz", run_dir / "checkpoints/last.npz")
    _same_metrics(reference, run_dir)
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == \
        sorted(p.relative_to(reference) for p in reference.rglob("*"))
    assert (run_dir / ".hydra/config.yaml").read_bytes() == (reference / ".hydra/config.yaml").read_bytes()


# The jobs of the sweeps below: KILLABLE for 2 epochs.
SWEEP_JOB = [*(a for a in KILLABLE if not a.startswith("trainer.max_epochs")), "trainer.max_epochs=2"]


def test_an_interrupted_sweep_is_completed_by_one_command(tmp_path: Path, nitro) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    res = nitro("train", "-m", "seed=1,2,3", *SWEEP_JOB, f"hydra.sweep.dir={whole}", timeout=300)
    assert res.returncode == 0, res.stderr
    sweep = subprocess.Popen([*nitro_cmd(), "train", "-m", "seed=1,2,3", *SWEEP_JOB,
                              f"hydra.sweep.dir={cut}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=nitro_env(),
                             cwd=tmp_path)
    _wait_rows(cut / "1", 0, sweep)  # job 2 of 3 is training
    time.sleep(0.3)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 128 + signal.SIGTERM, err
    assert json.loads((cut / "1/summary.json").read_text())["status"] == "interrupted"
    assert not (cut / "2").exists()
    finished = file_hashes(cut / "0")
    again = _continue_command(err)
    assert again[:2] == ["train", "-m"] and again[-2:] == [f"hydra.sweep.dir={cut}", "resume=auto"]
    res = nitro(*again, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "nothing to train" in res.stdout and file_hashes(cut / "0") == finished  # job 1 was left as it was
    for job in ("0", "1", "2"):
        _same_params(whole / job / "checkpoints/last.npz", cut / job / "checkpoints/last.npz")
        _same_metrics(whole / job, cut / job)
    res = nitro("report", f"runs={cut}", f"out={tmp_path / 'rep'}")
    assert res.returncode == 0, res.stderr
    [row] = list(csv.DictReader((tmp_path / "rep/report.csv").open()))
    assert row["n"] == "3" and row["seeds"] == "1 2 3"


def test_a_seed_run_twice_counts_once_in_the_report(tmp_path: Path, nitro) -> None:
    for _ in range(2):  # the same sweep twice, each into its own default folder
        res = nitro("train", "-m", "seed=1,2", *TINY)
        assert res.returncode == 0, res.stderr
    first, second = sorted((tmp_path / "multirun").glob("*/*"))
    # A sweep refused in an existing sweep folder leaves it as it was.
    before = file_hashes(first)
    clean_error(nitro("train", "-m", "seed=1,2", *TINY, f"hydra.sweep.dir={first}"), "already holds a run",
                "resume=auto")
    clean_error(nitro("train", "-m", "seed=1,2", *TINY, "trainer.batch_size=0", f"hydra.sweep.dir={first}"),
                "trainer.batch_size")
    assert file_hashes(first) == before and len(list((tmp_path / "multirun").glob("*/*"))) == 2
    res = nitro("train", f"resume={first / '0/checkpoints/last.npz'}", f"hydra.run.dir={tmp_path / 'again'}")
    assert res.returncode == 0, res.stderr
    res = nitro("report", f"out={tmp_path / 'rep'}", f"runs=[multirun,{tmp_path / 'again'}]")
    assert res.returncode == 0, res.stderr
    [row] = list(csv.DictReader((tmp_path / "rep/report.csv").open()))
    assert row["n"] == "2" and row["seeds"] == "1 2"
    warnings = [w for w in res.stdout.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 3 and sum("seed 1:" in w for w in warnings) == 2
    assert all("left out; counted once" in w for w in warnings)
    newest = str((second / "1").relative_to(tmp_path))  # seed 2's newest run, named where it is left out
    assert any(f"its newest run {newest}" in w for w in warnings)


def test_modified_paper_rows_are_not_compared_with_the_paper(tmp_path: Path, nitro) -> None:
    mini = tmp_path / "runs/mini"
    res = nitro("train", "experiment=paper/mlp1_mnist", "data=mnist_mini", "trainer.max_epochs=3",
                "engine=numpy", f"hydra.run.dir={mini}")
    assert res.returncode == 0, res.stderr
    root = real_data_root("MNIST/raw/train-images-idx3-ubyte")
    res = nitro("train", "experiment=paper/mlp1_mnist", "trainer.max_epochs=2", "engine=numpy",
                f"data.root={root}", f"hydra.run.dir={tmp_path / 'runs/short'}", timeout=300)
    assert res.returncode == 0, res.stderr
    res = nitro("report", f"runs={tmp_path / 'runs'}", f"out={tmp_path / 'rep'}")
    assert res.returncode == 0, res.stderr
    rows = {r["data"]: r for r in csv.DictReader((tmp_path / "rep/report.csv").open())}
    assert rows["mnist_mini"]["modified"] == "data.name" and rows["mnist_mini"]["paper_mean_pct"] == ""
    assert rows["mnist"]["modified"] == "" and rows["mnist"]["paper_mean_pct"] == "97.36"
    md = (tmp_path / "rep/report.md").read_text()
    # the two runs share experiment and protocol: each is labelled by the settings that tell them apart
    assert "| paper/mlp1_mnist (modified) data.name=mnist_mini trainer.max_epochs=3 | paper |" in md
    assert "| paper/mlp1_mnist data.name=mnist trainer.max_epochs=2 | paper |" in md
    assert "| 2 (budget 2 of 150) |" in md


@pytest.mark.skipif(shutil.which("script") is None, reason="script(1) provides the pseudo-terminal")
def test_in_a_terminal_train_and_eval_say_where_and_how_far(tiny_run: Path, tmp_path: Path) -> None:
    def in_terminal(*args: str) -> str:
        cmd = shlex.join([*nitro_cmd(), *args])
        res = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True,
                             env={**nitro_env(), "COLUMNS": "300"}, timeout=180, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:]
        return res.stdout

    run_dir = tmp_path / "run"
    out = in_terminal("train", *TINY, f"hydra.run.dir={run_dir}")
    assert "━" in out  # the rich bars, so this was a terminal
    assert f"run dir {run_dir}:" in out and f"; outputs in {run_dir}" in out and "epoch 1/1" in out
    out = in_terminal("eval", f"ckpt={tiny_run / 'checkpoints/last.npz'}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert "evaluating" in out and "2000/2000" in out


@pytest.mark.parametrize("command", ["eval", "report"])
def test_eval_and_report_refuse_an_output_folder_in_use(command: str, tiny_run: Path, tmp_path: Path,
                                                        nitro) -> None:
    folder = tmp_path / "busy"
    with lock_held_elsewhere(folder) as holder:
        args = ([f"ckpt={tiny_run / 'checkpoints/last.npz'}", f"hydra.run.dir={folder}"] if command == "eval"
                else [f"runs={tiny_run}", f"out={folder}"])
        clean_error(nitro(command, *args), str(folder), f"in use by process {holder.pid}")
    assert [p.name for p in folder.iterdir()] == [".lock"] and not (tmp_path / "outputs").exists()

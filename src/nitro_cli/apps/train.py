"""`nitro train`: compose a run with Hydra, check it before anything is written, and hand it to the runner."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from ..data import DATASETS
from ..engine import BackendUnavailable, RngStreams, get_backend
from ..errors import NitroError
from ..runner import (
    Checkpoint,
    Summary,
    TrainingInterrupted,
    build_network,
    check_run_dir,
    continue_command,
    finished_run,
    fit,
    load_checkpoint,
    resume_config,
    validate_train_config,
)
from ..runner.checkpoint import atomic_write_text
from ..runner.prepare import check_data
from ..runner.rundir import COMPLETED, busy_error, lock_folder, lock_holder, read_status, unlock_folder
from ..track import check_loggers
from .common import JobInterrupted, explicit_keys, plain_config, run_task, task_config


@dataclass
class Plan:
    """What a checked `nitro train` will do in its folder."""

    config: dict[str, Any]  # the config to train with: the checkpoint's one when resuming
    ckpt: Checkpoint | None
    finished: str | None  # why a finished run resumed in its own folder has nothing left to train


def plan_run(cfg: DictConfig, run_dir: Path, overrides: list[str], here: bool) -> Plan:
    """Check a run before anything is written: its config, its resume, its folder and, when it runs on this
    machine (`here`), its dataset and engine. Raises NitroError naming the first problem."""
    holder = lock_holder(run_dir)
    if holder is not None:
        raise busy_error(run_dir, holder)
    composed = validate_train_config(plain_config(cfg))
    resume = composed["resume"]
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.npz"
        resume = str(last) if last.is_file() else None
    ckpt = load_checkpoint(to_absolute_path(resume)) if resume else None
    if ckpt is not None:
        composed = validate_train_config(resume_config(ckpt, {**composed, "resume": resume},
                                                       explicit_keys(overrides)))
    finished = None
    if ckpt is not None and ckpt.path is not None and ckpt.path.parent.resolve() == run_dir / "checkpoints":
        finished = finished_run(ckpt, composed) if read_status(run_dir) == COMPLETED else None
    if here and finished is None:
        check_data(composed)
        check_loggers(composed["logger"])
        if composed["model"]["features"] is not None:  # custom VGG widths may not fit the images
            info = DATASETS[composed["data"]["name"]]
            build_network(composed, tuple(info.shape), info.num_classes, RngStreams(0).init)
        if composed["engine"]["backend"] == "cupy":
            try:
                get_backend("cupy")
            except BackendUnavailable as exc:
                raise NitroError(str(exc)) from None
    check_run_dir(run_dir, ckpt, composed)
    return Plan(composed, ckpt, finished)


def check(config: DictConfig, run_dir: Path, here: bool) -> None:
    """The Preflight check of `nitro train` (see apps/common.py)."""
    plan_run(task_config(config), run_dir.resolve(), list(config.hydra.overrides.task), here)


def train(cfg: DictConfig) -> Summary | None:
    """Lock the run folder, check the run again (its folder may have changed since the command's checks),
    then train. Where the run meets its dataset and engine is left to `fit`: a sweep's job may run on another
    machine than the one that checked it, and `fit` records a failure there in the run's summary.json."""
    hc = HydraConfig.get()
    run_dir = lock_folder(Path(hc.runtime.output_dir))
    try:
        plan = plan_run(cfg, run_dir, list(hc.overrides.task), False)
        if plan.finished is not None:
            print(f"nothing to train: the run in {run_dir} {plan.finished}; left as it is", flush=True)
            return None
        write_hydra_files(run_dir, plan.config)
        sweep_dir = Path(hc.sweep.dir).absolute() if hc.mode == RunMode.MULTIRUN else None
        return fit(plan.config, run_dir, resume=plan.ckpt, sweep_dir=sweep_dir)
    except TrainingInterrupted as exc:
        command = _continue_command(run_dir, plan.config)
        if _submitit_job():
            # scancel, preemption: this job alone stops (fit recorded it as interrupted). Ending with an error
            # hands the sweep a result that names the job; an exit would leave none, and where sacct cannot
            # tell (no accounting storage) the sweep would wait for that job forever.
            raise JobInterrupted(f"{exc}; continue the sweep with `{command}`") from None
        print(f"interrupted: stopped {exc.where} and saved {exc.checkpoint}; continue with {command}",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + exc.signum) from None
    except OSError as exc:  # outputs that are not checkpoints: metrics.csv, summary.json, train.log
        raise NitroError(f"cannot write the run's outputs in {run_dir}: {exc.strerror or exc}") from exc
    finally:
        unlock_folder(run_dir)


def _submitit_job() -> bool:
    """Whether this run is a sweep's job that a submitit launcher (SLURM, local) runs in its own process."""
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and "submitit_launcher" in str(hc.launcher.get("_target_"))


def _continue_command(run_dir: Path, config: dict[str, Any]) -> str:
    """The command that continues this run (`config`) in its own folder; for a sweep, the whole sweep."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return continue_command(run_dir, config)
    sweep_dir = Path(hc.sweep.dir).absolute()
    sweep = f"hydra.sweep.dir={sweep_dir}"
    if sys.argv[0] == "nitro train":  # the basic launcher: this job runs in the sweep's own process
        args = sys.argv[1:]
    else:  # a job that a launcher started in another process, maybe on another machine
        try:
            args = _sweep_arguments(sweep_dir)
        except (OSError, yaml.YAMLError, LookupError, TypeError):
            return f"the sweep's command plus {sweep} resume=auto"
    args = [a for a in args if not a.startswith(("hydra.sweep.dir=", "resume="))]
    return shlex.join(["nitro", "train", *args, sweep, "resume=auto"])


def _sweep_arguments(sweep_dir: Path) -> list[str]:
    """The sweep's command-line arguments, from the multirun.yaml Hydra writes into its folder before
    launching (`-m` stands for the hydra.mode=MULTIRUN that Hydra adds)."""
    overrides = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["overrides"]
    return ["-m", *(o for o in overrides["hydra"] if o != "hydra.mode=MULTIRUN"), *overrides["task"]]


def write_hydra_files(run_dir: Path, config: dict[str, Any]) -> None:
    """.hydra/config.yaml (what this run is: the checkpoint's config when resuming), hydra.yaml and
    overrides.yaml, as Hydra would write them, but only for a run that passed its checks."""
    folder = run_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    atomic_write_text(folder / "hydra.yaml", OmegaConf.to_yaml(HydraConfig.instance().cfg))
    atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(HydraConfig.get().overrides.task))


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `nitro train`."""
    run_task(lambda: train(cfg))


if __name__ == "__main__":
    main()

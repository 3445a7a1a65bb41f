"""`nitro tune`: an Optuna study over config keys (Hydra app). The command's checks run before anything is
written (`check`); the study itself is the sweeper's (tune/sweeper.py); each trial's job is `run_trial`."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ..errors import NitroError
from ..runner import Summary, TrainingInterrupted, fit, validate_train_config
from ..runner.rundir import busy_error, lock_folder, lock_holder, unlock_folder
from ..tune.settings import WHERE, Settings, parse_settings, require_validation
from ..tune.study import attach, check_continuation, identity, optuna_module
from . import common
from .common import JobInterrupted, Refused, explicit_keys, plain_config, run_task, task_config
from .train import plan_run, write_hydra_files

SWEEPER = "hydra_plugins.nitro_tune_sweeper.NitroTuneSweeper"


def _settings(hydra_node: DictConfig) -> Settings:
    if str(hydra_node.sweeper.get("_target_")) != SWEEPER:
        raise NitroError("nitro tune runs its trials through its own sweeper; drop the hydra/sweeper "
                         "override (the launcher is yours to choose: hydra/launcher=...)")
    return parse_settings(OmegaConf.to_container(hydra_node.sweeper, resolve=True))  # type: ignore[arg-type]


class Preflight(common.Preflight):
    """`nitro tune`'s Preflight (configs/tune.yaml): the command is checked once, search space included,
    before its sweep folder is taken; its trials are the study's to draw, not a list of jobs to check."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra sets its config only per job; the default folder, tune/${hydra:runtime.choices.search},
        # needs it here and in the sweeper and launcher that follow in this process.
        HydraConfig.instance().set_config(config)
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        try:
            holder = lock_holder(sweep_dir)
            if holder is not None:
                raise busy_error(sweep_dir, holder)
            self.check(config, sweep_dir, "SlurmLauncher" not in str(config.hydra.launcher.get("_target_")))
            lock_folder(sweep_dir)
        except NitroError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except Exception as exc:
            raise Refused(exc) from exc


def check(config: DictConfig, sweep_dir: Path, here: bool) -> None:
    """The check of a `nitro tune` command (`config`: the composed one, with its `hydra` node): the
    settings, the trials' base config and environment, every corner of the search space composed and
    validated as a trial, and, for a study that exists in `sweep_dir`, that this command is the same
    search."""
    if config.hydra.mode != RunMode.MULTIRUN:
        raise NitroError("nitro tune runs a study of many trials: drop hydra.mode=RUN")
    settings = _settings(config.hydra)
    task = task_config(config)
    overrides = list(config.hydra.overrides.task)
    base = validate_train_config(plain_config(task))
    if base["resume"] is not None:
        raise NitroError("nitro tune runs every trial from scratch: drop resume= (to continue a study, run "
                         "the same command again)")
    require_validation(base)
    searched = {p.key for p in settings.space}
    both = [k for k in explicit_keys(overrides) if k in searched]
    if both:
        raise NitroError(f"{both[0]} is searched ({WHERE}.space.{both[0]}); drop its override {both[0]}=...")
    # The trials' own check, as their jobs will run it, against a folder that no trial uses.
    plan_run(task, sweep_dir / "trial-check", overrides, here)
    loader = GlobalHydra.instance().config_loader()
    for param in settings.space:
        for value in param.probes():
            override = param.override(value)
            try:
                trial = loader.load_sweep_config(config, [*overrides, override])
            except Exception as exc:
                why = ("it is not a config key (`nitro tune --cfg job` lists them)"
                       if "not in struct" in str(exc.__cause__) else str(exc).splitlines()[0])
                raise NitroError(f"{WHERE}.space.{param.key}: a trial with {override} cannot be composed: "
                                 f"{why}") from None
            try:
                require_validation(validate_train_config(plain_config(task_config(trial))),
                                   f"a trial with {override}")
            except NitroError as exc:
                raise NitroError(f"{WHERE}.space.{param.key}: {exc}") from None
    optuna_module()
    check_continuation(settings, sweep_dir, identity(base, settings))


def run_trial(cfg: DictConfig) -> Summary | None:
    """One trial, in the job a launcher started for it: train in the trial's folder, reporting each epoch's
    validation accuracy to the study (which may prune it), and record how the trial ended."""
    hc = HydraConfig.get()
    settings = _settings(hc)  # type: ignore[arg-type]
    run_dir = lock_folder(Path(hc.runtime.output_dir))
    try:
        job = attach(settings, Path(hc.sweep.dir).absolute(), hc.job.num, run_dir)
        if job is None:
            print(f"trial {hc.job.num} no longer waits for a job (a later session of the study gave it up "
                  "and queued it again); nothing to do", flush=True)
            with contextlib.suppress(OSError):
                unlock_folder(run_dir)
                run_dir.rmdir()  # only when empty
            return None
        try:
            plan = plan_run(cfg, run_dir, list(hc.overrides.task), False)
            write_hydra_files(run_dir, plan.config)
            job.max_epochs = plan.config["trainer"]["max_epochs"]
            summary = fit(plan.config, run_dir, on_epoch=job, sweep_dir=Path(hc.sweep.dir).absolute())
        except TrainingInterrupted as exc:
            job.interrupt(str(exc))
            if "BasicLauncher" in str(hc.launcher.get("_target_")):
                raise  # this process is the sweeper's: it stops the study
            raise JobInterrupted(f"trial {job.number} stopped ({exc}); it runs again when the study "
                                 "continues") from None
        except OSError as exc:
            job.fail(f"cannot write the run's outputs: {exc.strerror or exc}")
            raise NitroError(f"cannot write the run's outputs in {run_dir}: {exc.strerror or exc}") from exc
        except Exception as exc:
            job.fail(str(exc) if isinstance(exc, NitroError) else f"{exc.__class__.__name__}: {exc}")
            raise
        job.complete(summary)
        return summary
    finally:
        unlock_folder(run_dir)


@hydra.main(config_path="../configs", config_name="tune", version_base="1.3")
def main(cfg: DictConfig) -> Any:
    """Hydra entry point of `nitro tune` (always a multirun: each job is a trial)."""
    return run_task(lambda: run_trial(cfg))


if __name__ == "__main__":
    main()

"""What the Hydra apps share: checking a command before Hydra writes anything, one writer per output
folder, and turning a task's failure into one `error:` line and the right exit code."""

from __future__ import annotations

import importlib
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ..errors import NitroError
from ..runner.rundir import busy_error, lock_folder, lock_holder
from .orphans import stop_when_orphaned

# `${uid:}` in the default output folders: a short random suffix, drawn once per command (cached like
# `${now:}`, so that every job of a sweep sees the same one), so that two commands started in the same
# microsecond still get two folders.
OmegaConf.register_new_resolver("uid", lambda: secrets.token_hex(3), use_cache=True, replace=True)


def own_config_groups() -> str:
    """The config-groups section of a command's --help (configs/hydra/help/nitro.yaml): the groups that
    the command's defaults list selects, with their presets, or nothing for a command that has none.

    The commands share one config folder, and Hydra's own page lists every group in it: `nitro eval --help`
    offered train's model, optimizer and trainer, and `nitro report --help` groups it has no key for.
    """
    own = {g.split("/")[0] for g in HydraConfig.get().runtime.choices if not g.startswith("hydra/")}
    hydra = GlobalHydra.instance().hydra
    if not own or hydra is None:
        return ""
    groups = hydra.format_config_groups(lambda g: g.split("/")[0] in own)
    return ("== Configuration groups ==\nCompose your configuration from those groups (group=option)\n\n"
            f"{groups}\n")


OmegaConf.register_new_resolver("nitro_config_groups", own_config_groups, replace=True)

# check(config, folder, here): raise NitroError if the job whose full config (with its `hydra` node) is
# `config` may not write into `folder`; `here` says whether the job will run on this machine, so that its
# environment (datasets, GPU) can be checked too.
Check = Callable[[DictConfig, Path, bool], None]


class Refused(BaseException):
    """A command that its Preflight check refused with an error that is not a NitroError (e.g. Hydra's, for
    a bad sweep value); `nitro` turns `error` into one line. A BaseException, like the SystemExit raised for
    a NitroError, because Hydra turns an Exception raised by a callback into a warning and goes on to create
    the folder and run the app."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Preflight(Callback):
    """Checks a command, and takes its output folder, before Hydra creates that folder or writes .hydra/.

    Hydra creates the run folder and writes its .hydra/ files before the app runs: a command refused only
    then would leave a folder behind, or rewrite the metadata of the run already in that folder. `check`
    names the app's check ("module:function"). A sweep checks every job first and locks its sweep folder;
    each job locks its own folder when it starts, wherever it runs.
    """

    def __init__(self, check: str) -> None:
        module, _, name = check.partition(":")
        self.check: Check = getattr(importlib.import_module(module), name)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            folder = Path(str(config.hydra.run.dir)).absolute()
            self.check(config, folder, True)
            lock_folder(folder)
        except NitroError as exc:
            _refuse(str(exc))
        except Exception as exc:
            raise Refused(exc) from exc

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
            holder = lock_holder(sweep_dir)
            if holder is not None:
                raise busy_error(sweep_dir, holder)
            here = not str(config.hydra.launcher.get("_target_", "")).endswith("SlurmLauncher")
            for num, (job, folder) in enumerate(sweep_jobs(config)):
                try:
                    self.check(job, folder, here)
                except NitroError as exc:
                    overrides = " ".join(job.hydra.overrides.task)
                    raise NitroError(f"job {num} ({overrides}) of the sweep: {exc}; no job was run") from None
            lock_folder(sweep_dir)
        except NitroError as exc:
            _refuse(str(exc))
        except Exception as exc:
            raise Refused(exc) from exc


def _refuse(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def sweep_jobs(config: DictConfig) -> list[tuple[DictConfig, Path]]:
    """Each job of a sweep as the launcher will run it: its full config and its output folder."""
    loader = GlobalHydra.instance().config_loader()
    arguments = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    arguments += list(config.hydra.overrides.task)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    jobs = []
    for num, job_overrides in enumerate(x for batch in BasicSweeper.split_arguments(overrides, None)
                                        for x in batch):
        job = loader.load_sweep_config(config, job_overrides)
        with open_dict(job):
            job.hydra.job.id = job.hydra.job.num = num
        folder = Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)
        jobs.append((job, folder.absolute()))
    return jobs


def task_config(config: DictConfig) -> DictConfig:
    """The config an app sees: `config` without its `hydra` node."""
    return OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])


class JobFailed(NitroError):
    """A job of a multirun failed; raised (not exited) so that Hydra goes on with the other jobs."""


class JobInterrupted(NitroError):
    """A sweep's job that a signal stopped in a launcher's process (scancel, preemption), resumable: raised
    so that the launcher gets a result naming it, while its summary.json says `interrupted`."""


# Jobs of the current sweep that failed (the basic launcher runs them in this process), for the last line.
FAILED_JOBS: list[str] = []


def sweep_failure_message(exc: JobFailed | None = None) -> str:
    """One paragraph for the end of a sweep in which some jobs failed.

    With Hydra's basic launcher the jobs ran in this process (FAILED_JOBS lists them, their errors are
    printed above). Other launchers (joblib, submitit) ran them in other processes, possibly on other
    machines, whose stderr the user may not see: Hydra hands back the first failed job's JobFailed, so the
    message names that job and its error, and where every job's status is recorded.
    """
    if FAILED_JOBS or exc is None:
        jobs = ", ".join(FAILED_JOBS) or "some jobs"
        return (f"{len(FAILED_JOBS) or 'some'} job(s) of the sweep failed ({jobs}); the others ran to the "
                "end. Each failed job's error is printed above and stored in its summary.json")
    sweep_dir = getattr(exc, "sweep_dir", None)
    where = (f"; `nitro report runs={sweep_dir}` lists every failed job with its error" if sweep_dir
             else "; each job's summary.json records its status and error")
    return f"{exc}. The sweep's other jobs ran to the end{where}"


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as a plain dict with interpolations resolved (a bad one is a user error)."""
    try:
        out = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise NitroError(f"cannot resolve the config: {' '.join(str(exc).split())}") from None
    assert isinstance(out, dict)
    return out


def explicit_keys(overrides: list[str]) -> list[str]:
    """The config keys set on the command line (`model=mlp2` -> "model", `+a.b=1` -> "a.b")."""
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key and not key.startswith("hydra"):
            keys.append(key.removesuffix("@_global_"))
    return keys


def run_task(task: Callable[[], Any]) -> Any:
    """Run an app's work; a NitroError ends as `error: <message>` and exit code 2, a stdout closed by its
    reader as exit code 0.

    Inside a multirun the error is re-raised as JobFailed instead: Hydra records the job as failed and runs
    the others (a SystemExit would stop the whole sweep); `nitro` exits with 2 at the end. A job in a
    sweep's worker process stops when the sweep's process is gone (see orphans.py).
    """
    try:
        with stop_when_orphaned():
            return task()
    except BrokenPipeError:
        # stdout closed by its reader (`nitro report | head`): the files are written by then. Point stdout
        # at /dev/null so that flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except Exception as exc:
        if not isinstance(exc, NitroError):
            exc.nitro_in_task = True  # type: ignore[attr-defined]  # a bug of ours, not a bad config
            raise
        return _task_failed(exc)


def _task_failed(exc: NitroError) -> None:
    """Print the error; exit 2 in a single run, re-raise as JobFailed inside a multirun."""
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        overrides = " ".join(hc.overrides.task)
        print(f"error: job {hc.job.num} ({overrides}): {exc}", file=sys.stderr, flush=True)
        FAILED_JOBS.append(f"job {hc.job.num}")  # read by this process only if the job ran in it
        how = "stopped" if isinstance(exc, JobInterrupted) else "failed"
        failed = JobFailed(f"job {hc.job.num} ({overrides}) of the sweep {how}: {exc}")
        failed.sweep_dir = str(hc.sweep.dir)  # type: ignore[attr-defined]  # travels back pickled
        raise failed from None
    print(f"error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None

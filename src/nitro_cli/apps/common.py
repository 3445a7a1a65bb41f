"""What the Hydra apps share: turning a task's failure into one `error:` line and the right exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import NitroError


class JobFailed(NitroError):
    """A job of a multirun failed; raised (not exited) so that Hydra goes on with the other jobs."""


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


def explicit_keys() -> list[str]:
    """The config keys set on the command line (`model=mlp2` -> "model", `+a.b=1` -> "a.b")."""
    keys = []
    for item in HydraConfig.get().overrides.task:
        key = item.split("=", 1)[0].lstrip("+~")
        if key and not key.startswith("hydra"):
            keys.append(key.removesuffix("@_global_"))
    return keys


def run_task(task: Callable[[], Any]) -> Any:
    """Run an app's work; a NitroError ends as `error: <message>` and exit code 2.

    Inside a multirun the error is re-raised as JobFailed instead: Hydra records the job as failed and runs
    the others (a SystemExit would stop the whole sweep); `nitro` exits with 2 at the end.
    """
    try:
        return task()
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
        failed = JobFailed(f"job {hc.job.num} ({overrides}) of the sweep failed: {exc}")
        failed.sweep_dir = str(hc.sweep.dir)  # type: ignore[attr-defined]  # travels back pickled
        raise failed from None
    print(f"error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None

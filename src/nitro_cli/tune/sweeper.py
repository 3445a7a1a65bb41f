"""The Hydra sweeper of `nitro tune`: asks the study for trials and runs them through the configured launcher.

Why a sweeper of our own and not hydra-optuna-sweeper: that plugin pins optuna<3 (whose SQLite storage
fails under SQLAlchemy 2), asks for a pre-release hydra-core, and cannot prune, since its jobs never see
their trial. Here each batch of trials goes to `hydra/launcher` (this process, joblib's local workers, or
SLURM jobs through submitit), and each job opens its trial in the study's storage itself: it reports every
epoch's validation accuracy, stops when the pruner says so, and records its own end, so a trial's result
is kept even when the command that launched it is gone. The sweeper waits for a whole batch before the
next (Hydra's launchers take batches), so a pruned trial's slot stays free until its batch ends.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ..runner import TrainingInterrupted
from ..runner.config import validate_train_config
from .results import conclude
from .settings import Param, Settings, parse_settings, render
from .study import (
    BEST_EPOCH,
    ERROR,
    INTERRUPTED,
    census,
    ended,
    identity,
    mark_lost,
    open_study,
    requeue_interrupted,
    study_name,
)

if TYPE_CHECKING:
    import optuna

# Seconds between looks at trials that jobs of an earlier session still run.
POLL_S = 5.0


class StudySweeper(Sweeper):
    """Runs `n_trials` trials of the study in batches of as many as the launcher runs at once."""

    def __init__(self, **_settings: Any) -> None:
        # The settings are read from the composed config in setup(), checked there with their key names.
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None
        cfg = self.config
        settings = parse_settings(OmegaConf.to_container(cfg.hydra.sweeper, resolve=True))  # type: ignore[arg-type]
        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        base = validate_train_config(OmegaConf.to_container(task, resolve=True))  # type: ignore[arg-type]
        sweep_dir = Path(str(cfg.hydra.sweep.dir)).absolute()
        study = open_study(settings, sweep_dir, identity(base, settings))
        stop = _Stop()
        run = _Session(self, settings, study, sweep_dir, arguments, stop)
        with stop.installed():
            try:
                run.loop()
            except TrainingInterrupted as exc:  # a trial that ran in this process (the basic launcher)
                run.stopped(exc.signum)
            except KeyboardInterrupt:
                run.stopped(stop.signum or signal.SIGINT)
            except BaseException:
                mark_lost(study)  # a launcher that failed: its trials are not running
                raise
        conclude(study, settings, sweep_dir, base)


def parallelism(launcher: DictConfig) -> int:
    """How many jobs the launcher runs at once: joblib's n_jobs, submitit's array_parallelism, else 1."""
    target = str(launcher.get("_target_", ""))
    if "joblib" in target.lower():
        n = int(launcher.get("n_jobs") or -1)
        return n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n)  # -1: every CPU, -2: all but one
    if "submitit" in target.lower():
        return max(1, int(launcher.get("array_parallelism") or 1))
    return 1


class _Session:
    """One `nitro tune` command's part of the study."""

    def __init__(self, sweeper: StudySweeper, settings: Settings, study: optuna.Study, sweep_dir: Path,
                 arguments: list[str], stop: _Stop) -> None:
        assert sweeper.config is not None
        self.sweeper, self.settings, self.study, self.sweep_dir = sweeper, settings, study, sweep_dir
        self.arguments, self.stop = list(arguments), stop
        self.batch = settings.n_jobs or parallelism(sweeper.config.hydra.launcher)
        # The basic launcher runs each trial in this process, writing to the study: never broken off.
        self.in_process = "BasicLauncher" in str(sweeper.config.hydra.launcher.get("_target_"))

    def say(self, text: str) -> None:
        print(text, flush=True)

    def loop(self) -> None:
        lost = mark_lost(self.study)
        again = requeue_interrupted(self.study)
        counts = census(self.study)
        assert self.sweeper.config is not None
        launcher = str(self.sweeper.config.hydra.launcher.get("_target_", "")).rsplit(".", 1)[-1]
        name, url = study_name(self.settings, self.sweep_dir), self.settings.storage_url(self.sweep_dir)
        self.say(f"study {name} ({url}): {ended(counts)} of {self.settings.n_trials} trials ended; "
                 f"{self.batch} at a time ({launcher})")
        if lost:
            self.say(f"marked interrupted (their command or job stopped while they ran): {_trials(lost)}")
        if again:
            self.say(f"queued to run again with the same parameters (interrupted): {_trials(again)}")
        waited: set[int] = set()
        while True:
            self.stop.check()
            counts = census(self.study)
            left = self.settings.n_trials - ended(counts) - counts["running"]
            if left > 0:
                self._run_batch(min(self.batch, left))
                mark_lost(self.study)
                continue
            if not counts["running"]:
                return
            running = [t.number for t in self.study.get_trials(deepcopy=False)
                       if t.state.name == "RUNNING"]
            if set(running) - waited:
                waited |= set(running)
                self.say(f"waiting for {_trials(running)}, run by jobs of an earlier session")
            with self.stop.breakable():
                time.sleep(POLL_S)
            mark_lost(self.study)

    def _run_batch(self, size: int) -> None:
        trials = [self.study.ask() for _ in range(size)]
        jobs = []
        for trial in trials:
            for p in self.settings.space:
                _suggest(trial, p)
            jobs.append((trial.number, [*self.arguments, *self._param_overrides(trial.params)]))
        # Hydra numbers a batch's jobs from initial_job_idx: each job's number (and folder) is its trial's.
        for group in _consecutive(jobs):
            with contextlib.nullcontext() if self.in_process else self.stop.breakable():
                self.sweeper.launcher.launch([job for _, job in group], initial_job_idx=group[0][0])
        self._show([t.number for t in trials])

    def _param_overrides(self, params: dict[str, Any]) -> list[str]:
        return [p.override(params[p.key]) for p in self.settings.space]

    def _show(self, numbers: list[int]) -> None:
        by_number = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for n in numbers:
            t = by_number[n]
            params = " ".join(self._param_overrides(t.params))
            if t.state.name == "COMPLETE":
                what = f"completed, validation accuracy {t.value:.2%} (epoch {t.user_attrs.get(BEST_EPOCH)})"
            elif t.state.name == "PRUNED":
                last = t.last_step
                what = f"pruned after epoch {last} (validation accuracy {t.intermediate_values[last]:.2%})" \
                    if last is not None else "pruned"
            elif INTERRUPTED in t.user_attrs:
                what = f"interrupted ({t.user_attrs[INTERRUPTED]}); it runs again when the study continues"
            elif t.state.name == "FAIL":
                what = f"failed: {t.user_attrs.get(ERROR, 'see its job output above')}"
            else:
                what = t.state.name.lower()
            self.say(f"trial {n}: {what}  [{params}]")

    def stopped(self, signum: int) -> None:
        """The command was interrupted: record what stopped with it, say how to continue, exit 128+signal."""
        lost = mark_lost(self.study)
        counts = census(self.study)
        name = signal.Signals(signum).name
        marked = (f"; {_trials(lost)} stopped with it: marked interrupted, to run again when the study "
                  "continues" if lost else "")
        running = [t.number for t in self.study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
        still = f"; {_trials(running)} go on as jobs and record their results themselves" if running else ""
        kept = f"{counts['completed']} completed, {counts['pruned']} pruned, {counts['failed']} failed"
        print(f"interrupted by {name}: the study keeps its {ended(counts)} ended trials ({kept}){marked}"
              f"{still}. Continue with: {self.continue_command()}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    def continue_command(self) -> str:
        """This command again, in its sweep folder wherever it is started from."""
        hydra_args = [o for o in self.sweeper.config.hydra.overrides.hydra  # type: ignore[union-attr]
                      if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
        return shlex.join(["nitro", "tune", *hydra_args, *self.arguments,
                           f"hydra.sweep.dir={render(str(self.sweep_dir))}"])


def _suggest(trial: optuna.Trial, p: Param) -> None:
    if p.type == "int":
        trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)  # type: ignore[arg-type]
    elif p.type == "float":
        trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    else:
        trial.suggest_categorical(p.key, list(p.choices))


def _consecutive(jobs: list[tuple[int, list[str]]]) -> Iterator[list[tuple[int, list[str]]]]:
    """Runs of jobs whose trial numbers follow each other (nearly always the whole batch)."""
    group: list[tuple[int, list[str]]] = []
    for job in jobs:
        if group and job[0] != group[-1][0] + 1:
            yield group
            group = []
        group.append(job)
    if group:
        yield group


def _trials(numbers: list[int]) -> str:
    return ("trial " if len(numbers) == 1 else "trials ") + ", ".join(str(n) for n in numbers)


class _Stop:
    """SIGINT and SIGTERM in the sweeper. The first is noted, and breaks off only a wait during which this
    process writes nothing (a launcher waiting on jobs in other processes, a poll's sleep): raised anywhere
    else, it could cut one of this process's writes to the study in half, and the transaction left open would
    block every later write (SQLite). Otherwise the session stops at its next step. A second signal ends the
    process at once; the study stays sound (SQLite rolls back a cut write, the next session finds the trials
    that were running)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._breakable = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        if self._breakable:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Stop here if a signal came."""
        if self.signum is not None:
            raise KeyboardInterrupt

    @contextmanager
    def breakable(self) -> Iterator[None]:
        self.check()
        self._breakable = True
        try:
            yield
        finally:
            self._breakable = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

"""The Optuna study behind `nitro tune`: its storage, sampler and pruner, what a trial's job does with it, and
how trials that nobody finished are found and run again.

Optuna is imported here only, on first use, so that the rest of nitro runs without it.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import NitroError
from ..runner.rundir import lock_holder
from .settings import PrunerSettings, SamplerSettings, Settings

if TYPE_CHECKING:
    import optuna

# User attributes of a trial: its run folder and where its job ran (set by the job), the error it failed
# with, the reason it was interrupted (then it runs again, as a new trial with `retry_of`), its best epoch.
RUN_DIR, HOST, PID, SLURM_JOB = "run_dir", "host", "pid", "slurm_job"
ERROR, INTERRUPTED, RETRY_OF, BEST_EPOCH = "error", "interrupted", "retry_of", "best_epoch"
# What the study remembers of the command that started it: a later session must be the same search.
IDENTITY = "nitro"
# Keys that may differ between the sessions of one study: they change where or how visibly trials run.
SESSION_KEYS = ("engine", "logger", "data.root", "trainer.progress", "trainer.eval_batch_size")


def optuna_module() -> ModuleType:
    """Optuna, quiet (nitro prints what became of each trial itself), or a NitroError saying how to get it."""
    try:
        import optuna
    except ImportError:
        raise NitroError("nitro tune needs Optuna: pip install 'nitro-cli[tune]' (`make install` does)") \
            from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _short(exc: Exception) -> str:
    """An exception's message on one line, cut short (SQLAlchemy's run to many lines)."""
    return " ".join(str(exc).split())[:300]


def study_name(settings: Settings, sweep_dir: Path) -> str:
    return settings.study_name or Path(sweep_dir).absolute().name


def _storage(settings: Settings, sweep_dir: Path) -> optuna.storages.RDBStorage:
    optuna = optuna_module()
    url = settings.storage_url(sweep_dir)
    # SQLite: trials write from several processes; wait for the file's lock rather than fail at once.
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:
        raise NitroError(f"cannot open the study's storage {url}: {_short(exc)}") from None


def make_sampler(s: SamplerSettings, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """The sampler of a session. Its seed moves on with the trials the study already has: a continued study
    seeded as its first session was would draw that session's parameters again."""
    optuna = optuna_module()
    seed = None if s.seed is None else (s.seed + trials_so_far) % 2**32
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials)


def make_pruner(p: PrunerSettings) -> optuna.pruners.BasePruner:
    optuna = optuna_module()
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials,
                                           n_warmup_steps=p.n_warmup_steps)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource,
                                                      reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, Mapping) or not node:
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def identity(cfg: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """What makes two sessions the same search: the trials' fixed config (not the searched keys, nor where
    they run) and the search space."""
    searched = [p.key for p in settings.space]
    fixed = {k: v for k, v in _flat(cfg).items()
             if not any(k == s or k.startswith(s + ".") for s in (*searched, *SESSION_KEYS))}
    return json.loads(json.dumps({"config": fixed, "space": {p.key: p.describe() for p in settings.space}}))


def _same_search(study: optuna.Study, mine: dict[str, Any], where: str) -> None:
    theirs = study.user_attrs.get(IDENTITY)
    if not isinstance(theirs, dict) or study.direction.name != "MAXIMIZE":
        raise NitroError(f"{where} holds a study that nitro tune did not start; choose another "
                         "hydra.sweep.dir or hydra.sweeper.study_name")
    then = "; run it with the same settings to continue it, or start a new study in another folder " \
           "(hydra.sweep.dir=...)"
    for part, what in (("config", "config key"), ("space", "search space entry")):
        old, new = theirs.get(part, {}), mine[part]
        for key in sorted(old.keys() | new.keys()):
            if old.get(key, "(absent)") != new.get(key, "(absent)"):
                was, now = old.get(key, "(absent)"), new.get(key, "(absent)")
                raise NitroError(f"the study in {where} was started with {what} {key} = {was!r}, this "
                                 f"command has {now!r}{then}")


def existing_study(settings: Settings, sweep_dir: Path) -> optuna.Study | None:
    """The study this command would continue, or None when it would start one (nothing is created here)."""
    optuna = optuna_module()
    url = settings.storage_url(sweep_dir)
    if settings.storage is None and not (Path(sweep_dir) / "study.db").is_file():
        return None
    try:
        storage = _storage(settings, sweep_dir)
        return optuna.load_study(study_name=study_name(settings, sweep_dir), storage=storage,
                                 sampler=optuna.samplers.RandomSampler(),  # jobs never sample
                                 pruner=make_pruner(settings.pruner))
    except KeyError:  # the storage holds no study of that name
        return None
    except NitroError:
        raise
    except Exception as exc:
        raise NitroError(f"cannot read the study in {url}: {_short(exc)}") from None


def check_continuation(settings: Settings, sweep_dir: Path, mine: dict[str, Any]) -> bool:
    """Refuse to continue a study that another search started; True when there is one to continue."""
    study = existing_study(settings, sweep_dir)
    if study is not None:
        _same_search(study, mine, settings.storage_url(sweep_dir))
    return study is not None


def open_study(settings: Settings, sweep_dir: Path, mine: dict[str, Any]) -> optuna.Study:
    """The study of this search: created, or loaded to continue (load_if_exists) when it is the same one."""
    optuna = optuna_module()
    storage = _storage(settings, sweep_dir)
    name = study_name(settings, sweep_dir)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    pruner=make_pruner(settings.pruner), load_if_exists=True)
    except Exception as exc:
        raise NitroError(f"cannot open the study {name} in {settings.storage_url(sweep_dir)}: "
                         f"{_short(exc)}") from None
    if IDENTITY not in study.user_attrs and not study.trials:
        study.set_user_attr(IDENTITY, mine)
    _same_search(study, mine, settings.storage_url(sweep_dir))
    study.sampler = make_sampler(settings.sampler, len(study.trials))
    return study


def running_elsewhere(frozen: optuna.trial.FrozenTrial) -> bool:
    """Whether a RUNNING trial's job is alive: its run folder is locked (a kernel lock, gone with its
    process). A trial whose job has not started yet (a queued SLURM job) has no folder yet."""
    run_dir = frozen.user_attrs.get(RUN_DIR)
    return run_dir is not None and lock_holder(Path(run_dir)) is not None


def _trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.Trial:
    # Optuna has no public way to reopen a trial by number from another process; its id is FrozenTrial's.
    return optuna_module().trial.Trial(study, frozen._trial_id)


def mark_lost(study: optuna.Study) -> list[int]:
    """Mark each RUNNING trial that no live job runs as interrupted (failed): a killed command or job, a
    queued job of a session that was stopped. Returns their numbers."""
    optuna = optuna_module()
    lost = []
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if running_elsewhere(frozen):
            continue
        try:
            _trial(study, frozen).set_user_attr(INTERRUPTED, "its job ended without recording a result")
            study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it just ended after all
        lost.append(frozen.number)
    return lost


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Queue a new trial with the parameters of each interrupted trial that has not run again yet."""
    optuna = optuna_module()
    trials = study.get_trials(deepcopy=False)
    again = {t.user_attrs.get(RETRY_OF) for t in trials}
    queued = []
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL and INTERRUPTED in t.user_attrs and t.number not in again:
            study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number})
            queued.append(t.number)
    return queued


def census(study: optuna.Study) -> Counter[str]:
    """Trials by what became of them: completed, pruned, failed (an error), interrupted, running, waiting."""
    optuna = optuna_module()
    state = optuna.trial.TrialState
    counts: Counter[str] = Counter()
    for t in study.get_trials(deepcopy=False):
        if t.state == state.FAIL:
            counts["interrupted" if INTERRUPTED in t.user_attrs else "failed"] += 1
        else:
            counts[{state.COMPLETE: "completed", state.PRUNED: "pruned", state.RUNNING: "running",
                    state.WAITING: "waiting"}[t.state]] += 1
    return counts


def ended(counts: Counter[str]) -> int:
    """Trials that count towards n_trials: run to an end, by completing, by pruning or by an error."""
    return counts["completed"] + counts["pruned"] + counts["failed"]


class TrialJob:
    """A trial as its job sees it: the EpochHook that reports each epoch's validation accuracy to the study
    and stops the run when the pruner says so, then the trial's end, recorded in the study."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, pruner: str) -> None:
        self.study, self.trial, self.pruner = study, trial, pruner
        self.pruned_after: int | None = None
        # The run's last epoch: pruning after it would save nothing, and lose a completed trial.
        self.max_epochs: int | None = None

    @property
    def number(self) -> int:
        return self.trial.number

    def __call__(self, row: dict[str, Any]) -> str | None:
        epoch = int(row["epoch"])
        self.trial.report(float(row["val_acc"]), epoch)
        if (self.max_epochs is None or epoch < self.max_epochs) and self.trial.should_prune():
            self.pruned_after = epoch
            return (f"trial {self.number} pruned ({self.pruner} pruner: its validation accuracy trails the "
                    "study's)")
        return None

    def _end(self, state: str, value: float | None = None, **attrs: Any) -> bool:
        optuna = optuna_module()
        try:
            for key, v in attrs.items():
                self.trial.set_user_attr(key, v)
            self.study.tell(self.trial, value, state=getattr(optuna.trial.TrialState, state))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # a later session gave it up meanwhile (its job seemed gone); that one counts
        return True

    def complete(self, summary: Mapping[str, Any]) -> bool:
        """Record a run that ended: pruned, or completed with its best epoch's validation accuracy."""
        if self.pruned_after is not None:
            return self._end("PRUNED")
        return self._end("COMPLETE", float(summary["val_accuracy"]), **{BEST_EPOCH: summary["best_epoch"]})

    def fail(self, error: str) -> bool:
        return self._end("FAIL", **{ERROR: error})

    def interrupt(self, why: str) -> bool:
        return self._end("FAIL", **{INTERRUPTED: why})


def attach(settings: Settings, sweep_dir: Path, number: int, run_dir: Path) -> TrialJob | None:
    """The trial `number` for the job that runs it in `run_dir` (locked by the caller), or None when it no
    longer waits for a job (a later session gave it up and queued it again)."""
    optuna = optuna_module()
    study = existing_study(settings, sweep_dir)
    if study is None:
        raise NitroError(f"no study in {settings.storage_url(sweep_dir)}: trials run through `nitro tune`")
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is None or frozen.state != optuna.trial.TrialState.RUNNING:
        return None
    trial = _trial(study, frozen)
    where = {HOST: socket.gethostname(), PID: os.getpid(), SLURM_JOB: os.environ.get("SLURM_JOB_ID"),
             RUN_DIR: str(Path(run_dir).absolute())}  # the run folder last: it marks the trial as running
    try:
        for key, value in where.items():
            trial.set_user_attr(key, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return TrialJob(study, trial, settings.pruner.name.replace("_", " "))

"""`nitro train`: compose a run with Hydra, validate it, and hand it to the runner."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from ..errors import NitroError
from ..runner import (
    Checkpoint,
    TrainingInterrupted,
    check_run_dir,
    fit,
    load_checkpoint,
    resume_config,
    validate_train_config,
)
from ..runner.checkpoint import atomic_write_text
from .common import explicit_keys, plain_config, run_task


def _failed_summary(run_dir: Path, cfg: DictConfig, message: str) -> None:
    """A run refused before it started still leaves a summary.json, so that reports list it as failed."""
    def get(key: str) -> object:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        return value if isinstance(value, str | int | float) else None

    summary = {"experiment": get("experiment"), "trainer": get("trainer.name"), "seed": get("seed"),
               "status": "failed", "epochs_run": 0, "test_accuracy": None, "best_test_accuracy": None,
               "best_epoch": None, "val_accuracy": None, "wall_seconds": 0.0, "samples_per_s": 0.0,
               "model": get("model.preset"), "data": get("data.name"), "group": None, "error": message}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    except OSError:
        pass  # the error message on stderr is what matters


def train(cfg: DictConfig) -> dict:
    """Validate before any work, resolve a resume, then train into Hydra's run dir."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        composed, ckpt = _prepare(cfg, run_dir)
    except NitroError as exc:
        if not (run_dir / "summary.json").exists():
            _failed_summary(run_dir, cfg, str(exc))
        raise
    try:
        return fit(composed, run_dir, resume=ckpt)
    except TrainingInterrupted as exc:
        if _submitit_job():
            # scancel, preemption: this job alone stops. Ending as a failed job hands the sweep a result that
            # names it; an exit would leave none, and where sacct cannot tell (no accounting storage) the
            # sweep would wait for that job forever.
            command = _continue_command(exc.checkpoint, run_dir)
            raise NitroError(f"{exc}; continue it with `{command}`") from None
        print(f"interrupted: stopped {exc.where} and saved {exc.checkpoint}; continue with "
              f"nitro train resume={exc.checkpoint}", file=sys.stderr, flush=True)
        raise SystemExit(128 + exc.signum) from None
    except OSError as exc:  # outputs that are not checkpoints: metrics.csv, summary.json, train.log
        raise NitroError(f"cannot write the run's outputs in {run_dir}: {exc.strerror or exc}") from exc


def _submitit_job() -> bool:
    """Whether this run is a sweep's job that a submitit launcher (SLURM, local) runs in its own process."""
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and "submitit_launcher" in str(hc.launcher.get("_target_"))


def _continue_command(checkpoint: Path, run_dir: Path) -> str:
    """The sweep's own launcher settings, resuming `checkpoint` into its run folder as a one-job sweep."""
    hydra = [o for o in HydraConfig.get().overrides.hydra
             if o.split("=", 1)[0] not in ("hydra.mode", "hydra.sweep.dir", "hydra.sweep.subdir")]
    args = ["-m", *hydra, f"resume={checkpoint}", f"hydra.sweep.dir={run_dir}", "hydra.sweep.subdir=."]
    return "nitro train " + " ".join(shlex.quote(a) for a in args)


def _prepare(cfg: DictConfig, run_dir: Path) -> tuple[dict[str, Any], Checkpoint | None]:
    """The validated config to train with, and the checkpoint to continue from (if resume= is set)."""
    composed = plain_config(cfg)
    validate_train_config(composed)
    ckpt = None
    if composed.get("resume"):
        ckpt = load_checkpoint(to_absolute_path(str(composed["resume"])))
    try:
        check_run_dir(run_dir, ckpt)
    except NitroError:
        # Hydra has just written this config over the other run's .hydra/config.yaml: put that one back.
        with contextlib.suppress(NitroError, OSError, KeyError):
            other = load_checkpoint(run_dir / "checkpoints" / "last.npz")
            _write_hydra_config(run_dir, other.state["config"])
        raise
    if ckpt is not None:
        composed = resume_config(ckpt, composed, explicit_keys())
        validate_train_config(composed)
        _write_hydra_config(run_dir, composed)  # what this run really is: the checkpoint's config
    return composed, ckpt


def _write_hydra_config(run_dir: Path, config: dict[str, Any]) -> None:
    subdir = HydraConfig.get().output_subdir
    if subdir is not None and (run_dir / subdir).is_dir():
        atomic_write_text(run_dir / subdir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `nitro train`."""
    run_task(lambda: train(cfg))


if __name__ == "__main__":
    main()

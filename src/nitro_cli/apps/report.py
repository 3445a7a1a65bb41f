"""`nitro report`: aggregate training runs over seeds and compare them with the paper's table."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig
from rich.console import Console

from ..errors import NitroError
from ..report import PROTOCOL_NOTES, Presets, check_roots, collect_runs, write_report
from ..runner.rundir import busy_error, lock_folder, lock_holder, unlock_folder
from .common import plain_config, run_task, task_config


class _Console(Console):
    """rich's Console, except that a stdout closed by its reader (`| head`) is no failure: rich would exit
    with 1, but by the time anything is printed every report file is written (`nitro` exits with 0)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def _paths(value: object) -> list[Path]:
    """`runs` as a list of absolute paths; a single string is one folder."""
    if value is None:
        return []
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, ListConfig | list | tuple):
        items = [str(v) for v in value]
    else:
        raise NitroError(f"runs must be a folder or a list of folders, got {value!r}")
    return [Path(to_absolute_path(v)) for v in items if v]


def compose_train(overrides: list[str]) -> dict[str, Any]:
    """The config `nitro train <overrides>` composes, as a plain dict (inside a Hydra app or not)."""
    if GlobalHydra.instance().is_initialized():
        return plain_config(compose("train", overrides=overrides))
    with initialize_config_module("nitro_cli.configs", version_base="1.3"):
        return plain_config(compose("train", overrides=overrides))


def shipped_presets() -> Presets:
    """The paper rows and the trainer and compat presets runs are compared with, from nitro's configs."""
    compats = sorted(f.name.removesuffix(".yaml") for f in (files("nitro_cli.configs") / "compat").iterdir()
                     if f.name.endswith(".yaml"))
    return Presets(compose_train, tuple(p for p in PROTOCOL_NOTES if p != "custom"), tuple(compats))


def _out_dir(cfg: DictConfig, hydra_dir: Path) -> Path:
    return Path(to_absolute_path(str(cfg.out))) if cfg.get("out") else hydra_dir


def check(config: DictConfig, hydra_dir: Path, here: bool) -> None:
    """The Preflight check of `nitro report` (see apps/common.py): folders to scan, runs found, and an
    `out=` folder that no other command is writing to."""
    cfg = task_config(config)
    out = _out_dir(cfg, hydra_dir)
    holder = lock_holder(out)
    if holder is not None:
        raise busy_error(out, holder)
    check_roots(_paths(cfg.get("runs")))


def run_report(cfg: DictConfig) -> list[Path]:
    """Scan `cfg.runs`, write the report files and print the table; returns the files written."""
    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    out = lock_folder(_out_dir(cfg, hydra_dir))
    try:
        report = collect_runs(_paths(cfg.get("runs")), shipped_presets())
        console = _Console()
        try:
            files = write_report(report, out, console)
        except BrokenPipeError:
            raise  # see run_task
        except OSError as exc:
            raise NitroError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
    finally:
        unlock_folder(out)
    done = len(report.runs) - len(report.failed)
    console.print(f"{len(report.groups)} group(s) from {done} completed run(s), "
                  f"{len(report.failed)} failed/unfinished. Report written to {out}", markup=False)
    for f in files:
        console.print(f"  {f.name}", markup=False)
    return files


@hydra.main(config_path="../configs", config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `nitro report`."""
    run_task(lambda: run_report(cfg))


if __name__ == "__main__":
    main()

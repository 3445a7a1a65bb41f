"""`nitro report`: aggregate training runs over seeds and compare them with the paper's table."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig
from rich.console import Console

from ..errors import NitroError
from ..report import collect_runs, write_report


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


def run_report(cfg: DictConfig) -> list[Path]:
    """Scan `cfg.runs`, print the table and write the report files; returns the files written."""
    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    out = Path(to_absolute_path(str(cfg.out))) if cfg.get("out") else hydra_dir
    report = collect_runs(_paths(cfg.get("runs")), exclude=[hydra_dir, out])
    console = Console()
    try:
        files = write_report(report, out, console)
    except OSError as exc:
        raise NitroError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
    done = len(report.runs) - len(report.failed)
    console.print(f"{len(report.groups)} group(s) from {done} completed run(s), "
                  f"{len(report.failed)} failed/unfinished. Report written to {out}", markup=False)
    for f in files:
        console.print(f"  {f.name}", markup=False)
    return files


@hydra.main(config_path="../configs", config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a user-fixable problem ends as one `error:` line and exit code 2."""
    try:
        run_report(cfg)
    except NitroError as exc:
        # Hydra would print a traceback and exit 1 for an exception escaping this function.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

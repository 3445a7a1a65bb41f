"""Aggregation of training runs: mean ± sigma per experiment over seeds, side by side with the paper.

Usable without Hydra: `collect_runs([Path("multirun")])` then `write_report(report, out_dir)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..errors import NitroError
from .aggregate import PROTOCOL_NOTES, Group, Stat, duplicate_seeds, format_seeds, group_runs
from .paper import PAPER_ROWS, PaperRow, paper_row
from .render import (
    display_path,
    plot_accuracy_per_epoch,
    plot_vs_paper,
    print_report,
    write_csv,
    write_markdown,
)
from .runs import Run, find_run_dirs, read_run

__all__ = [
    "PAPER_ROWS", "PROTOCOL_NOTES", "Group", "PaperRow", "Report", "Run", "Stat", "collect_runs",
    "find_run_dirs", "format_seeds", "group_runs", "paper_row", "read_run", "write_report",
]


@dataclass
class Report:
    """Everything found under the scanned folders: the averaged groups and the runs left out."""

    runs: list[Run]
    groups: list[Group]
    failed: list[Run]
    warnings: list[str]


def collect_runs(roots: Iterable[Path], exclude: Iterable[Path] = ()) -> Report:
    """Find, read, classify and group the training runs under `roots`.

    Raises NitroError when no training run is found, naming the folders searched.
    """
    roots = [Path(r) for r in roots]
    dirs = find_run_dirs(roots, exclude=exclude)
    if not dirs:
        missing = [display_path(r) for r in roots if not r.is_dir()]
        searched = ", ".join(display_path(r) for r in roots) or "(none)"
        hint = f" ({', '.join(missing)} not found)" if missing else ""
        raise NitroError(
            f"no training runs found under {searched}{hint}; train with `nitro train` "
            "or point at run folders with runs=[DIR,...]"
        )
    runs = [read_run(d) for d in dirs]
    groups = group_runs(runs)
    failed = [r for r in runs if not r.completed]
    warnings = [f"{r.path}: {note}" for r in runs for note in r.notes]
    warnings += [f"folder {display_path(r)} not found, skipped" for r in roots if not r.is_dir()]
    for g in groups:
        dup = duplicate_seeds(g)
        if dup:
            warnings.append(
                f"{g.experiment} [{g.trainer}] {g.group}: seed(s) {format_seeds(dup)} appear more than once "
                "(the same run in two folders?); every copy is averaged"
            )
    return Report(runs=runs, groups=groups, failed=failed, warnings=warnings)


def write_report(report: Report, out_dir: Path, console: Console | None = None) -> list[Path]:
    """Print the table and write report.md, report.csv and the plots into `out_dir`; returns the files."""
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    print_report(report.groups, report.failed, report.warnings, console)
    written = [out_dir / "report.md", out_dir / "report.csv"]
    write_markdown(written[0], report.groups, report.failed, report.warnings)
    write_csv(written[1], report.groups)
    for name, plot in (("accuracy_per_epoch.png", plot_accuracy_per_epoch), ("vs_paper.png", plot_vs_paper)):
        if plot(out_dir / name, report.groups):
            written.append(out_dir / name)
        else:
            (out_dir / name).unlink(missing_ok=True)  # never leave a stale plot from an earlier report
            why = "no paper rows among the runs" if name == "vs_paper.png" else "no per-epoch metrics"
            console.print(f"{name} not written: {why}", markup=False)
    return written

"""Aggregation of training runs: mean ± sigma per experiment over seeds, side by side with the paper.

Usable as a library: `collect_runs([Path("multirun")], presets)` then `write_report(report, out_dir)`, where
`presets` composes the shipped configs that runs are compared with (the report app uses Hydra's compose).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..errors import NitroError
from .aggregate import PROTOCOL_NOTES, Group, Stat, format_seeds, group_runs
from .identity import Identity, Presets, identify
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
    "PAPER_ROWS", "PROTOCOL_NOTES", "Group", "Identity", "PaperRow", "Presets", "Report", "Run", "Stat",
    "check_roots", "collect_runs", "find_run_dirs", "format_seeds", "group_runs", "identify", "paper_row",
    "read_run", "write_report",
]


@dataclass
class Report:
    """Everything found under the scanned folders: the averaged groups and the runs left out."""

    runs: list[Run]
    groups: list[Group]
    failed: list[Run]
    warnings: list[str]


def check_roots(roots: Iterable[Path]) -> list[Path]:
    """The training run folders under `roots`; NitroError when a root is a file or no run is found."""
    roots = [Path(r) for r in roots]
    for r in roots:
        if r.exists() and not r.is_dir():
            raise NitroError(f"runs: {display_path(r)} is a file; give the folders that hold the runs, e.g. "
                             f"runs={display_path(r.parent)} or runs=[DIR1,DIR2]")
    dirs = find_run_dirs(roots)
    if not dirs:
        missing = [display_path(r) for r in roots if not r.is_dir()]
        searched = ", ".join(display_path(r) for r in roots) or "(none)"
        hint = f" ({', '.join(missing)} not found)" if missing else ""
        raise NitroError(
            f"no training runs found under {searched}{hint}; train with `nitro train` "
            "or point at run folders with runs=[DIR,...]"
        )
    return dirs


def collect_runs(roots: Iterable[Path], presets: Presets) -> Report:
    """Find, read, identify and group the training runs under `roots`.

    `presets` composes the shipped presets that runs are compared with (see identity.py). Raises NitroError
    when a root is a file or no training run is found, naming the folders searched.
    """
    roots = [Path(r) for r in roots]
    runs = [read_run(d) for d in check_roots(roots)]
    groups = group_runs((r, identify(r.config, presets)) for r in runs)
    failed = [r for r in runs if not r.completed]
    warnings = [f"{r.path}: {note}" for r in runs for note in r.notes]
    warnings += [f"folder {display_path(r)} not found, skipped" for r in roots if not r.is_dir()]
    for g in groups:
        kept = {r.seed: r for r in g.runs}
        for dup in g.duplicates:
            newest = display_path(kept[dup.seed].path)
            warnings.append(f"{g.label} [{g.protocol}] seed {dup.seed}: also in {display_path(dup.path)}, "
                            f"left out; counted once, from its newest run {newest}")
    return Report(runs=runs, groups=groups, failed=failed, warnings=warnings)


def write_report(report: Report, out_dir: Path, console: Console | None = None) -> list[Path]:
    """Print the table and write report.md, report.csv and the plots into `out_dir`; returns the files."""
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.md", out_dir / "report.csv"]
    write_markdown(written[0], report.groups, report.failed, report.warnings)
    write_csv(written[1], report.groups)
    notes = []
    for name, plot in (("accuracy_per_epoch.png", plot_accuracy_per_epoch), ("vs_paper.png", plot_vs_paper)):
        if plot(out_dir / name, report.groups):
            written.append(out_dir / name)
        else:
            (out_dir / name).unlink(missing_ok=True)  # never leave a stale plot from an earlier report
            why = "no paper rows among the runs" if name == "vs_paper.png" else "no per-epoch metrics"
            notes.append(f"{name} not written: {why}")
    # Printed once every file is written: a reader that stops early (`| head`) loses nothing.
    print_report(report.groups, report.failed, report.warnings, console)
    for note in notes:
        console.print(note, markup=False)
    return written

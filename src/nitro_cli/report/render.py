"""Turning grouped runs into what a user reads: a terminal table, report.md, report.csv and two plots."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich.console import Console
from rich.table import Table

from .aggregate import PROTOCOL_NOTES, Group, format_seeds
from .runs import Run

HEADERS = ["Experiment", "Protocol", "Compat", "Group", "Seeds", "n", "Epochs", "Final test acc %",
           "Best test acc % [2σ]", "Paper % [2σ]", "Δ pts"]
_TEXT_COLUMNS = ("Experiment", "Protocol", "Compat", "Group", "Seeds", "Epochs")


def pct(x: float) -> str:
    """A fraction as a percentage with 2 decimals."""
    return f"{100.0 * x:.2f}"


def _setting(g: Group) -> str:
    """The protocol, and the arithmetic where it is not the exact default."""
    return g.protocol if g.compat == "exact" else f"{g.protocol}, compat={g.compat}"


def group_cells(g: Group) -> list[str]:
    """One table row for a group, shared by the terminal and markdown tables."""
    final = f"{pct(g.final.mean)} ± {pct(g.final.std)}"
    best = f"{pct(g.best.mean)} ± {pct(g.best.std)} [{pct(2 * g.best.std)}]"
    if g.paper is None:
        paper = delta = "-"
    else:
        paper = f"{g.paper.mean:.2f} ± {g.paper.sigma:.2f} [{g.paper.plus_minus:.2f}]"
        delta = f"{g.delta_points:+.2f}"
    seeds = format_seeds(g.seeds)
    return [g.label, g.protocol, g.compat, g.group, seeds, str(g.n), g.epochs, final, best, paper, delta]


def legend_lines(groups: list[Group]) -> list[str]:
    """What the numbers mean: ± and [..], and which protocol produced each number."""
    lines = [
        "± is the population σ over seeds (ddof=0); [..] is 2σ, "
        "the statistic the paper's README prints as ±.",
        "Final = test accuracy at the last epoch. Best = the protocol's reported number:",
    ]
    for p in sorted({g.protocol for g in groups}):
        lines.append(f"  {p}: {PROTOCOL_NOTES[p]}")
    lines.append("Δ = our best-test mean minus the paper's mean, in percentage points, for runs whose config "
                 "is the paper row's preset (only the seed, engine, data root and epoch budget may differ, "
                 "and the arithmetic may be a shipped compat preset, shown in the Compat column); a run "
                 "that changes anything else is marked modified and not compared.")
    return lines


def display_path(path: Path) -> str:
    """A run path relative to the working directory when it lies below it, else absolute."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


def print_report(groups: list[Group], failed: list[Run], warnings: list[str], console: Console) -> None:
    """The rich table on the terminal, then the runs left out and any warnings."""
    if groups:
        table = Table(title="NITRO-D runs: mean over seeds", title_justify="left")
        for h in HEADERS:
            table.add_column(h, justify="left" if h in _TEXT_COLUMNS else "right", overflow="fold")
        for g in groups:
            table.add_row(*group_cells(g))
        console.print(table)
        for line in legend_lines(groups):
            console.print(line, highlight=False, markup=False)
    else:
        console.print("No completed runs to average.", markup=False)
    if failed:
        console.print()
        fail = Table(title=f"Failed or unfinished runs ({len(failed)}), not averaged", title_justify="left")
        for h in ("Path", "Experiment", "Seed", "Status", "Error"):
            fail.add_column(h, overflow="fold")
        for r in failed:
            fail.add_row(display_path(r.path), r.experiment, _seed(r), r.status, r.error or "")
        console.print(fail)
    for w in warnings:
        console.print(f"warning: {w}", style="yellow", markup=False, highlight=False, soft_wrap=True)


def _seed(r: Run) -> str:
    return "?" if r.seed is None else str(r.seed)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_markdown(path: Path, groups: list[Group], failed: list[Run], warnings: list[str]) -> None:
    """report.md: the same table as the terminal, the legend, the runs left out and warnings."""
    out = ["# NITRO-D report", ""]
    if groups:
        out.append("| " + " | ".join(HEADERS) + " |")
        out.append("|" + "|".join("---" if h in _TEXT_COLUMNS else "---:" for h in HEADERS) + "|")
        for g in groups:
            out.append("| " + " | ".join(_md_escape(c) for c in group_cells(g)) + " |")
        out.append("")
        # indented legend lines are the per-protocol notes: a bullet list in markdown
        lines = legend_lines(groups)
        notes = [f"- {line.strip()}" for line in lines if line.startswith("  ")]
        first, last = lines[:2], lines[-1]
        out += [first[0] + "  ", first[1], "", *notes, "", last]
        out += ["", *per_epoch_lines(groups)]
    else:
        out.append("No completed runs to average.")
    out.append("")
    out.append(f"## Failed or unfinished runs ({len(failed)}), not averaged")
    out.append("")
    if failed:
        out.append("| Path | Experiment | Seed | Status | Error |")
        out.append("|---|---|---|---|---|")
        for r in failed:
            cells = [display_path(r.path), r.experiment, _seed(r), r.status, r.error or ""]
            out.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    else:
        out.append("None.")
    if warnings:
        out += ["", "## Warnings", ""] + [f"- {_md_escape(w)}" for w in warnings]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def per_epoch_lines(groups: list[Group]) -> list[str]:
    """The numbers behind accuracy_per_epoch.png as a markdown table: test accuracy % per epoch, mean ± σ
    over the group's seeds, with the number of runs where fewer than all of them reached that epoch."""
    curves = []
    for g in groups:
        epochs, mean, std, count = g.per_epoch()
        curves.append({int(e): (m, s, int(c)) for e, m, s, c in zip(epochs, mean, std, count, strict=True)})
    all_epochs = sorted(set().union(*curves))
    if not all_epochs:
        return []
    published = list(dict.fromkeys(g.paper for g in groups if g.paper and g.paper.published_epochs))
    names = [f"reference's published run, seed 42 ({p.row})" for p in published]
    names += [_md_escape(f"{g.label} [{_setting(g)}] {g.group}") for g in groups]
    out = ["## Test accuracy per epoch (%)", "", "| Epoch | " + " | ".join(names) + " |",
           "|---:|" + "---:|" * len(names)]
    for epoch in all_epochs:
        cells = [f"{p.published_epochs[epoch - 1]:.2f}" if epoch <= len(p.published_epochs) else ""
                 for p in published]
        for g, curve in zip(groups, curves, strict=True):
            if epoch not in curve:
                cells.append("")
                continue
            m, s, c = curve[epoch]
            cell = pct(m) + (f" ± {pct(s)}" if g.n > 1 else "")
            cells.append(cell + (f" (n={c})" if c < g.n else ""))
        out.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return out


CSV_COLUMNS = [
    "experiment", "modified", "differs", "protocol", "compat", "group", "model", "data", "n", "seeds",
    "epochs_run", "max_epochs",
    "final_test_acc_mean_pct", "final_test_acc_std_pct",
    "best_test_acc_mean_pct", "best_test_acc_std_pct", "best_test_acc_2std_pct",
    "paper_mean_pct", "paper_std_pct", "paper_2std_pct", "delta_pts", "fp_les_pct", "fp_bp_pct",
    "mean_epochs", "mean_wall_seconds",
]


def write_csv(path: Path, groups: list[Group]) -> None:
    """report.csv: one row per group, unrounded percentages (std is population, ddof=0)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for g in groups:
            p = g.paper
            w.writerow({
                "experiment": g.experiment, "modified": " ".join(g.modified), "differs": " ".join(g.differs),
                "protocol": g.protocol, "compat": g.compat,
                "group": g.group, "model": g.model, "data": g.data, "n": g.n,
                "seeds": " ".join("?" if s is None else str(s) for s in g.seeds),
                "epochs_run": " ".join(str(r.epochs_run) for r in g.runs),
                "max_epochs": _num(_mean([r.max_epochs for r in g.runs])),
                "final_test_acc_mean_pct": _num(100 * g.final.mean),
                "final_test_acc_std_pct": _num(100 * g.final.std),
                "best_test_acc_mean_pct": _num(100 * g.best.mean),
                "best_test_acc_std_pct": _num(100 * g.best.std),
                "best_test_acc_2std_pct": _num(200 * g.best.std),
                "paper_mean_pct": _num(p and p.mean), "paper_std_pct": _num(p and p.sigma),
                "paper_2std_pct": _num(p and p.plus_minus), "delta_pts": _num(g.delta_points),
                "fp_les_pct": _num(p and p.fp_les), "fp_bp_pct": _num(p and p.fp_bp),
                "mean_epochs": _num(_mean([r.epochs_run for r in g.runs])),
                "mean_wall_seconds": _num(_mean([r.wall_seconds for r in g.runs])),
            })


def _num(x: float | None) -> str:
    return "" if x is None else str(round(float(x), 6))


def _mean(values: list) -> float | None:
    nums = [float(v) for v in values if isinstance(v, int | float)]
    return float(np.mean(nums)) if len(nums) == len(values) and nums else None


def label(g: Group) -> str:
    return f"{g.label} [{_setting(g)}] {g.group} (n={g.n})"


def plot_accuracy_per_epoch(path: Path, groups: list[Group]) -> bool:
    """Mean test accuracy per epoch with a ±σ band, one line per group. False if no run had metrics."""
    curves = [(g, *g.per_epoch()) for g in groups]
    curves = [c for c in curves if len(c[1])]
    if not curves:
        return False
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for g, epochs, mean, std, _count in curves:
        marker = "o" if len(epochs) < 30 else None  # a run of one epoch still shows up
        (line,) = ax.plot(epochs, 100 * mean, label=label(g), lw=1.5, marker=marker, ms=3)
        ax.fill_between(epochs, 100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy per epoch: mean over seeds, band = ±σ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.savefig(path, dpi=120)
    return True


def plot_vs_paper(path: Path, groups: list[Group]) -> bool:
    """Ours vs the paper for each paper row we ran, error bars = ±σ. False if no group is a paper row."""
    rows: dict[str, list[Group]] = {}
    for g in groups:
        if g.paper is not None:
            rows.setdefault(g.paper.row, []).append(g)
    if not rows:
        return False
    ncols = min(3, len(rows))
    nrows = -(-len(rows) // ncols)
    fig = Figure(figsize=(max(6.0, 4.0 * ncols), 0.6 + 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    for ax, (row, gs) in zip(axes.flat, rows.items(), strict=False):
        paper = gs[0].paper
        assert paper is not None
        names = ["paper"] + [f"ours [{_setting(g)}]\n{' '.join(g.differs) or g.group}" for g in gs]
        means = [paper.mean] + [100 * g.best.mean for g in gs]
        sigmas = [paper.sigma] + [100 * g.best.std for g in gs]
        colors = ["tab:gray"] + ["tab:blue" if g.protocol == "paper" else "tab:orange" for g in gs]
        for i, (m, s, c) in enumerate(zip(means, sigmas, colors, strict=True)):
            ax.errorbar([i], [m], yerr=[s], fmt="o", color=c, capsize=5, ms=6)
        ax.set_xticks(range(len(names)), names, fontsize="small")
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(f"{row} ({paper.model}, {paper.dataset})", fontsize="small")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Ours (best test acc) vs paper\nmean ± σ over seeds (paper σ = README ± / 2)",
                 fontsize="medium")
    fig.savefig(path, dpi=120)
    return True

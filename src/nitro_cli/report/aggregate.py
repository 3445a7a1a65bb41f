"""Grouping completed runs into experiments and computing mean ± sigma over seeds, beside the paper.

A group is (experiment, protocol, config hash): runs that differ only in seed, one run per seed (a seed
run twice, or continued into another folder, counts once: its newest completed run). Sigma is the
population std (ddof=0), the statistic the paper's README doubles for its ±.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .identity import Identity
from .paper import PAPER_MAX_EPOCHS, PAPER_ROWS, PaperRow, paper_row
from .runs import Run

PROTOCOL_NOTES = {
    "paper": "best test accuracy over epochs, scored on whole test batches of 64 (the paper's protocol: "
             "9,984 of 10,000 test images)",
    "default": "test accuracy at the best validation epoch, on every test image",
    "custom": "a trainer that matches no shipped preset (see the runs' .hydra/config.yaml)",
}


@dataclass
class Stat:
    """Mean and population std of one accuracy over a group's seeds, as fractions."""

    mean: float
    std: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        a = np.asarray(list(values), dtype=np.float64)
        return cls(mean=float(a.mean()), std=float(a.std(ddof=0)))


@dataclass
class Group:
    """The completed runs of one experiment identity, and their statistics."""

    experiment: str
    protocol: str
    group: str
    runs: list[Run]
    final: Stat  # test accuracy at the last epoch
    best: Stat  # the protocol's reported number (see PROTOCOL_NOTES)
    paper: PaperRow | None  # the paper row this group reproduces exactly (apart from its epoch budget)
    modified: tuple[str, ...]  # keys in which it differs from the paper row its experiment names
    duplicates: list[Run]  # older runs of a seed that is in `runs`, left out

    @property
    def label(self) -> str:
        """The experiment, marked when it only names a paper row."""
        if not self.modified:
            return self.experiment
        keys = ", ".join(self.modified[:3]) + (f" +{len(self.modified) - 3} more" if len(self.modified) > 3
                                                else "")
        return f"{self.experiment} (modified: {keys})"

    @property
    def epochs(self) -> str:
        """Epochs run ("52-57"), and why short of the budget: stopped early, or (for a row of the paper,
        modified or not) a budget below the paper's."""
        runs = [r.epochs_run for r in self.runs if isinstance(r.epochs_run, int)]
        if not runs:
            return "?"
        text = str(min(runs)) if min(runs) == max(runs) else f"{min(runs)}-{max(runs)}"
        notes = []
        if any(isinstance(r.max_epochs, int) and (r.epochs_run or 0) < r.max_epochs for r in self.runs):
            notes.append("stopped early")
        budgets = {r.max_epochs for r in self.runs}
        if paper_row(self.experiment) is not None and len(budgets) == 1:
            budget = budgets.pop()
            if isinstance(budget, int) and budget < PAPER_MAX_EPOCHS:
                notes.append(f"budget {budget} of {PAPER_MAX_EPOCHS}")
        return text + (f" ({', '.join(notes)})" if notes else "")

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    @property
    def model(self) -> str:
        return _common(r.model for r in self.runs)

    @property
    def data(self) -> str:
        return _common(r.data for r in self.runs)

    @property
    def delta_points(self) -> float | None:
        """Ours (best-test mean) minus the paper's mean, in percentage points."""
        return None if self.paper is None else 100.0 * self.best.mean - self.paper.mean

    def per_epoch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Epochs, mean and population std of test accuracy (fractions), and how many runs reached each.

        Runs that stopped early simply stop contributing, so late epochs may average fewer seeds.
        """
        by_epoch: dict[int, list[float]] = defaultdict(list)
        for r in self.runs:
            for epoch, acc in r.test_acc_per_epoch.items():
                by_epoch[epoch].append(acc)
        epochs = np.array(sorted(by_epoch), dtype=np.int64)
        mean = np.array([np.mean(by_epoch[e]) for e in epochs], dtype=np.float64)
        std = np.array([np.std(by_epoch[e], ddof=0) for e in epochs], dtype=np.float64)
        count = np.array([len(by_epoch[e]) for e in epochs], dtype=np.int64)
        return epochs, mean, std, count


def _common(values: Iterable[str]) -> str:
    distinct = sorted(set(values))
    return distinct[0] if len(distinct) == 1 else "/".join(distinct)


def group_runs(runs: Iterable[tuple[Run, Identity]]) -> list[Group]:
    """Group completed runs by (experiment, identity, group hash), keeping the newest completed run of each
    seed; failed and unfinished runs are ignored.

    Sorted: paper rows in the paper's order first, then other experiments by name.
    """
    buckets: dict[tuple[str, Identity, str], list[Run]] = defaultdict(list)
    for r, identity in runs:
        if r.completed:
            buckets[(r.experiment, identity, r.group)].append(r)
    groups = []
    for (experiment, identity, gid), members in buckets.items():
        newest: dict[int | None, Run] = {}
        for r in sorted(members, key=lambda r: (r.finished_at, str(r.path))):
            newest[r.seed if r.seed is not None else id(r)] = r  # type: ignore[index]
        kept = sorted(newest.values(), key=lambda r: (r.seed is None, r.seed or 0, str(r.path)))
        groups.append(
            Group(
                experiment=experiment,
                protocol=identity.protocol,
                group=gid,
                runs=kept,
                final=Stat.of(r.test_accuracy for r in kept),  # type: ignore[misc]
                best=Stat.of(r.best_test_accuracy for r in kept),  # type: ignore[misc]
                paper=identity.paper,
                modified=identity.modified,
                duplicates=sorted((r for r in members if r not in kept), key=lambda r: str(r.path)),
            )
        )
    return sorted(groups, key=_order)


def _order(g: Group) -> tuple:
    rows = list(PAPER_ROWS)
    rank = rows.index(g.paper.row) if g.paper is not None else len(rows)
    return (rank, g.experiment, g.modified, g.protocol != "paper", g.protocol, g.group)


def format_seeds(seeds: Iterable[int | None]) -> str:
    """Compact seed list: consecutive seeds as ranges, e.g. "42-51" or "1,3,7-9"."""
    seeds = list(seeds)
    values = sorted({s for s in seeds if s is not None})
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    if any(s is None for s in seeds):
        parts.append("?")
    return ",".join(parts)

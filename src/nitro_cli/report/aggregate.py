"""Grouping completed runs into experiments and computing mean ± sigma over seeds, beside the paper.

A group is (experiment, trainer protocol, config hash): runs that differ only in seed. Sigma is the
population std (ddof=0), the statistic the paper's README doubles for its ±.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .paper import PAPER_ROWS, PaperRow, paper_row
from .runs import Run

PROTOCOL_NOTES = {
    "paper": "best test accuracy over epochs, on 9,984 test images (the paper's protocol)",
    "default": "test accuracy at the best validation epoch, on all 10,000 test images",
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
    trainer: str
    group: str
    runs: list[Run]
    final: Stat  # test accuracy at the last epoch
    best: Stat  # the protocol's reported number (see PROTOCOL_NOTES)
    paper: PaperRow | None

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


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Group completed runs by (experiment, trainer, group hash); failed and unfinished runs are ignored.

    Sorted: paper rows in the paper's order first, then other experiments by name.
    """
    buckets: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for r in runs:
        if r.completed:
            buckets[(r.experiment, r.trainer, r.group)].append(r)
    groups = []
    for (experiment, trainer, gid), members in buckets.items():
        members.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, str(r.path)))
        groups.append(
            Group(
                experiment=experiment,
                trainer=trainer,
                group=gid,
                runs=members,
                final=Stat.of(r.test_accuracy for r in members),  # type: ignore[misc]
                best=Stat.of(r.best_test_accuracy for r in members),  # type: ignore[misc]
                paper=paper_row(experiment),
            )
        )
    return sorted(groups, key=_order)


def _order(g: Group) -> tuple:
    rows = list(PAPER_ROWS)
    rank = rows.index(g.paper.row) if g.paper is not None else len(rows)
    return (rank, g.experiment, g.trainer != "paper", g.trainer, g.group)


def duplicate_seeds(group: Group) -> list[int]:
    """Seeds that occur more than once in a group (e.g. a run repeated into another output folder)."""
    counts = Counter(s for s in group.seeds if s is not None)
    return sorted(s for s, c in counts.items() if c > 1)


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

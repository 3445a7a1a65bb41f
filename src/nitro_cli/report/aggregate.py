"""Grouping completed runs into experiments and computing mean ± sigma over seeds, beside the paper.

A group is (experiment, protocol, config hash): runs that differ only in seed, one run per seed (a seed
run twice, or continued into another folder, counts once: its newest completed run). Groups of one
experiment and protocol are labelled by the settings in which they differ (`optimizer.lr_inv=256` vs
`optimizer.lr_inv=1024`), since a hash tells a reader nothing. Sigma is the population std (ddof=0), the
statistic the paper's README doubles for its ±.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .identity import Identity, group_settings
from .paper import PAPER_MAX_EPOCHS, PAPER_ROWS, PaperRow, paper_row
from .runs import Run

# The key that names each section's preset: when it differs, the section's other keys follow from it.
PRESET_KEYS = {"data": "data.name", "model": "model.preset", "optimizer": "optimizer.name",
               "compat": "compat.name"}

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
    compat: str  # the arithmetic: a compat preset's name, or "custom: <switches>"
    final: Stat  # test accuracy at the last epoch
    best: Stat  # the protocol's reported number (see PROTOCOL_NOTES)
    paper: PaperRow | None  # the paper row this group reproduces exactly (apart from its epoch budget)
    modified: tuple[str, ...]  # keys in which it differs from the paper row its experiment names
    duplicates: list[Run]  # older runs of a seed that is in `runs`, left out
    # "key=value" for each setting whose value differs between the groups of this experiment and protocol
    differs: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The experiment, marked when it only names a paper row, then the settings that tell it apart from
        the other groups of its experiment and protocol: a section whose preset differs by that preset's
        name alone (`compat.name=reference`, not every compat.* key that follows from it), at most three
        (report.csv has them all). The mark names only modified keys that the settings do not show."""
        keys = {item.split("=", 1)[0] for item in self.differs}
        shown = tuple(item for item in self.differs if not _follows_from_preset(item.split("=", 1)[0], keys))
        text = self.experiment
        if self.modified:
            unshown = tuple(k for k in self.modified if k not in keys)
            text += f" (modified: {_first_three(unshown, ', ')})" if unshown else " (modified)"
        return f"{text} {_first_three(shown, ' ')}" if shown else text

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


def _follows_from_preset(key: str, differing: set[str]) -> bool:
    """Whether `key` is in a section whose preset is among the `differing` keys (and is not that preset)."""
    preset = PRESET_KEYS.get(key.split(".", 1)[0])
    return preset is not None and preset != key and preset in differing


def _first_three(items: tuple[str, ...], sep: str) -> str:
    return sep.join(items[:3]) + (f" +{len(items) - 3} more" if len(items) > 3 else "")


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
                compat=identity.compat,
                final=Stat.of(r.test_accuracy for r in kept),  # type: ignore[misc]
                best=Stat.of(r.best_test_accuracy for r in kept),  # type: ignore[misc]
                paper=identity.paper,
                modified=identity.modified,
                duplicates=sorted((r for r in members if r not in kept), key=lambda r: str(r.path)),
            )
        )
    tell_apart(groups)
    return sorted(groups, key=_order)


def tell_apart(groups: list[Group]) -> None:
    """Set `differs` of the groups that share an experiment and a protocol: the settings whose values are
    not the same in all of them (each group's runs share their settings, apart from the seed)."""
    kinds: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        kinds[(g.experiment, g.protocol)].append(g)
    for members in kinds.values():
        if len(members) < 2:
            continue
        shown = [{k: override_value(v) for k, v in group_settings(g.runs[0].config).items()} for g in members]
        keys = sorted(k for k in set().union(*shown) if len({s.get(k, "(absent)") for s in shown}) > 1)
        for g, s in zip(members, shown, strict=True):
            g.differs = tuple(f"{k}={s.get(k, '(absent)')}" for k in keys)


def override_value(v: object) -> str:
    """A config value as it is written in an override: null, true, 0.5, [16,16], {a: 1}."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list | tuple):
        return "[" + ",".join(override_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {override_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _order(g: Group) -> tuple:
    rows = list(PAPER_ROWS)
    rank = rows.index(g.paper.row) if g.paper is not None else len(rows)
    return (rank, g.experiment, g.modified, g.protocol != "paper", g.protocol, _natural(g.differs), g.group)


def _natural(items: tuple[str, ...]) -> list[tuple[tuple[int, int | str], ...]]:
    """A sort key that puts optimizer.lr_inv=256 before optimizer.lr_inv=1024 (numbers as numbers)."""
    return [tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", s)) for s in items]


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

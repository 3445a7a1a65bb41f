"""Where a step's product time goes: every exact product records its path, shape and seconds while a trace
is active, under the label its caller set (e.g. a layer and what it computes). Off by default; a single
global check per product when off."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class ProductRecord:
    label: str  # what the caller set with `labelled`, "" outside any label
    path: str  # int8xL, float32, float32-sliced, float64 or int64 (GemmPlan.path)
    m: int
    k: int
    n: int
    seconds: float


_records: list[ProductRecord] | None = None
_label = ""


@contextmanager
def trace_products() -> Iterator[list[ProductRecord]]:
    """Collect a ProductRecord for every product computed inside the block."""
    global _records
    previous, _records = _records, []
    try:
        yield _records
    finally:
        _records = previous


@contextmanager
def labelled(label: str) -> Iterator[None]:
    """Attribute the products computed inside the block to `label`."""
    global _label
    previous, _label = _label, label
    try:
        yield
    finally:
        _label = previous


def tracing() -> bool:
    return _records is not None


def record(path: str, m: int, k: int, n: int, started: float) -> None:
    """Record a product that began at time.perf_counter() == started and has just ended."""
    if _records is not None:
        _records.append(ProductRecord(_label, path, m, k, n, time.perf_counter() - started))

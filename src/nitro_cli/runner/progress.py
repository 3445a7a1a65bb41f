"""Progress display: rich bars on a terminal, plain log lines elsewhere (multirun jobs, CI, pytest)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Display:
    """Nothing shown but the log lines; the base of the other displays."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def epoch_started(self, epoch: int, max_epochs: int, batches: int, done: int) -> None:
        pass

    def batch_done(self, done: int, loss: float, acc: float, samples_per_s: float) -> None:
        pass

    def epoch_done(self, epoch: int) -> None:
        pass

    def line(self, text: str) -> None:
        self.log.info(text)


def resolve_mode(mode: str) -> str:
    """`auto`: rich on a terminal, plain lines otherwise."""
    if mode == "auto":
        return "rich" if sys.stdout.isatty() else "plain"
    return mode


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to sys.stdout as it is when a line is logged: while rich's bars are live, that is rich's proxy,
    which prints the line above the bars instead of through them."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def console_handler(mode: str) -> logging.Handler | None:
    """Where a run's log lines go besides train.log: stdout, unless progress=none."""
    return None if resolve_mode(mode) == "none" else _StdoutHandler()


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}"


class PlainDisplay(Display):
    """A batch line every `every` seconds, so a long epoch in a log file still shows it is alive, and when
    it will end: the ETA of the epoch and of the run, at this session's pace (evaluation not counted)."""

    def __init__(self, log: logging.Logger, every: float = 30.0) -> None:
        super().__init__(log)
        self.every, self.last = every, time.monotonic()
        self.epoch = self.max_epochs = self.batches = self.first = 0
        self.started = self.last

    def epoch_started(self, epoch: int, max_epochs: int, batches: int, done: int) -> None:
        self.epoch, self.max_epochs, self.batches, self.first = epoch, max_epochs, batches, done
        self.started = self.last = time.monotonic()

    def batch_done(self, done: int, loss: float, acc: float, samples_per_s: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            per_batch = (now - self.started) / max(done - self.first, 1)
            epoch_left = per_batch * (self.batches - done)
            run_left = epoch_left + per_batch * self.batches * (self.max_epochs - self.epoch)
            self.log.info(f"epoch {self.epoch} batch {done}/{self.batches}  loss {loss:.3f}  "
                          f"train {acc:.2%}  {samples_per_s:.0f} img/s  ETA epoch {_clock(epoch_left)}, "
                          f"run {_clock(run_left)}")


class RichDisplay(Display):
    """Epoch bar and batch bar with live loss, accuracy and samples/s; log lines print above them."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__(log)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(), transient=False,
        )
        self.epochs = self.progress.add_task("epochs", total=1, info="")
        self.batches = self.progress.add_task("batches", total=1, info="")

    def __enter__(self) -> RichDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def epoch_started(self, epoch: int, max_epochs: int, batches: int, done: int) -> None:
        self.progress.update(self.epochs, total=max_epochs, completed=epoch - 1, description="epochs")
        self.progress.reset(self.batches, total=batches, completed=done, description=f"epoch {epoch}",
                            info="")

    def batch_done(self, done: int, loss: float, acc: float, samples_per_s: float) -> None:
        self.progress.update(self.batches, completed=done,
                             info=f"loss {loss:.3f}  acc {acc:.2%}  {samples_per_s:.0f} img/s")

    def epoch_done(self, epoch: int) -> None:
        self.progress.update(self.epochs, completed=epoch)


def make_display(mode: str, log: logging.Logger) -> Display:
    """Bars for `rich`, timed batch lines for `plain`, log lines only for `none` (see resolve_mode)."""
    return {"rich": RichDisplay, "plain": PlainDisplay}.get(resolve_mode(mode), Display)(log)


@contextmanager
def count_progress(mode: str, what: str, every: float = 30.0) -> Iterator[Callable[[int, int], None]]:
    """A callback `(done, total)` for a long loop outside training (evaluating a checkpoint): a bar on a
    terminal, else a line with the ETA every `every` seconds; nothing for progress=none."""
    mode = resolve_mode(mode)
    started = last = time.monotonic()
    if mode == "rich":
        with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=Console()) as bar:
            task = bar.add_task(what, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return

    def line(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if mode == "plain" and now - last >= every and done < total:
            last = now
            left = (now - started) / done * (total - done)
            print(f"{what}: {done}/{total}  ETA {_clock(left)}", flush=True)

    yield line

"""Progress display: rich bars on a terminal, plain log lines elsewhere (multirun jobs, CI, pytest)."""

from __future__ import annotations

import logging
import sys
import time

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


class PlainDisplay(Display):
    """A batch line every `every` seconds, so a long epoch in a log file still shows it is alive."""

    def __init__(self, log: logging.Logger, every: float = 30.0) -> None:
        super().__init__(log)
        self.every, self.last, self.epoch, self.batches = every, time.monotonic(), 0, 0

    def epoch_started(self, epoch: int, max_epochs: int, batches: int, done: int) -> None:
        self.epoch, self.batches, self.last = epoch, batches, time.monotonic()

    def batch_done(self, done: int, loss: float, acc: float, samples_per_s: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.log.info(f"epoch {self.epoch} batch {done}/{self.batches}  loss {loss:.3f}  "
                          f"train {acc:.2%}  {samples_per_s:.0f} img/s")


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

    def line(self, text: str) -> None:
        # The file handler keeps the record; the console copy goes above the live bars.
        for handler in self.log.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(self.log.makeRecord(self.log.name, logging.INFO, "", 0, text, None, None))
        self.progress.console.print(text, markup=False, highlight=False)


def make_display(mode: str, log: logging.Logger) -> Display:
    """`auto`: rich on a terminal, plain lines otherwise."""
    if mode == "auto":
        mode = "rich" if sys.stdout.isatty() else "plain"
    return {"rich": RichDisplay, "plain": PlainDisplay}.get(mode, Display)(log)

"""lr_inv schedules and early stopping, as objects whose state goes into checkpoints."""

from __future__ import annotations

from typing import Any


class _Watcher:
    """The reference's watcher (spec section 5): blind before `start_epoch`, then counts stale epochs.

    An epoch before `start_epoch` is not observed at all, so nothing learnt early delays or hastens the
    first action: with start 10 and patience 15 the earliest plateau cut is at epoch 25. From the start
    on, an accuracy below `best + min_delta` adds one stale epoch; any other becomes `best` (which starts
    at 0) and clears the count.
    """

    def __init__(self, patience: int, start_epoch: int, min_delta: float) -> None:
        if patience < 1 or start_epoch < 0 or min_delta < 0:
            raise ValueError(f"need patience >= 1, start_epoch >= 0, min_delta >= 0; got {patience}, "
                             f"{start_epoch}, {min_delta}")
        self.patience, self.start_epoch, self.min_delta = patience, start_epoch, min_delta
        self.best = 0.0
        self.stale = 0

    def _observe(self, epoch: int, accuracy: float) -> bool:
        """Count `epoch` if the watcher sees it; True when the stale count has reached the patience."""
        if epoch < self.start_epoch:
            return False
        if accuracy < self.best + self.min_delta:
            self.stale += 1
        else:
            self.best, self.stale = accuracy, 0
        return self.stale >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any], epochs_done: int) -> None:
        """Restore after `epochs_done` epochs; a state saved by the earlier watchers (which observed every
        epoch) loads only while the watcher has seen nothing yet (its state is then the initial one)."""
        if "best" in state:
            self.best, self.stale = float(state["best"]), int(state["stale"])
        elif epochs_done < self.start_epoch:
            self.best, self.stale = 0.0, 0
        else:
            raise ValueError(f"its plateau/early-stop state was saved after epoch {epochs_done} by the "
                             "watchers before spec section 5's correction (2026-12-06), which observed "
                             "the epochs before their start; start the run again")


class PlateauSchedule(_Watcher):
    """From `start_epoch` on, after `patience` epochs without a `min_delta` gain: lr_inv *= factor."""

    def __init__(self, factor: int = 3, patience: int = 15, start_epoch: int = 10,
                 min_delta: float = 0.01) -> None:
        super().__init__(patience, start_epoch, min_delta)
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"plateau factor must be a positive integer, got {factor!r}")
        self.factor = factor

    def step(self, epoch: int, accuracy: float, optimizer: Any) -> bool:
        """Observe the epoch's accuracy; True when lr_inv was multiplied (the wait then starts over)."""
        if self._observe(epoch, accuracy):
            optimizer.lr_inv *= self.factor
            self.stale = 0
            return True
        return False


class ConstantSchedule:
    """lr_inv never changes."""

    def step(self, epoch: int, accuracy: float, optimizer: Any) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], epochs_done: int) -> None:
        pass


class EarlyStopping(_Watcher):
    """From `start_epoch` on, stop after `patience` epochs without a `min_delta` gain."""

    def __init__(self, patience: int = 35, start_epoch: int = 30, min_delta: float = 0.01) -> None:
        super().__init__(patience, start_epoch, min_delta)

    def step(self, epoch: int, accuracy: float) -> bool:
        return self._observe(epoch, accuracy)

    def stopped_after(self, epoch: int) -> bool:
        """Whether a run whose state this is stopped early after `epoch`: resuming it trains nothing."""
        return self.stale >= self.patience

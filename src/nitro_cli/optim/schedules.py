"""lr_inv schedules and early stopping, as objects whose state goes into checkpoints."""

from __future__ import annotations

from typing import Any


class _Watcher:
    """Tracks the accuracy to beat: an improvement must exceed the last reference by `min_delta`."""

    def __init__(self, patience: int, start_epoch: int, min_delta: float) -> None:
        if patience < 1 or start_epoch < 0 or min_delta < 0:
            raise ValueError(f"need patience >= 1, start_epoch >= 0, min_delta >= 0; got {patience}, "
                             f"{start_epoch}, {min_delta}")
        self.patience, self.start_epoch, self.min_delta = patience, start_epoch, min_delta
        self.reference: float | None = None
        self.stale = 0

    def _observe(self, accuracy: float) -> None:
        if self.reference is None or accuracy >= self.reference + self.min_delta:
            self.reference, self.stale = accuracy, 0
        else:
            self.stale += 1

    def _due(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and self.stale >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = None if state["reference"] is None else float(state["reference"])
        self.stale = int(state["stale"])


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
        self._observe(accuracy)
        if self._due(epoch):
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EarlyStopping(_Watcher):
    """From `start_epoch` on, stop after `patience` epochs without a `min_delta` gain."""

    def __init__(self, patience: int = 35, start_epoch: int = 30, min_delta: float = 0.01) -> None:
        super().__init__(patience, start_epoch, min_delta)

    def step(self, epoch: int, accuracy: float) -> bool:
        self._observe(accuracy)
        return self._due(epoch)

    def stopped_after(self, epoch: int) -> bool:
        """Whether a run whose state this is stopped early after `epoch`: resuming it trains nothing."""
        return self._due(epoch)

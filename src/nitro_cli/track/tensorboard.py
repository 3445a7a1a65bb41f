"""TensorBoard event files, written with tensorboardX's protobufs and record writer (small: no TensorFlow,
PyTorch or TensorBoard server needed).

Events are written synchronously, not through tensorboardX's SummaryWriter: its flush() leaves events in a
queue for a background thread, so an epoch that tracking.json counts as logged could be lost by a kill.
The run's hyperparameters go in as an HPARAMS session (no experiment summary of ours), so that TensorBoard
infers one experiment from every session under the folder it is shown: the jobs of a sweep, or any runs,
side by side with all their metrics.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import SUMMARY_METRICS, Place, Tracker


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, settings: Mapping[str, Any], place: Place) -> None:
        save_dir = settings.get("save_dir")
        if save_dir is None:
            self.log_dir = place.root / "tensorboard" / (place.job or "")
        else:
            self.log_dir = Path(save_dir).expanduser().absolute() / place.name
        self.epochs = 0
        self.writer: Any = None

    def open(self, previous: Mapping[str, Any] | None, hparams: Mapping[str, Any], tags: Mapping[str, str],
             epochs_done: int) -> int:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        held = None  # epochs an earlier session of this run logged into the same folder
        if previous is not None and previous.get("log_dir") == str(self.log_dir):
            held = min(int(previous.get("epochs", 0)), epochs_done)
        self.epochs = held or 0
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # A file of its own per session, in the order the sessions ran: tensorboardX names files by the
        # second, and a second session in the same second would overwrite the first's (or sort before it).
        self.writer = EventsWriter(str(self.log_dir / "events"), f".{time.time_ns():020d}.{os.getpid()}")
        if held is not None:
            # Continuing: TensorBoard hides whatever an earlier session logged from this step on, e.g. an
            # epoch logged just before a crash, that tracking.json did not count yet, and is logged again.
            self.writer.write_event(Event(wall_time=time.time(), step=held + 1,
                                          session_log=SessionLog(status=SessionLog.START)))
        else:  # TensorBoard keeps a run's first session info: written once
            from tensorboardX.proto.plugin_hparams_pb2 import SessionStartInfo

            start = SessionStartInfo(start_time_secs=time.time())
            for key, value in {**hparams, **{f"tag.{k}": v for k, v in tags.items()}}.items():
                _set_value(start.hparams[key], value)
            self._hparams("session_start_info", start)
        self.writer.flush()
        return self.epochs

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._scalars(metrics, epoch)
        self.writer.flush()  # before tracking.json counts this epoch as logged
        self.epochs = epoch

    def finish(self, summary: Mapping[str, Any]) -> None:
        if summary["status"] == "completed":  # an interrupted or failed run may still be continued
            from tensorboardX.proto.api_pb2 import Status
            from tensorboardX.proto.plugin_hparams_pb2 import SessionEndInfo

            numbers = {f"summary/{k}": summary[k] for k in SUMMARY_METRICS if summary.get(k) is not None}
            self._scalars(numbers, summary["epochs_run"])
            self._hparams("session_end_info", SessionEndInfo(status=Status.Value("STATUS_SUCCESS"),
                                                             end_time_secs=time.time()))
        self.writer.close()

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass  # already failing: the caller reports the first error

    def state(self) -> dict[str, Any]:
        return {"log_dir": str(self.log_dir), "epochs": self.epochs}

    def _scalars(self, values: Mapping[str, float], step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self.writer.write_event(Event(wall_time=time.time(), step=step, summary=summary))

    def _hparams(self, field: str, message: Any) -> None:
        """Write one message of TensorBoard's HPARAMS plugin (tag `_hparams_/<field>`)."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
        from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

        content = HParamsPluginData(version=0, **{field: message}).SerializeToString()
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content))
        summary = Summary(value=[Summary.Value(tag=f"_hparams_/{field}", metadata=meta)])
        self.writer.write_event(Event(wall_time=time.time(), summary=summary))


def _set_value(slot: Any, value: Any) -> None:
    """A config value as a protobuf Value: numbers, booleans and strings as themselves, else JSON text."""
    if isinstance(value, bool):
        slot.bool_value = value
    elif isinstance(value, int | float):
        slot.number_value = float(value)
    elif isinstance(value, str):
        slot.string_value = value
    else:
        slot.string_value = json.dumps(value)

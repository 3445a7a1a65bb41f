"""The training loop: a library function (`fit`) that the Hydra app wraps; usable without Hydra.

Everything that makes a run reproducible lives here: the order of random draws (one stream per purpose),
the protocol's decisions (plateau, early stopping, best checkpoint), and checkpoints that hold enough state
to continue bit-identically, even from the middle of an epoch after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..data import DATASETS, Normalizer, augment_batch, data_root, one_hot
from ..engine import BackendUnavailable, IntegerOverflowError, RngStreams, get_backend
from ..errors import NitroError
from ..nn import Arithmetic, NitroNet, build_model
from ..optim import ConstantSchedule, EarlyStopping, IntegerSGD, PlateauSchedule
from ..track import Place, Trackers
from .checkpoint import Checkpoint, atomic_write_text, load_checkpoint, save_checkpoint
from .config import experiment_group, hyperparameters, validate_train_config
from .prepare import Prepared, prepare_data
from .progress import Display, console_handler, make_display
from .rundir import COMPLETED, FAILED, INTERRUPTED, RUNNING

Summary = dict[str, Any]
# Called after each epoch is on disk, with that epoch's metrics.csv row (column -> value); a non-empty return
# stops the run there, as early stopping would, and says why (e.g. a search that prunes the trial).
EpochHook = Callable[[dict[str, Any]], str | None]
LOG = "nitro_cli.runner"
# Keys a resumed run may change; everything else must match the checkpoint's config.
RESUME_MAY_CHANGE = ("trainer.max_epochs", "trainer.progress", "trainer.eval_batch_size", "engine.backend",
                     "engine", "data.root", "resume", "trainer.limit_train_batches",
                     "trainer.limit_test_batches", "logger")


class TrainingInterrupted(BaseException):
    """Ctrl-C or SIGTERM: the run stopped after a whole batch and saved `checkpoint`.

    A BaseException so that a Hydra sweep stops too instead of starting its next job.
    """

    def __init__(self, signum: int, checkpoint: Path, where: str) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}; saved {checkpoint}")
        self.signum, self.checkpoint, self.where = signum, checkpoint, where


class _StopRequest:
    """First SIGINT/SIGTERM asks for a clean stop after the current batch; a second one aborts at once."""

    def __init__(self, log: logging.Logger) -> None:
        self.signum: int | None = None
        self.log = log

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.log.warning(f"{signal.Signals(signum).name}: stopping after the current batch and saving "
                         "checkpoints/last.npz (send it again to abort without saving)")

    @contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _select(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _assign(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _fixed_part(cfg: Mapping[str, Any], key: str) -> Any:
    """The value at `key` less the sub-keys a resume may change (`trainer=paper` re-selects the run's own
    trainer even when trainer.max_epochs is extended)."""
    value = json.loads(json.dumps(_select(cfg, key)))
    for k in RESUME_MAY_CHANGE:
        if isinstance(value, dict) and k.startswith(key + "."):
            _assign(value, k[len(key) + 1 :], None)
    return value


def resume_config(ckpt: Checkpoint, current: Mapping[str, Any], explicit: list[str]) -> dict[str, Any]:
    """The config a resumed run continues with: the checkpoint's, plus the few keys that may change.

    `explicit` lists the keys the user set on the command line; setting any other key to a value that
    differs from the checkpoint is refused (the run would no longer be the run that was interrupted).
    """
    try:
        saved = validate_train_config(ckpt.state.get("config"))  # type: ignore[arg-type]
    except NitroError as exc:
        raise NitroError(f"{ckpt.path} holds no valid run config ({exc}); it was not written by "
                         "`nitro train`") from None
    cfg = json.loads(json.dumps(saved))
    for key in explicit:
        if any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE):
            _assign(cfg, key, json.loads(json.dumps(_select(current, key))))
        elif _fixed_part(current, key) != _fixed_part(saved, key):
            raise NitroError(f"cannot change {key} when resuming (the checkpoint has "
                             f"{_select(saved, key)!r}, you asked for {_select(current, key)!r}); resuming "
                             "continues the same run. Drop that override, or start a new run without resume=")
    cfg["data"]["root"] = _select(current, "data.root")  # never a path read from a file
    cfg["resume"] = _select(current, "resume")
    return cfg


class _Run:
    """The state of one training run between epochs (what a checkpoint stores besides the arrays)."""

    def __init__(self, cfg: dict[str, Any], run_dir: Path, log: logging.Logger, trackers: Trackers) -> None:
        self.cfg, self.run_dir, self.log, self.trackers = cfg, run_dir, log, trackers
        self.ckpt_dir = run_dir / "checkpoints"
        self.epoch = 0  # epochs finished
        self.metrics: list[list[Any]] = []
        self.best: dict[str, Any] = {"monitor": None, "epoch": None, "test": None, "val": None}
        self.wall_before = 0.0  # wall and training seconds of earlier sessions (before a resume)
        self.train_seconds = 0.0
        self.samples = 0
        self.started = time.monotonic()
        self.status, self.error = RUNNING, None
        self.written: Summary | None = None  # the summary.json last written
        # The config in checkpoints/last.npz as it is on disk (None: none there yet). Until this session's
        # first save, that is the resumed checkpoint's, which may differ in what a resume may change.
        self.saved_cfg: Mapping[str, Any] | None = None

    def wall(self) -> float:
        return self.wall_before + time.monotonic() - self.started

    def summary(self) -> Summary:
        last = self.metrics[-1] if self.metrics else None
        t = self.cfg["trainer"]
        best_test = self.best["test"] if t["monitor"] == "val" else self.best["monitor"]
        return {
            "experiment": self.cfg["experiment"], "trainer": t["name"], "seed": self.cfg["seed"],
            "status": self.status, "epochs_run": self.epoch,
            "test_accuracy": last[4] if last else None, "best_test_accuracy": best_test,
            "best_epoch": self.best["epoch"], "val_accuracy": self.best["val"],
            "wall_seconds": round(self.wall(), 3),
            "samples_per_s": round(self.samples / self.train_seconds, 1) if self.train_seconds else 0.0,
            "model": self.cfg["model"]["preset"], "data": self.cfg["data"]["name"],
            "group": experiment_group(self.cfg), "compat": self.cfg["compat"], "error": self.error,
        }

    def write_summary(self) -> Summary:
        summary = self.written = self.summary()
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


_WRAP_KEYS = ("wrapped_loss_errors", "wrapped_sums")


def _metrics_header(num_heads: int, counts_wraps: bool) -> list[str]:
    """metrics.csv's columns; a run whose arithmetic can wrap (compat) also counts the wrapped entries."""
    heads = [f"head{i}_acc" for i in range(1, num_heads + 1)]
    wraps = list(_WRAP_KEYS) if counts_wraps else []
    return ["epoch", "train_loss", "train_acc", "val_acc", "test_acc", *heads, "lr_inv", "seconds", *wraps]


def _csv_text(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["" if v is None else v for v in r] for r in rows])
    return buf.getvalue()


def _state_arrays(model: NitroNet, normalizer: Normalizer, perm: np.ndarray | None) -> dict[str, np.ndarray]:
    arrays = dict(model.state_dict())
    arrays.update({f"norm/{k}": np.asarray(v) for k, v in normalizer.state_dict().items()})
    if perm is not None:
        arrays["resume/perm"] = perm.astype(np.int64)
    return arrays


def build_network(cfg: Mapping[str, Any], in_shape: tuple[int, int, int], num_classes: int,
                  init_rng: np.random.Generator, xp: Any = np) -> NitroNet:
    """The network a validated run config describes, with its compat arithmetic."""
    m = cfg["model"]
    return build_model(m["preset"], in_shape, num_classes, dropout=m["dropout"], fe_dropout=m["fe_dropout"],
                       hidden=m["hidden"], features=m["features"], seed_rng=init_rng, xp=xp,
                       arith=Arithmetic.from_config(cfg["compat"]))


def build_optimizer(cfg: Mapping[str, Any]) -> IntegerSGD:
    o = cfg["optimizer"]
    return IntegerSGD(o["lr_inv"], o["fwd_decay_inv"], o["subnet_decay_inv"], o["amp"],
                      o["conv_amp_multiplier"])


def _schedules(opt_cfg: dict[str, Any]) -> tuple[Any, EarlyStopping | None]:
    plateau = PlateauSchedule(**opt_cfg["plateau"]) if opt_cfg["plateau"] else ConstantSchedule()
    early = EarlyStopping(**opt_cfg["early_stop"]) if opt_cfg["early_stop"] else None
    return plateau, early


@contextmanager
def _run_logger(run_dir: Path, mode: str) -> Iterator[logging.Logger]:
    """Log lines go to train.log always, and to stdout unless progress=none."""
    log = logging.getLogger(LOG)
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(run_dir / "train.log", encoding="utf-8")]
    stdout = console_handler(mode)
    if stdout is not None:
        handlers.append(stdout)
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    try:
        yield log
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()


def _path_override(key: str, path: Path) -> str:
    """`key=<path>` as Hydra's override parser reads back exactly `path`: single-quoted when the path holds
    a character that its grammar gives a meaning (`,` starts a sweep, `:` `=` `[` a structure, a space,
    non-ASCII)."""
    text = str(path)
    if re.fullmatch(r"[\w/.+\-%@]+", text, re.ASCII):
        return f"{key}={text}"
    # Inside quotes, the quote and the backslashes before a quote (or before the closing one) are escaped, and
    # `${`, which would still interpolate there.
    quoted = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    quoted = quoted.replace("${", "\\${")
    return f"{key}='{quoted}'"


def continue_command(run_dir: Path, cfg: Mapping[str, Any], saved: Mapping[str, Any] | None = None) -> str:
    """The command that continues the run `cfg` from its checkpoints/last.npz in its own folder `run_dir`
    (so that it stays one run and its summary.json ends `completed`), with every override that the
    checkpoint's config does not supply. That is the data root, which a resume never reads from a file (see
    `resume_config`), pinned as an absolute path so that the command works from any folder and without the
    $NITRO_DATA it may have come from; and, where `saved` (the config in that last.npz) is given, each key
    a resume may change whose value there differs from `cfg`'s (a resume that extended trainer.max_epochs
    and failed before its first save)."""
    run_dir = Path(run_dir).absolute()
    args = ["nitro", "train", _path_override("resume", run_dir / "checkpoints" / "last.npz"),
            _path_override("hydra.run.dir", run_dir)]
    data = cfg["data"]
    if not DATASETS[data["name"]].embedded:
        args.append(_path_override("data.root", data_root(data["root"]).absolute()))
    for key in RESUME_MAY_CHANGE if saved is not None else ():
        value = _select(cfg, key)
        if key in ("resume", "data.root") or isinstance(value, dict) or value == _select(saved, key):
            continue
        args.append(f"{key}={'null' if value is None else value}")
    return shlex.join(args)


def check_run_dir(run_dir: Path, resume: Checkpoint | None, cfg: Mapping[str, Any]) -> None:
    """Refuse to train over another run's checkpoints (resuming into its own folder is fine); `cfg` (the
    command's config) gives the data root of the continue command suggested instead."""
    last_path = Path(run_dir) / "checkpoints" / "last.npz"
    resuming_here = resume is not None and resume.path is not None and \
        resume.path.resolve().parent == last_path.parent.resolve()
    if last_path.exists() and not resuming_here:
        raise NitroError(f"{run_dir} already holds a run (checkpoints/last.npz); continue it with "
                         f"`{continue_command(run_dir, cfg)}` (a sweep: the same command with "
                         "resume=auto), or start a new run in another folder")


def _nothing_to_train(epoch: int, position: dict[str, Any] | None, early: EarlyStopping | None,
                      max_epochs: int) -> str | None:
    """Why continuing a run that finished `epoch` epochs trains nothing, or None when there is work left."""
    if position is not None:
        return None
    if early is not None and epoch and early.stopped_after(epoch):
        return f"stopped early after epoch {epoch}"
    if epoch >= max_epochs:
        return f"finished {epoch} of {max_epochs} epochs"
    return None


def finished_run(ckpt: Checkpoint, cfg: Mapping[str, Any]) -> str | None:
    """Why resuming `ckpt` with the (resumed) config `cfg` would train nothing, or None."""
    _, early = _schedules(cfg["optimizer"])
    s = ckpt.state
    try:
        if early is not None and s.get("early_stop") is not None:
            early.load_state_dict(s["early_stop"], int(s["epoch"]))
        return _nothing_to_train(int(s["epoch"]), s.get("position"), early, cfg["trainer"]["max_epochs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise NitroError(f"cannot resume from {ckpt.path}: its run state is incomplete ({exc})") from None


def fit(cfg: Mapping[str, Any], run_dir: str | Path, *, resume: Checkpoint | None = None,
        on_epoch: EpochHook | None = None, sweep_dir: str | Path | None = None) -> Summary:
    """Train one run into `run_dir` and return its summary (also written to run_dir/summary.json).

    `cfg` is a plain mapping in the shape of configs/train.yaml (validated here). With `resume`, the run
    continues from that checkpoint (its config must be `cfg`; see `resume_config`). `on_epoch` (an EpochHook)
    sees each finished epoch's metrics and may end the run after it. `sweep_dir`: the folder of the sweep
    this run is a job of, where its trackers' records go by default (track/).
    Raises NitroError for user-fixable problems and TrainingInterrupted after Ctrl-C/SIGTERM.
    """
    cfg = validate_train_config(cfg)
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume, cfg)
    last_path = run_dir / "checkpoints" / "last.npz"
    last_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in last_path.parent.glob(".*.npz.*.tmp"):  # left behind by a killed write
        stale.unlink(missing_ok=True)
    with _run_logger(run_dir, cfg["trainer"]["progress"]) as log:
        place = Place(run_dir.absolute(), None if sweep_dir is None else Path(sweep_dir).absolute())
        run = _Run(cfg, run_dir, log, Trackers(cfg["logger"], place, log, atomic_write_text))
        try:
            return _fit(run, resume, on_epoch)
        except TrainingInterrupted as exc:
            run.status, run.error = INTERRUPTED, str(exc)
            _try_summary(run)
            raise
        except BaseException as exc:
            nitro = _as_nitro_error(exc, run)
            run.status = FAILED
            run.error = str(nitro) if nitro is not None else f"{exc.__class__.__name__}: {exc}"
            _try_summary(run)
            _file_only(log, f"run failed: {run.error}")  # the app prints the error itself
            if nitro is not None:
                raise nitro from exc
            raise
        finally:
            if run.written is not None:
                run.trackers.finish(run.written)


def _file_only(log: logging.Logger, text: str) -> None:
    record = log.makeRecord(log.name, logging.ERROR, "", 0, text, None, None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _try_summary(run: _Run) -> None:
    try:
        run.write_summary()
    except OSError:
        pass  # a full disk: the error itself is what the user needs to see


def _as_nitro_error(exc: BaseException, run: _Run) -> NitroError | None:
    where = f"in epoch {run.epoch + 1}"
    if isinstance(exc, NitroError):
        return exc
    if isinstance(exc, BackendUnavailable):
        return NitroError(str(exc))
    if isinstance(exc, IntegerOverflowError):
        return NitroError(f"integer overflow {where}: {exc}. The weights grew past their integer range; "
                          "raise optimizer.lr_inv or enable weight decay (optimizer.fwd_decay_inv)")
    if isinstance(exc, MemoryError):
        return NitroError(f"out of memory {where}; lower trainer.batch_size / trainer.eval_batch_size or "
                          "pick a smaller model")
    return None


def _fit(run: _Run, resume: Checkpoint | None, on_epoch: EpochHook | None) -> Summary:
    cfg, log = run.cfg, run.log
    t, o, d = cfg["trainer"], cfg["optimizer"], cfg["data"]
    xp = get_backend(cfg["engine"]["backend"])
    rngs = RngStreams(cfg["seed"])
    data = prepare_data(cfg, rngs)
    model = build_network(cfg, data.in_shape, data.num_classes, rngs.init, xp)
    opt = build_optimizer(cfg)
    plateau, early = _schedules(o)
    header = _metrics_header(len(model.head_names), model.arith.counts_wraps)
    position: dict[str, Any] | None = None
    perm: np.ndarray | None = None
    if resume is not None:
        position, perm = _restore(run, resume, model, opt, plateau, early, rngs, data, header)
    else:
        atomic_write_text(run.run_dir / "metrics.csv", _csv_text([header]))
    run.write_summary()  # after the restore: a run killed in its next epoch keeps the epochs it had
    run.trackers.start(header, run.metrics, hyperparameters(cfg), run.summary())
    y_train = one_hot(data.train_y, data.num_classes)
    bs = t["batch_size"]
    n_train = len(data.train_y)
    n_batches = n_train // bs if t["drop_last"] else math.ceil(n_train / bs)
    if t["limit_train_batches"] is not None:
        n_batches = min(n_batches, t["limit_train_batches"])
    log.info(f"run dir {run.run_dir}: {cfg['model']['preset']} ({model.num_parameters:,} parameters) on "
             f"{d['name']} [{n_train} train, {0 if data.val_y is None else len(data.val_y)} val, "
             f"{len(data.test_y)} test], trainer={t['name']}, seed={cfg['seed']}, engine={xp.__name__}")
    if t["limit_train_batches"] is not None or t["limit_test_batches"] is not None:
        log.info(f"limited epochs: {n_batches} training batches, "
                 f"{'all' if t['limit_test_batches'] is None else t['limit_test_batches']} test/val batches")
    last_epoch = t["max_epochs"]
    done = _nothing_to_train(run.epoch, position, early, last_epoch) if resume is not None else None
    if done is not None:
        log.info(f"the checkpoint's run {done}; nothing to train")
        last_epoch = run.epoch
    stop = _StopRequest(log)
    with stop.installed(), make_display(t["progress"], log) as display:
        for epoch in range(run.epoch + 1, last_epoch + 1):
            if position is None:
                perm = rngs.shuffle.permutation(n_train)
                acc_state = {"loss_sum": 0.0, "correct": 0, "n": 0, "seconds": 0.0, "next_batch": 0}
            else:
                acc_state, position = position, None
            for key in _WRAP_KEYS:  # a position saved before the counters existed starts them at 0
                acc_state.setdefault(key, 0)
            assert perm is not None
            if _train_epoch(run, epoch, model, opt, rngs, data, y_train, perm, acc_state, n_batches, stop,
                            display):
                assert stop.signum is not None
                where = f"in epoch {epoch} after batch {acc_state['next_batch']} of {n_batches}"
                _save_last(run, model, opt, plateau, early, rngs, data, {**acc_state, "epoch": epoch}, perm)
                raise TrainingInterrupted(stop.signum, run.ckpt_dir / "last.npz", where)
            stop_now = _end_epoch(run, epoch, model, opt, plateau, early, rngs, data, acc_state, display)
            hooked = on_epoch(dict(zip(header, run.metrics[-1], strict=True))) if on_epoch else None
            if hooked:
                display.line(f"stopped after epoch {epoch}: {hooked}")
            if stop_now or hooked or stop.signum is not None:
                break
        if stop.signum is not None and run.epoch < t["max_epochs"]:
            raise TrainingInterrupted(stop.signum, run.ckpt_dir / "last.npz", f"after epoch {run.epoch}")
    if not (run.ckpt_dir / "last.npz").exists():  # resumed into a new dir with nothing left to train
        _save_last(run, model, opt, plateau, early, rngs, data, None, None)
    run.status = COMPLETED
    s = run.write_summary()
    log.info(f"done: {run.epoch} epochs, final test accuracy {s['test_accuracy']:.2%}, best "
             f"{s['best_test_accuracy']:.2%} (epoch {s['best_epoch']}), {s['wall_seconds']:.1f}s; "
             f"outputs in {run.run_dir}")
    return s


def _train_epoch(run: _Run, epoch: int, model: NitroNet, opt: IntegerSGD, rngs: RngStreams, data: Prepared,
                 y_train: np.ndarray, perm: np.ndarray, acc: dict[str, Any], n_batches: int,
                 stop: _StopRequest, display: Display) -> bool:
    """Train the batches of one epoch from acc['next_batch'] on; True when stopped early by a signal."""
    t, d = run.cfg["trainer"], run.cfg["data"]
    bs = t["batch_size"]
    display.epoch_started(epoch, t["max_epochs"], n_batches, acc["next_batch"])
    for b in range(acc["next_batch"], n_batches):
        if stop.signum is not None:
            return True
        start = time.monotonic()
        idx = perm[b * bs : (b + 1) * bs]
        x = data.train_x[idx]
        if d["augment"]:
            x = augment_batch(x, rngs.augment, d["crop_pad"], d["flip"], t["augment_per_batch"], d["aug_p"])
        res = model.train_step(x, y_train[idx], data.train_y[idx], opt, rngs.dropout)
        acc["loss_sum"] += res.loss * res.n
        acc["correct"] += res.correct
        acc["n"] += res.n
        acc["wrapped_loss_errors"] += res.wrapped_loss_errors
        acc["wrapped_sums"] += res.wrapped_sums
        acc["seconds"] += time.monotonic() - start
        acc["next_batch"] = b + 1
        display.batch_done(b + 1, acc["loss_sum"] / acc["n"], acc["correct"] / acc["n"],
                           acc["n"] / max(acc["seconds"], 1e-9))
    return False


def _end_epoch(run: _Run, epoch: int, model: NitroNet, opt: IntegerSGD, plateau: Any,
               early: EarlyStopping | None, rngs: RngStreams, data: Prepared, acc: dict[str, Any],
               display: Display) -> bool:
    """Evaluate, decide (best, plateau, early stop), then persist: last.npz, a metrics row, summary.json."""
    t = run.cfg["trainer"]
    started = time.monotonic()
    # limit_test_batches: only the first that many batches of batch_size images of each split
    n = None if t["limit_test_batches"] is None else t["limit_test_batches"] * t["batch_size"]
    val_acc = None
    if data.val_x is not None:
        val_acc = model.evaluate(data.val_x[:n], data.val_y[:n], t["eval_batch_size"]).accuracy
    test = model.evaluate(data.test_x[:n], data.test_y[:n], t["eval_batch_size"])
    monitored = val_acc if t["monitor"] == "val" else test.accuracy
    assert monitored is not None
    lr_inv = opt.lr_inv  # the value this epoch trained with
    improved = run.best["monitor"] is None or monitored > run.best["monitor"]
    before = (run.epoch, run.best, run.train_seconds, run.samples)
    if improved:
        run.best = {"monitor": monitored, "epoch": epoch, "test": test.accuracy, "val": val_acc}
    lowered = plateau.step(epoch, monitored, opt)
    stop_now = early.step(epoch, monitored) if early is not None else False
    run.epoch = epoch
    run.train_seconds += acc["seconds"]
    run.samples += acc["n"]
    seconds = acc["seconds"] + time.monotonic() - started
    train_loss, train_acc = acc["loss_sum"] / acc["n"], acc["correct"] / acc["n"]
    row = [epoch, train_loss, train_acc, val_acc, test.accuracy, *test.head_accuracies, lr_inv,
           round(seconds, 3)]
    wraps = ""
    if model.arith.counts_wraps:
        row += [acc[k] for k in _WRAP_KEYS]
        wraps = f"  wrapped {acc['wrapped_loss_errors']:,} loss errors, {acc['wrapped_sums']:,} sums"
    run.metrics.append(row)
    try:
        _save_last(run, model, opt, plateau, early, rngs, data, None, None)
        if improved:
            try:
                _copy_checkpoint(run.ckpt_dir / "last.npz", run.ckpt_dir / "best.npz")
            except NitroError as exc:
                raise NitroError(f"{exc}; checkpoints/last.npz is intact. Free space, then continue with "
                                 f"`{continue_command(run.run_dir, run.cfg)}`") from exc
        _append_metrics(run.run_dir / "metrics.csv", row)
    except NitroError:
        # The summary written on the way out must describe what is on disk: the epoch before this one.
        run.metrics.pop()
        run.epoch, run.best, run.train_seconds, run.samples = before
        raise
    run.write_summary()
    run.trackers.log_epoch(row)
    val = "" if val_acc is None else f"  val {val_acc:.2%}"
    heads = " ".join(f"{a:.1%}" for a in test.head_accuracies)
    display.line(f"epoch {epoch}/{t['max_epochs']}  loss {train_loss:.3f}  train {train_acc:.2%}{val}  "
                 f"test {test.accuracy:.2%}  heads [{heads}]  lr_inv {lr_inv}  {seconds:.1f}s  "
                 f"{acc['n'] / max(acc['seconds'], 1e-9):.0f} img/s{wraps}"
                 + ("  *best*" if improved else ""))
    display.epoch_done(epoch)
    if lowered:
        display.line(f"plateau: lr_inv {lr_inv} -> {opt.lr_inv}")
    if stop_now:
        display.line(f"early stop after epoch {epoch}: no {early.min_delta:.0%} gain in "  # type: ignore[union-attr]
                     f"{early.patience} epochs")  # type: ignore[union-attr]
    return stop_now


def _append_metrics(path: Path, row: list[Any]) -> None:
    try:
        with path.open("a", encoding="utf-8", newline="") as fh:
            fh.write(_csv_text([row]))
            fh.flush()
    except OSError as exc:
        raise NitroError(f"cannot append to {path}: {exc.strerror or exc}") from exc


def _save_last(run: _Run, model: NitroNet, opt: IntegerSGD, plateau: Any, early: EarlyStopping | None,
               rngs: RngStreams, data: Prepared, position: dict[str, Any] | None,
               perm: np.ndarray | None) -> None:
    """Write checkpoints/last.npz atomically; a write error leaves the previous one in place."""
    state = {
        "kind": "train", "epoch": run.epoch, "position": position, "config": run.cfg,
        "model": model.config, "head_names": model.head_names, "class_names": data.class_names,
        "optimizer": opt.state_dict(), "plateau": plateau.state_dict(),
        "early_stop": early.state_dict() if early is not None else None, "rng": rngs.state_dict(),
        "metrics": run.metrics, "best": run.best, "wall_seconds": run.wall(),
        "train_seconds": run.train_seconds, "samples": run.samples,
    }
    path = run.ckpt_dir / "last.npz"
    try:
        save_checkpoint(path, _state_arrays(model, data.normalizer, perm), state)
    except OSError as exc:
        then = (f"the previous {path} is intact. Free space, then continue with "
                f"`{continue_command(run.run_dir, run.cfg, run.saved_cfg)}`" if path.exists() else
                "no earlier checkpoint exists. Free space, then run the same command again with "
                f"`{_path_override('hydra.run.dir', run.run_dir.absolute())}`")
        raise NitroError(f"cannot write checkpoint {path}: {exc.strerror or exc} (disk full?); "
                         f"{then}") from exc
    run.saved_cfg = run.cfg


def _copy_checkpoint(src: Path, dst: Path) -> None:
    try:
        tmp = dst.with_name(f".{dst.name}.copy.tmp")
        shutil.copyfile(src, tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        tmp.replace(dst)
    except OSError as exc:
        raise NitroError(f"cannot write checkpoint {dst}: {exc.strerror or exc} (disk full?)") from exc


def _restore(run: _Run, ckpt: Checkpoint, model: NitroNet, opt: IntegerSGD, plateau: Any,
             early: EarlyStopping | None, rngs: RngStreams, data: Prepared,
             header: list[str]) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """Load every piece of run state from `ckpt`; returns the mid-epoch position (if any) and its order."""
    s = ckpt.state
    try:
        model.load_state_dict(ckpt.section("param/"))
        stored = Normalizer.from_state_dict(ckpt.section("norm/", strip=True))
        if not (np.array_equal(stored.mean, data.normalizer.mean)
                and np.array_equal(stored.mad, data.normalizer.mad)):
            raise NitroError(f"the dataset {run.cfg['data']['name']} differs from the one {ckpt.path} was "
                             "trained on (other normalization statistics); point data.root at the same files")
        opt.load_state_dict(s["optimizer"])
        plateau.load_state_dict(s["plateau"], int(s["epoch"]))
        if early is not None and s.get("early_stop") is not None:
            early.load_state_dict(s["early_stop"], int(s["epoch"]))
        rngs.load_state_dict(s["rng"])
        run.epoch = int(s["epoch"])
        run.metrics = [list(r) for r in s["metrics"]]
        run.best = dict(s["best"])
        run.wall_before = float(s["wall_seconds"])
        run.train_seconds = float(s["train_seconds"])
        run.samples = int(s["samples"])
        position = s.get("position")
        perm = ckpt.arrays.get("resume/perm") if position is not None else None
        if position is not None and (perm is None or len(perm) != len(data.train_y)):
            raise NitroError("its mid-epoch position does not match the training set")
    except NitroError as exc:
        raise NitroError(f"cannot resume from {ckpt.path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise NitroError(f"cannot resume from {ckpt.path}: its run state is incomplete ({exc})") from None
    atomic_write_text(run.run_dir / "metrics.csv", _csv_text([header, *run.metrics]))
    if ckpt.path is not None and ckpt.path.resolve() == (run.ckpt_dir / "last.npz").resolve():
        run.saved_cfg = s["config"]
    src_best = ckpt.path.parent / "best.npz" if ckpt.path is not None else None
    dst_best = run.ckpt_dir / "best.npz"
    if src_best is not None and src_best.resolve() != dst_best.resolve() and src_best.is_file():
        try:
            if load_checkpoint(src_best).state.get("epoch") == run.best["epoch"]:
                _copy_checkpoint(src_best, dst_best)
        except NitroError as exc:
            run.log.warning(f"not copying {src_best}: {exc}")
    where = f"epoch {position['epoch']} batch {position['next_batch']}" if position else f"epoch {run.epoch}"
    run.log.info(f"resumed from {ckpt.path} at {where}")
    return position, perm

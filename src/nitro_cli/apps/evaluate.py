"""`nitro eval ckpt=...`: accuracy, per-head accuracies and a confusion matrix, printed and in eval.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from ..data import dataset_sizes
from ..errors import NitroError
from ..runner import EvalReport, evaluate_checkpoint, validate_eval_config
from ..runner.checkpoint import atomic_write_bytes, atomic_write_text
from ..runner.evaluate import check_eval, check_limit
from ..runner.progress import count_progress
from ..runner.rundir import lock_folder, unlock_folder
from .common import plain_config, run_task, task_config


def show(report: EvalReport, console: Console) -> None:
    """Accuracy, then one row per learning head, then the confusion matrix (rows: truth, columns: guess)."""
    images = f"first {report.n} of {report.n_test} test images" if report.limit else f"{report.n} images"
    console.print(f"[bold]{report.ckpt}[/] (epoch {report.epoch}) on {report.data} test, {images}: "
                  f"accuracy [bold]{report.test_accuracy:.2%}[/] ({report.test_accuracy!r})")
    heads = Table(title="learning heads", title_justify="left")
    heads.add_column("head")
    heads.add_column("accuracy", justify="right")
    for name, acc in zip(report.head_names, report.head_accuracies, strict=True):
        heads.add_row(name, f"{acc:.2%}")
    console.print(heads)
    conf = Table(title="confusion (rows: true class, columns: predicted)", title_justify="left")
    conf.add_column("true \\ pred")
    labels = [str(c) for c in report.class_names] or [str(i) for i in range(len(report.confusion))]
    for label in labels:
        conf.add_column(label[:8], justify="right")
    for r, (label, row) in enumerate(zip(labels, report.confusion.tolist(), strict=True)):
        conf.add_row(label, *[f"[bold]{v}[/]" if i == r else str(v) for i, v in enumerate(row)])
    console.print(conf)


def check(config: DictConfig, out_dir: Path, here: bool) -> None:
    """The Preflight check of `nitro eval` (see apps/common.py): the config, the checkpoint, the dataset
    and `limit` against its test split."""
    c = validate_eval_config(plain_config(task_config(config)))
    job = check_eval(to_absolute_path(c["ckpt"]), c["data"])
    if c["limit"] is not None:
        root = c["data"]["root"] if c["data"] else None
        check_limit(c["limit"], job.name, dataset_sizes(job.name, root)[1])


def _write_logits(path: Path, logits: np.ndarray) -> dict[str, Any]:
    """logits.npy (atomically), and its entry in eval.json."""
    atomic_write_bytes(path, lambda fh: np.save(fh, logits, allow_pickle=False))
    return {"file": path.name, "shape": list(logits.shape), "dtype": str(logits.dtype)}


def evaluate(cfg: DictConfig) -> EvalReport:
    """Evaluate, write eval.json, then print (a closed stdout, e.g. `| head`, loses no file)."""
    out_dir = lock_folder(Path(HydraConfig.get().runtime.output_dir))
    out = out_dir / "eval.json"
    try:
        c = validate_eval_config(plain_config(cfg))
        with count_progress(c["progress"], "evaluating") as on_batch:
            report = evaluate_checkpoint(to_absolute_path(c["ckpt"]), data=c["data"],
                                         backend=c["engine"]["backend"], batch_size=c["batch_size"],
                                         on_batch=on_batch, limit=c["limit"], keep_logits=c["save_logits"])
        logits_file = out_dir / "logits.npy"
        try:
            logits = None if report.logits is None else _write_logits(logits_file, report.logits)
            atomic_write_text(out, json.dumps({**report.to_json(), "logits": logits}, indent=2) + "\n")
        except OSError as exc:
            raise NitroError(f"cannot write the evaluation into {out_dir}: {exc.strerror or exc}") from exc
    finally:
        unlock_folder(out_dir)
    show(report, Console())
    Console().print(f"wrote {out}", markup=False, highlight=False)
    if logits is not None:
        rows, classes = logits["shape"]
        Console().print(f"wrote {logits_file} ({rows}x{classes} {logits['dtype']}: the output layer's logits "
                        "of the scored test images, in test-split order)", markup=False, highlight=False)
    return report


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `nitro eval`."""
    run_task(lambda: evaluate(cfg))


if __name__ == "__main__":
    main()

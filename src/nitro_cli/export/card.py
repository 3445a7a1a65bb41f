"""model_card.json: what an exported model is, where it came from, and how to run it.

Every value comes from nitro itself or from a check that `nitro eval` also runs (`check_eval`): a checkpoint
is a file anyone can write, so nothing in it reaches the card unchecked.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from .. import __version__
from ..data import DATASETS
from ..runner.evaluate import EvalJob
from .onnx_graph import DIGIT_BITS
from .plan import Plan, balanced_limbs


def source_commit() -> str:
    """The git commit of the nitro-cli source doing the export (`+dirty` with local changes), or 'unknown'
    when it does not run from a git checkout (e.g. an installed wheel)."""
    here = Path(__file__).resolve().parent.parent  # the nitro_cli package
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "."],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recorded_test_accuracy(state: dict[str, Any], epoch: int) -> float | None:
    """The test accuracy the training run recorded for `epoch` (metrics.csv's test_acc), or None where that
    row is missing or holds anything but a fraction."""
    for row in state.get("metrics") or []:
        if isinstance(row, list) and len(row) > 4 and row[0] == epoch:
            acc = row[4]
            fraction = isinstance(acc, int | float) and not isinstance(acc, bool) and 0 <= acc <= 1
            return float(acc) if fraction else None
    return None


def model_card(job: EvalJob, model_config: dict[str, Any], plan: Plan, fmt: str, files: dict[str, int],
               c_card: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card of an export: `job` holds what `check_eval` checked, `model_config` is the config of the
    network nitro rebuilt (NitroNet.config); class names come from the dataset registry. `c_card` is
    `CModel.card()` for a C export: its memory budget and each layer's limbs and accumulators."""
    ckpt = job.ckpt
    c, h, w = plan.in_shape
    layers = []
    for p in plan.products():
        entry: dict[str, Any] = {"name": p.name, "kind": p.kind, "weight_shape": list(p.weight.shape),
                                 "fan_in": p.fan_in, "max_abs_weight": p.max_abs_weight,
                                 "sum_bound": p.sum_bound, "int32_wrap": p.needs_wrap}
        if fmt == "onnx":
            entry["int8_limbs"] = len(balanced_limbs(p.weight, DIGIT_BITS))
            entry["limb_bits"] = DIGIT_BITS
        elif c_card is not None:
            entry.update(c_card["layers"][p.name])
        layers.append(entry)
    heads = [hd.name for hd in plan.heads]
    if fmt == "onnx":
        io = {"input": {"name": "image", "dtype": "uint8", "shape": ["N", c, h, w],
                        "layout": "NCHW raw pixel bytes (0..255); the graph normalizes them itself"},
              "outputs": {"logits": f"int8 [N, {plan.num_classes}]: the output layer after Scaling, bit for "
                                    "bit what `nitro eval` computes",
                          "prediction": "int64 [N]: argmax of logits (first maximum)",
                          **{f"head_{n}": f"int8 [N, {plan.num_classes}]: learning head of {n}"
                             for n in heads}},
              "run": "onnxruntime.InferenceSession('model.onnx').run(None, {'image': uint8 [N, C, H, W]})"}
    else:
        io = {"input": {"dtype": "uint8", "shape": [c, h, w],
                        "layout": "channel planes [C][H][W] of raw pixel bytes, as IDX and CIFAR-10 binary "
                                  "files store them"},
              "outputs": {"logits": f"int32_t [{plan.num_classes}] in [-127, 127]: the output layer after "
                                    "Scaling, bit for bit what `nitro eval` computes",
                          "return": "the predicted class (first maximum of logits)",
                          **({"head_logits": f"int32_t [{len(heads)} * {plan.num_classes}], heads {heads}"}
                             if heads else {})},
              "build": "cc -std=c99 -O2 -o nitro_eval main.c nitro_model.c nitro_weights.c",
              "run": ["./nitro_eval idx IMAGES-idx3-ubyte LABELS-idx1-ubyte",
                      "./nitro_eval cifar test_batch.bin"]}
    return {
        "format": fmt,
        "files": files,
        "dataset": job.name,
        "preset": model_config["preset"],
        "model": {k: model_config.get(k) for k in ("in_shape", "num_classes", "hidden", "features", "slope",
                                                     "decoder_dim", "dropout", "fe_dropout")},
        "compat": plan.compat,
        "class_names": list(DATASETS[job.name].class_names),
        "parameters": int(sum(p.weight.size for p in plan.products())),
        "test_accuracy": recorded_test_accuracy(ckpt.state, job.epoch),
        "test_accuracy_note": (f"recorded by `nitro train` at epoch {job.epoch} on the test split of "
                               f"{job.name} (trainer={job.trainer['name']}); null if that epoch did not end"),
        "epoch": job.epoch,
        "heads": heads,
        **io,
        "layers": layers,
        **({"memory": c_card["memory"]} if c_card is not None else {}),
        "checkpoint": {"path": str(ckpt.path), "sha256": file_sha256(ckpt.path) if ckpt.path else None},
        "exported_by": {"tool": "nitro-cli", "version": __version__, "commit": source_commit()},
    }

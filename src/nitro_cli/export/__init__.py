"""Integer-only inference artifacts of a trained checkpoint: an ONNX graph or C99 sources, plus a model card.

`export_checkpoint` checks the checkpoint as `nitro eval` does (`check_eval`: a checkpoint is a file anyone
can write, and its values reach generated files), rebuilds the network from it, turns it into a plan
(`plan.py`), renders the plan (`onnx_graph.py`, `c_source.py`), and writes the files atomically: into a temp
folder beside `out`, renamed into place at the end, so that a failure leaves nothing half-written.
`verify.py` runs the artifacts (ONNX Runtime, a C compiler) for the tests and the benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..data import Normalizer
from ..errors import NitroError
from ..nn import NitroNet
from ..runner.checkpoint import Checkpoint, fsync_dir
from ..runner.evaluate import EvalJob, check_eval, model_from_checkpoint
from .c_source import comment_text
from .card import model_card
from .plan import Plan, balanced_limbs, build_plan

FORMATS = ("onnx", "c")
ONNX_FILE = "model.onnx"
CARD_FILE = "model_card.json"

__all__ = ["FORMATS", "ExportResult", "Plan", "balanced_limbs", "build_plan", "export_checkpoint",
           "load_for_export", "render", "write_folder"]


@dataclass
class ExportResult:
    out: Path
    files: dict[str, int]  # name -> bytes
    card: dict[str, Any]


def _banner(job: EvalJob, model: NitroNet) -> str:
    """Provenance for the generated files, from checked values only (the file name escaped like a comment)."""
    name = comment_text(job.ckpt.path.name) if job.ckpt.path else "a checkpoint"
    return (f"NITRO-D {model.config['preset']} on {job.name}, exported by nitro-cli {__version__} from "
            f"{name} (epoch {job.epoch})")


def render(plan: Plan, fmt: str, banner: str = "NITRO-D integer-only inference") -> dict[str, bytes]:
    """The files of one export format (without the model card)."""
    if fmt == "onnx":
        try:
            from .onnx_graph import build_onnx
        except ImportError as exc:
            raise NitroError(f"format=onnx needs the onnx package ({exc.name} is missing): "
                             "pip install 'nitro-cli[export]'") from None
        model = build_onnx(plan, producer_version=__version__, doc=banner)
        return {ONNX_FILE: model.SerializeToString()}
    if fmt == "c":
        from .c_source import build_c

        return {name: text.encode() for name, text in build_c(plan, banner=banner).items()}
    raise NitroError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def _checked(path: str | os.PathLike[str]) -> tuple[EvalJob, NitroNet]:
    """The checkpoint checked as `nitro eval` checks it (no dataset needed), and its network."""
    job = check_eval(path, find_dataset=False)
    return job, model_from_checkpoint(job.ckpt)


def load_for_export(path: str | os.PathLike[str]) -> tuple[Checkpoint, NitroNet, Normalizer]:
    """The checkpoint, its network and its normalizer (every problem a one-line NitroError)."""
    job, model = _checked(path)
    return job.ckpt, model, job.normalizer


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise NitroError(f"out={out} exists and is not a folder; choose another out=")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise NitroError(f"out={out} already exists and is not empty; choose another out= or replace it "
                         "with overwrite=true")


def write_folder(out: Path, files: dict[str, bytes], overwrite: bool = False) -> None:
    """Write `files` into the folder `out` atomically (temp folder beside it, fsync, rename).

    On any failure the temp folder and any parent folder created for it are removed; an existing `out`
    is replaced (overwrite=true) only after the new folder is complete.
    """
    out = Path(os.path.abspath(out))
    _check_out(out, overwrite)
    created: list[Path] = []
    tmp: Path | None = None
    done = False
    try:
        missing = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        for name, data in files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old)  # old is an empty folder: rename replaces it
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        done = True
        fsync_dir(out.parent)
    except OSError as exc:
        raise NitroError(f"cannot write the export to {out}: {exc.strerror or exc}; choose a writable "
                         "out=") from None
    finally:
        if not done:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def export_checkpoint(path: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str], *,
                      heads: bool = False, overwrite: bool = False) -> ExportResult:
    """Export the checkpoint at `path` as `fmt` (onnx | c) into the folder `out`, with model_card.json."""
    if fmt not in FORMATS:
        raise NitroError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(os.path.abspath(out))
    _check_out(out, overwrite)
    job, model = _checked(path)
    plan = build_plan(model, job.normalizer.table(), heads=heads)
    files = render(plan, fmt, _banner(job, model))
    sizes = {name: len(data) for name, data in files.items()}
    card = model_card(job, model.config, plan, fmt, sizes)
    files[CARD_FILE] = (json.dumps(card, indent=2) + "\n").encode()
    sizes[CARD_FILE] = len(files[CARD_FILE])
    write_folder(out, files, overwrite)
    return ExportResult(out, sizes, card)

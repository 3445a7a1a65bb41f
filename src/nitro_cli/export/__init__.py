"""Integer-only inference artifacts of a trained checkpoint: an ONNX graph or C99 sources, plus a model card.

`export_checkpoint` checks the checkpoint as `nitro eval` does (`check_eval`: a checkpoint is a file anyone
can write, and its values reach generated files), rebuilds the network from it, turns it into a plan
(`plan.py`), renders the plan (`onnx_graph.py`, `c_source.py`), and writes the files atomically: into a temp
folder beside `out`, renamed into place at the end, so that a failure leaves nothing half-written.
`verify.py` runs the artifacts (ONNX Runtime, a C compiler) for the tests and the benchmark.

`out` is never a folder whose loss would hurt: overwrite=true replaces only an earlier export (its
model_card.json and nothing but the files an export writes), and only those files are removed.
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
from ..runner.rundir import LOCK_NAME, lock_holder
from .c_source import C_FILES, CModel, comment_text
from .card import model_card
from .plan import Plan, balanced_limbs, build_plan

FORMATS = ("onnx", "c")
ONNX_FILE = "model.onnx"
CARD_FILE = "model_card.json"
# Every file an export writes, whatever its format: overwrite=true removes these and nothing else.
EXPORT_FILES = frozenset({ONNX_FILE, CARD_FILE, *C_FILES})
# What a training run's folder holds (runner/loop.py, Hydra), and what Hydra writes into a sweep's folder.
RUN_MARKERS = ("metrics.csv", "summary.json", ".hydra", "checkpoints")
SWEEP_MARKER = "multirun.yaml"
_CARD_LIMIT = 1 << 20  # bytes; a card nitro wrote is a few KiB

__all__ = ["EXPORT_FILES", "FORMATS", "ExportResult", "Plan", "balanced_limbs", "build_plan",
           "export_checkpoint", "load_for_export", "render", "write_folder"]


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
    return _render(plan, fmt, banner)[0]


def _render(plan: Plan, fmt: str, banner: str) -> tuple[dict[str, bytes], dict[str, Any] | None]:
    """The files of one export format and, for C, its memory budget and layers (for the model card)."""
    if fmt == "onnx":
        try:
            from .onnx_graph import build_onnx
        except ImportError as exc:
            raise NitroError(f"format=onnx needs the onnx package ({exc.name} is missing): "
                             "pip install 'nitro-cli[export]'") from None
        model = build_onnx(plan, producer_version=__version__, doc=banner)
        return {ONNX_FILE: model.SerializeToString()}, None
    if fmt == "c":
        c_model = CModel(plan)
        return {name: text.encode() for name, text in c_model.files(banner).items()}, c_model.card()
    raise NitroError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def _checked(path: str | os.PathLike[str]) -> tuple[EvalJob, NitroNet]:
    """The checkpoint checked as `nitro eval` checks it (no dataset needed), and its network."""
    job = check_eval(path, find_dataset=False)
    return job, model_from_checkpoint(job.ckpt)


def load_for_export(path: str | os.PathLike[str]) -> tuple[Checkpoint, NitroNet, Normalizer]:
    """The checkpoint, its network and its normalizer (every problem a one-line NitroError)."""
    job, model = _checked(path)
    return job.ckpt, model, job.normalizer


def _listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _card_by_nitro(path: Path) -> bool:
    """Whether `path` is a model card that nitro-cli wrote (its exported_by.tool says so)."""
    try:
        if path.stat().st_size > _CARD_LIMIT:
            return False
        card = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    by = card.get("exported_by") if isinstance(card, dict) else None
    return isinstance(by, dict) and by.get("tool") == "nitro-cli"


def _not_an_export(folder: Path, names: list[str]) -> str | None:
    """Why `folder` (holding `names`) is not an earlier export, as a phrase for the refusal; None when it is
    one: a model_card.json written by nitro-cli and nothing but regular files an export writes."""
    if found := [n for n in names if n.endswith(".npz")]:
        return f"holds a checkpoint ({_listing(found)})"
    if found := [n for n in RUN_MARKERS if n in names]:
        return f"holds a training run ({_listing(found)})"
    runs = [n for n in names if any((folder / n / m).exists() for m in RUN_MARKERS)]
    if SWEEP_MARKER in names or runs:
        return f"holds a sweep ({_listing(sorted({SWEEP_MARKER} & set(names)) + runs)})"
    if found := [n for n in names if n not in EXPORT_FILES or (folder / n).is_symlink()
                 or not (folder / n).is_file()]:
        return f"holds files nitro export does not write ({_listing(found)})"
    if CARD_FILE not in names:
        return f"has no {CARD_FILE}"
    if not _card_by_nitro(folder / CARD_FILE):
        return f"has a {CARD_FILE} not written by nitro export"
    return None


def _check_out(out: Path, overwrite: bool, ckpt: Path | None = None) -> None:
    """Refuse an `out` whose replacement could lose anything: the current folder or one holding it, the
    checkpoint's folder, a folder a live run holds, anything but an empty folder or an earlier export, and an
    earlier export without overwrite=true. Every refusal is one NitroError line that names the reason."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise NitroError(f"out={out} exists and is not a folder; choose another out=")
    try:
        real, here = out.resolve(), Path.cwd().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop above out, a removed current folder
        raise NitroError(f"cannot resolve out={out} ({exc}); choose another out=") from None
    if real == here or real in here.parents:
        raise NitroError(f"out={out} is the current folder or holds it; choose a new folder for the export, "
                         "e.g. out=exports/<name>")
    if ckpt is not None and any(real in c.parents for c in (Path(os.path.abspath(ckpt)), ckpt.resolve())):
        raise NitroError(f"out={out} holds the checkpoint being exported ({ckpt}); choose another out=")
    if not out.is_dir():
        return
    try:
        names = sorted(os.listdir(out))
    except OSError as exc:
        raise NitroError(f"cannot read out={out}: {exc.strerror or exc}; choose another out=") from None
    if not names:
        return
    holder = lock_holder(out)
    if holder is not None:
        raise NitroError(f"out={out} is in use by {holder} (lock {out / LOCK_NAME}); choose another out=")
    why = _not_an_export(out, names)
    if why is not None:
        raise NitroError(f"out={out} already exists and {why}; overwrite=true replaces only a folder written "
                         "by nitro export: choose another out=")
    if not overwrite:
        raise NitroError(f"out={out} already holds an export; choose another out= or replace it with "
                         "overwrite=true")


def _remove_export(folder: Path) -> None:
    """Remove the files an export writes from `folder`, then the folder if that emptied it (never a tree:
    a file that appeared in it meanwhile stays, and so does the folder)."""
    for name in EXPORT_FILES:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def write_folder(out: Path, files: dict[str, bytes], overwrite: bool = False) -> None:
    """Write `files` into the folder `out` atomically (temp folder beside it, fsync, rename).

    On any failure the temp folder and any parent folder created for it are removed. An existing `out`
    must be empty, or an earlier export with overwrite=true (`_check_out`, run again just before the swap);
    it is replaced only after the new folder is complete, and only the files an export writes are removed.
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
        _check_out(out, overwrite)  # again: the folder may have changed while the files were written
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old)  # old is an empty folder: rename replaces it
            os.replace(tmp, out)
            _remove_export(old)
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
    _check_out(out, overwrite, Path(path))
    job, model = _checked(path)
    plan = build_plan(model, job.normalizer.table(), heads=heads)
    files, c_card = _render(plan, fmt, _banner(job, model))
    sizes = {name: len(data) for name, data in files.items()}
    card = model_card(job, model.config, plan, fmt, sizes, c_card)
    files[CARD_FILE] = (json.dumps(card, indent=2) + "\n").encode()
    sizes[CARD_FILE] = len(files[CARD_FILE])
    write_folder(out, files, overwrite)
    return ExportResult(out, sizes, card)

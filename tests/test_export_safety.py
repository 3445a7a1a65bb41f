"""`nitro export` against hostile input (issue #31): overwrite=true never deletes what nitro export did not
write, nothing from a checkpoint reaches generated source unchecked, and the C driver reads its arguments
strictly."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nitro_cli.data import DATASETS
from nitro_cli.errors import NitroError
from nitro_cli.export import export_checkpoint
from nitro_cli.export import verify as V
from nitro_cli.runner import load_checkpoint, save_checkpoint
from test_cli import clean_error
from test_export import needs_cc, needs_onnx


def _refused(ckpt: Path, out: Path | str, *needles: str, fmt: str = "c") -> None:
    """export_checkpoint(overwrite=true) refuses with a one-line message holding every needle."""
    with pytest.raises(NitroError) as info:
        export_checkpoint(ckpt, fmt, out, overwrite=True)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


@pytest.fixture
def ckpt(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """A private checkpoint outside every folder the tests offer as out=."""
    dst = tmp_path / "ckpts" / "last.npz"
    dst.parent.mkdir()
    tiny_ckpt.rename(dst)
    return dst


# ---------------------------------------------------------------------------------------------------------
# nothing from a checkpoint reaches generated source unchecked

MARKER = "NITRO_PWNED"


def _payloads(touch: Path) -> list[str]:
    """The crafted value of issue #31 (C code that runs `touch` when the driver starts), then newlines, a
    comment end, quotes, backslashes (a line splice too), a NUL and a very long value."""
    return [f'*/ __attribute__((constructor)) static void pwn(void) {{ system("touch {touch}"); }} '
            f"/* {MARKER}", f'mnist\n#include "{MARKER}"\n', f"*/ {MARKER} /*", f'"{MARKER}"', f"{MARKER}\\",
            f"{MARKER}\\\n", f"{MARKER}\0tail", MARKER * 20_000]


def _crafted(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """`src` with its state edited and its manifest recomputed, as anyone can do with save_checkpoint."""
    ckpt = load_checkpoint(src)
    edit(ckpt.state)
    save_checkpoint(dst, ckpt.arrays, ckpt.state)
    return dst


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = state
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


@pytest.mark.parametrize(("field", "needle"), [("config.data.name", "data.name must be one of"),
                                               ("config.trainer.name", "trainer.name must be one of"),
                                               ("model.preset", "unknown model preset"),
                                               ("epoch", "malformed")])
@pytest.mark.parametrize("kind", range(8))
def test_checkpoint_fields_that_reach_generated_files_are_validated(field: str, needle: str, kind: int,
                                                                    ckpt: Path, tmp_path: Path) -> None:
    payload = _payloads(tmp_path / "PWNED")[kind]
    bad = _crafted(ckpt, tmp_path / "bad.npz", _set(field, payload))
    for fmt in ("c", "onnx"):
        _refused(bad, tmp_path / "out", needle, fmt=fmt)
    assert not (tmp_path / "out").exists()


def test_the_crafted_checkpoint_of_issue_31_is_refused_like_nitro_eval_refuses_it(ckpt: Path, nitro,
                                                                                  tmp_path: Path) -> None:
    bad = _crafted(ckpt, tmp_path / "evil.npz", _set("config.data.name", _payloads(tmp_path / "PWNED")[0]))
    clean_error(nitro("eval", f"ckpt={bad}", f"hydra.run.dir={tmp_path / 'eval'}"),
                "data.name must be one of")
    clean_error(nitro("export", f"ckpt={bad}", "format=c", f"out={tmp_path / 'evil_c'}",
                      f"hydra.run.dir={tmp_path / 'export'}"), "data.name must be one of")
    assert not (tmp_path / "evil_c").exists()


def _assert_clean_and_harmless(out: Path, touch: Path, tmp_path: Path) -> None:
    """No injected text in any generated file; the C export compiles strictly and runs without side effect."""
    for f in out.iterdir():
        assert MARKER.encode() not in f.read_bytes(), f.name
    if (out / "main.c").exists():
        needs_cc()
        V.compile_c(out, tmp_path / "nitro_eval")
        x = np.zeros((3, 1, 28, 28), dtype=np.uint8)
        img, lbl = V.write_idx(x, np.zeros(3, dtype=np.uint8), tmp_path)
        V.run_c_driver(tmp_path / "nitro_eval", [img, lbl])
    assert not touch.exists()


def test_unchecked_fields_never_reach_generated_files(ckpt: Path, tmp_path: Path) -> None:
    """Fields nitro eval does not need to be anything in particular (class names, the recorded accuracy,
    free-text config labels and paths) are left out of the export: the card takes the class names from the
    dataset, and a recorded accuracy that is not a fraction is unknown."""
    touch = tmp_path / "PWNED"
    payloads = _payloads(touch)

    def edit(state: dict[str, Any]) -> None:
        state["class_names"] = payloads
        state["head_names"] = payloads
        state["metrics"][-1][4] = payloads[0]
        state["config"]["data"]["root"] = payloads[1]
        state["config"]["compat"]["name"] = payloads[2]
        state["config"]["experiment"] = payloads[3]

    bad = _crafted(ckpt, tmp_path / "bad.npz", edit)
    c = export_checkpoint(bad, "c", tmp_path / "c")
    assert c.card["class_names"] == list(DATASETS["mnist_mini"].class_names)
    assert c.card["test_accuracy"] is None
    _assert_clean_and_harmless(tmp_path / "c", touch, tmp_path)
    needs_onnx()
    export_checkpoint(bad, "onnx", tmp_path / "onnx")
    _assert_clean_and_harmless(tmp_path / "onnx", touch, tmp_path)


def test_a_hostile_checkpoint_file_name_stays_a_comment(ckpt: Path, tmp_path: Path) -> None:
    """A file name may hold newlines, quotes and backslashes (never a slash): it reaches the banner comment
    only through the C writer's escaping, so no line of it becomes code."""
    hostile = tmp_path / f"last\n#error {MARKER}\n\\\"??= *.npz"
    shutil.copyfile(ckpt, hostile)
    out = tmp_path / "c"
    export_checkpoint(hostile, "c", out)
    for f in out.glob("*.[ch]"):
        for line in f.read_text().splitlines():
            if MARKER in line:  # only in the banner, on the first line of a comment, and harmless there
                head, _, banner = line.partition(": ")
                assert head.startswith("/* nitro_") and not set(banner) & set('#\\"?*/'), (f.name, line)
    needs_cc()
    V.compile_c(out, tmp_path / "nitro_eval")  # -Wall -Wextra -Werror -pedantic: no stray comment or splice

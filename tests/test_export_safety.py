"""`nitro export` against hostile input (issue #31): overwrite=true never deletes what nitro export did not
write, nothing from a checkpoint reaches generated source unchecked, and the C driver reads its arguments
strictly."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import file_hashes
from nitro_cli.data import DATASETS
from nitro_cli.errors import NitroError
from nitro_cli.export import export_checkpoint, write_folder
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
# overwrite=true replaces only an earlier export


def _copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def test_overwrite_refuses_a_run_folder_and_keeps_every_file(tiny_run: Path, ckpt: Path,
                                                             tmp_path: Path) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    before = file_hashes(run)
    _refused(ckpt, run, "holds a training run", "choose another out=")
    assert file_hashes(run) == before


def test_overwrite_refuses_the_run_folder_of_the_checkpoint_itself(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    before = file_hashes(run)
    _refused(run / "checkpoints" / "last.npz", run, "holds the checkpoint being exported")
    _refused(run / "checkpoints" / "last.npz", run / "checkpoints", "holds the checkpoint being exported")
    assert file_hashes(run) == before


def test_overwrite_refuses_the_current_folder_and_its_parents(ckpt: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    work = home / "work"
    work.mkdir(parents=True)
    (home / "thesis.tex").write_text("three years\n")
    (work / "notes.txt").write_text("mine\n")
    before = file_hashes(home)
    monkeypatch.chdir(work)
    _refused(ckpt, ".", "is the current folder or holds it")
    _refused(ckpt, "..", "is the current folder or holds it")
    _refused(ckpt, work, "is the current folder or holds it")
    assert file_hashes(home) == before
    # Even an earlier export is not replaced while it is the current folder.
    export_checkpoint(ckpt, "c", home / "exp")
    monkeypatch.chdir(home / "exp")
    before = file_hashes(home)
    _refused(ckpt, ".", "is the current folder or holds it")
    assert file_hashes(home) == before


def test_overwrite_refuses_a_sweep(tiny_run: Path, ckpt: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _copy_run(tiny_run, sweep / "0")
    _copy_run(tiny_run, sweep / "1")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    before = file_hashes(sweep)
    _refused(ckpt, sweep, "holds a sweep")
    assert file_hashes(sweep) == before
    (sweep / "multirun.yaml").unlink()  # a sweep's folders alone are enough
    before = file_hashes(sweep)
    _refused(ckpt, sweep, "holds a sweep")
    assert file_hashes(sweep) == before


def test_overwrite_refuses_a_folder_holding_a_checkpoint(ckpt: Path, tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    shutil.copyfile(ckpt, keep / "best_of_my_life.npz")
    before = file_hashes(keep)
    _refused(ckpt, keep, "holds a checkpoint", "best_of_my_life.npz")
    assert file_hashes(keep) == before


def test_overwrite_refuses_a_folder_locked_by_a_live_run(tiny_run: Path, ckpt: Path, tmp_path: Path) -> None:
    live = _copy_run(tiny_run, tmp_path / "live")
    fd = os.open(live / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: lock_holder sees a holder
        os.write(fd, b"4242 trainhost\n")
        before = file_hashes(live)
        _refused(ckpt, live, "is in use by process 4242 on trainhost")
        # Even a folder that looks like an export is not touched while a live process holds its lock.
        exp = tmp_path / "exp"
        export_checkpoint(ckpt, "c", exp)
        shutil.copyfile(live / ".lock", exp / ".lock")
        fd2 = os.open(exp / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd2, fcntl.LOCK_EX)
            exp_before = file_hashes(exp)
            _refused(ckpt, exp, "is in use by process 4242")
            assert file_hashes(exp) == exp_before
        finally:
            os.close(fd2)
        assert file_hashes(live) == before
    finally:
        os.close(fd)


@pytest.mark.parametrize("extra", ["notes.txt", "sub/notes.txt", "nitro_eval"])
def test_overwrite_refuses_an_export_holding_other_files(extra: str, ckpt: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    export_checkpoint(ckpt, "c", exp)
    (exp / extra).parent.mkdir(exist_ok=True)
    (exp / extra).write_text("mine\n")
    before = file_hashes(exp)
    _refused(ckpt, exp, "nitro export does not write", extra.split("/")[0])
    assert file_hashes(exp) == before


def test_overwrite_refuses_a_folder_with_a_foreign_model_card(ckpt: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_card.json").write_text(json.dumps({"model": "someone else's"}))
    (other / "main.c").write_text("int main(void) { return 0; }\n")
    before = file_hashes(other)
    _refused(ckpt, other, "not written by nitro export")
    assert file_hashes(other) == before
    (other / "model_card.json").unlink()
    before = file_hashes(other)
    _refused(ckpt, other, "has no model_card.json")
    assert file_hashes(other) == before


def test_overwrite_replaces_an_earlier_export_file_by_file(ckpt: Path, tmp_path: Path) -> None:
    from nitro_cli.export import EXPORT_FILES

    exp = tmp_path / "exp"
    export_checkpoint(ckpt, "c", exp)
    needs_onnx()
    result = export_checkpoint(ckpt, "onnx", exp, overwrite=True)
    assert sorted(p.name for p in exp.iterdir()) == ["model.onnx", "model_card.json"] == sorted(result.files)
    assert set(result.files) <= EXPORT_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpts", "exp"]  # no temp or old folder left


def test_a_file_added_while_the_export_is_written_is_kept(ckpt: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder is checked again just before it is replaced: a file that appeared meanwhile stops it."""
    import nitro_cli.export as export

    exp = tmp_path / "exp"
    export_checkpoint(ckpt, "c", exp)
    real = export.fsync_dir

    def user_saves_a_file(folder: Path) -> None:
        if not (exp / "late.txt").exists():
            (exp / "late.txt").write_text("saved while the export ran\n")
        real(folder)

    monkeypatch.setattr(export, "fsync_dir", user_saves_a_file)
    before = file_hashes(exp)
    with pytest.raises(NitroError, match="late.txt"):
        write_folder(exp, {"main.c": b"int main(void) { return 0; }\n"}, overwrite=True)
    after = file_hashes(exp)
    assert after.pop("late.txt") and after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpts", "exp"]


def test_data_loss_refusals_end_in_one_error_line(tiny_run: Path, ckpt: Path, nitro, tmp_path: Path) -> None:
    """Through the command line: the run folder, the current folder, a live run; nothing is touched."""
    run = _copy_run(tiny_run, tmp_path / "run")
    before = file_hashes(tmp_path)
    hydra = f"hydra.run.dir={tmp_path.parent / (tmp_path.name + '_hydra')}"
    clean_error(nitro("export", f"ckpt={run / 'checkpoints' / 'last.npz'}", "format=c", f"out={run}",
                      "overwrite=true", hydra), "holds the checkpoint being exported")
    clean_error(nitro("export", f"ckpt={ckpt}", "format=c", "out=.", "overwrite=true", hydra),
                "is the current folder or holds it")
    clean_error(nitro("export", f"ckpt={ckpt}", "format=c", f"out={run}", hydra), "holds a training run")
    assert file_hashes(tmp_path) == before


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


# ---------------------------------------------------------------------------------------------------------
# the C driver's arguments

N_IMAGES = 30


@pytest.fixture(scope="module")
def driver(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny run's C export compiled twice (progress every 10 s, and after every image), with 30 test
    images as IDX files."""
    needs_cc()
    tmp = tmp_path_factory.mktemp("driver")
    export_checkpoint(tiny_run / "checkpoints" / "last.npz", "c", tmp / "c")
    V.compile_c(tmp / "c", tmp / "nitro_eval")
    V.compile_c(tmp / "c", tmp / "nitro_eval_chatty", extra_flags=["-DNITRO_PROGRESS_SECONDS=0"])
    rng = np.random.default_rng(0)
    img, lbl = V.write_idx(rng.integers(0, 256, (N_IMAGES, 1, 28, 28), dtype=np.uint8),
                           rng.integers(0, 10, N_IMAGES, dtype=np.uint8), tmp)
    return {"exe": tmp / "nitro_eval", "chatty": tmp / "nitro_eval_chatty", "img": img, "lbl": lbl}


def _drive(driver: dict[str, Path], *args: str, exe: str = "exe") -> subprocess.CompletedProcess[str]:
    names = {"IMG": str(driver["img"]), "LBL": str(driver["lbl"])}
    return subprocess.run([str(driver[exe]), *(names.get(a, a) for a in args)], capture_output=True,
                          text=True, timeout=60)


def _scored(res: subprocess.CompletedProcess[str]) -> int:
    assert res.returncode == 0, res.stderr
    last = res.stdout.splitlines()[-1]
    assert last.startswith("accuracy "), res.stdout
    return int(last.split("/")[1].split()[0])


@pytest.mark.parametrize("args", [["idx", "IMG", "LBL", "--limit", "5"],
                                  ["--limit", "5", "idx", "IMG", "LBL"],
                                  ["idx", "--limit", "5", "IMG", "LBL"],
                                  ["idx", "IMG", "LBL", "--limit=5"]])
def test_driver_options_count_anywhere(args: list[str], driver: dict[str, Path]) -> None:
    assert _scored(_drive(driver, *args)) == 5


def test_driver_scores_every_image_without_a_limit_and_logits_anywhere(driver: dict[str, Path]) -> None:
    assert _scored(_drive(driver, "idx", "IMG", "LBL")) == N_IMAGES
    res = _drive(driver, "idx", "IMG", "LBL", "--logits", "--limit", "3")
    assert _scored(res) == 3 and len(res.stdout.splitlines()) == 4
    assert res.stderr == ""  # no progress line for a run shorter than 10 s


@pytest.mark.parametrize(("args", "needle"), [
    (["idx", "IMG", "LBL", "extra"], "unexpected argument after idx IMAGES LABELS: extra"),
    (["idx", "IMG"], "idx needs IMAGES and LABELS"),
    (["cifar"], "cifar needs at least one"),
    ([], "missing the format"),
    (["mnist", "IMG", "LBL"], "unknown format (idx or cifar): mnist"),
    (["--limit", "-5", "idx", "IMG", "LBL"], "--limit needs a whole number of images, at least 1: -5"),
    (["idx", "IMG", "LBL", "--limit", "0"], "--limit needs a whole number of images, at least 1: 0"),
    (["idx", "IMG", "LBL", "--limit", "5x"], "--limit needs a whole number of images, at least 1: 5x"),
    (["idx", "IMG", "LBL", "--limit", "99999999999999999999"], "at least 1: 99999999999999999999"),
    (["idx", "IMG", "LBL", "--limit"], "--limit needs a whole number of images"),
    (["idx", "IMG", "LBL", "--frobnicate"], "unknown option (use --limit N, --logits): --frobnicate"),
])
def test_driver_refuses_bad_arguments_with_usage(args: list[str], needle: str,
                                                 driver: dict[str, Path]) -> None:
    res = _drive(driver, *args)
    assert res.returncode == 2 and res.stdout == "", (res.returncode, res.stdout)
    lines = res.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert lines[1].startswith("usage: ") and "--limit N" in lines[1]


def test_driver_help_and_end_of_options(driver: dict[str, Path], tmp_path: Path) -> None:
    res = _drive(driver, "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: ") and res.stderr == ""
    dashed = tmp_path / "-images"
    shutil.copyfile(driver["img"], dashed)
    assert _scored(_drive(driver, "--limit", "4", "idx", "--", str(dashed), "LBL")) == 4


def test_driver_reports_progress_on_stderr(driver: dict[str, Path]) -> None:
    res = _drive(driver, "idx", "IMG", "LBL", exe="chatty")
    assert _scored(res) == N_IMAGES
    progress = res.stderr.splitlines()
    assert progress and all(line.startswith("nitro_eval: ") and "images scored" in line for line in progress)
    assert progress[-1] == f"nitro_eval: {N_IMAGES} images scored"

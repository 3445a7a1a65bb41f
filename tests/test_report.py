"""`nitro report`: discovery, grouping and statistics against hand-computed numbers, outputs, CLI."""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import nitro_cli
from nitro_cli.apps.report import compose_train, shipped_presets
from nitro_cli.errors import NitroError
from nitro_cli.report import PAPER_ROWS, Report, find_run_dirs, format_seeds, paper_row, write_report
from nitro_cli.report import collect_runs as collect_with

PRESETS = shipped_presets()  # composes each preset once, on first use, for every test of this module


def collect_runs(roots: list[Path], **kw: object) -> Report:
    return collect_with(roots, PRESETS, **kw)  # type: ignore[arg-type]


@functools.cache
def _composed(*overrides: str) -> str:
    return json.dumps(compose_train(list(overrides)))


def run_config(experiment: str, trainer: str, seed: int, *overrides: str) -> dict:
    """The config `nitro train` composes for such a run (what its .hydra/config.yaml holds)."""
    exp = [f"experiment={experiment}"] if experiment.startswith("paper/") else []
    cfg = json.loads(_composed(*exp, f"trainer={trainer}", *overrides))
    cfg["seed"] = seed
    return cfg

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Group A: a paper row under the paper protocol, seeds 42..44 (a multirun).
A_FINAL = [0.9700, 0.9720, 0.9680]
A_BEST = [0.9730, 0.9750, 0.9740]
A_CURVES = [[0.5, 0.6, 0.7], [0.6, 0.7, 0.8], [0.7, 0.8]]  # the third run stopped after 2 epochs
# Group B: a custom experiment under the default protocol, seeds 1..3 (single runs).
B_FINAL = [0.80, 0.85, 0.90]
B_BEST = [0.82, 0.86, 0.87]


def make_run(path: Path, *, experiment: str, trainer: str, seed: int, group: str | None,
             status: str | None = "completed", final: float = 0.5, best: float = 0.5,
             curve: list[float] | None = None, error: str | None = None, overrides: tuple[str, ...] = (),
             max_epochs: int = 3) -> Path:
    """A fake run dir in the contract's format; status None = no summary.json at all."""
    (path / ".hydra").mkdir(parents=True)
    cfg = run_config(experiment, trainer, seed, f"trainer.max_epochs={max_epochs}", *overrides)
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    curve = curve or [final]
    with (path / "metrics.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "train_loss", "train_acc", "val_acc", "test_acc", "head1_acc", "lr_inv",
                    "seconds"])
        for i, acc in enumerate(curve, start=1):
            w.writerow([i, 1.0 / i, acc, "", acc, acc, 512, 0.1])
    if status is not None:
        summary = {"experiment": experiment, "trainer": trainer, "seed": seed, "status": status,
                   "epochs_run": len(curve), "test_accuracy": final, "best_test_accuracy": best,
                   "best_epoch": 1, "val_accuracy": None, "wall_seconds": 2.0, "samples_per_s": 100.0,
                   "model": "mlp1", "data": "mnist", "group": group, "error": error}
        (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    sweep = root / "multirun" / "2025-01-01" / "10-00-00"
    for i, (seed, final, best, curve) in enumerate(zip((42, 43, 44), A_FINAL, A_BEST, A_CURVES, strict=True)):
        make_run(sweep / str(i), experiment="paper/mlp1_mnist", trainer="paper", seed=seed,
                 group="aaaa1111", final=final, best=best, curve=curve)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for seed, final, best in zip((1, 2, 3), B_FINAL, B_BEST, strict=True):
        make_run(root / "outputs" / "2025-01-02" / f"0{seed}-00-00", experiment="custom", trainer="default",
                 seed=seed, group="bbbb2222", final=final, best=best, max_epochs=1)
    # Left out of every average: a failed run, a still-running one, one killed before its summary.
    make_run(sweep / "3", experiment="paper/mlp1_mnist", trainer="paper", seed=45, group="aaaa1111",
             status="failed", final=0.10, best=0.10, error="IntegerOverflowError: layer fc1 would wrap")
    make_run(sweep / "4", experiment="paper/mlp1_mnist", trainer="paper", seed=46, group="aaaa1111",
             status="running", final=0.20, best=0.20)
    make_run(sweep / "5", experiment="paper/mlp1_mnist", trainer="paper", seed=47, group=None, status=None)
    # A report's own Hydra run dir (no `trainer` in its config): not a training run.
    rep = root / "outputs" / "report" / "2025-01-03" / "00-00-00"
    (rep / ".hydra").mkdir(parents=True)
    (rep / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"runs": ["multirun"], "out": None}))
    return root


def pop_std(values: list[float]) -> float:
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def test_paper_table_rows_and_sigma() -> None:
    assert list(PAPER_ROWS) == ["mlp1_mnist", "mlp2_fashion", "mlp3_mnist", "mlp3_fashion", "mlp4_cifar10",
                                "vgg8b_mnist", "vgg8b_fashion", "vgg8b_cifar10", "vgg11b_cifar10"]
    row = paper_row("paper/vgg8b_cifar10")
    assert row is not None and row.mean == 87.96 and row.plus_minus == 0.39 and row.sigma == 0.195
    assert (row.fp_les, row.fp_bp, row.dataset) == (91.60, 94.01, "CIFAR-10")
    assert PAPER_ROWS["mlp1_mnist"].fp_les is None and PAPER_ROWS["mlp1_mnist"].fp_bp == 98.00
    assert paper_row("custom") is None and paper_row("paper/nope") is None


def test_discovery_finds_training_runs_only(runs_root: Path) -> None:
    dirs = find_run_dirs([runs_root / "multirun", runs_root / "outputs", runs_root / "missing"])
    assert len(dirs) == 9  # 6 completed + failed + running + no summary; the report dir is not a run
    assert not any("report" in d.parts for d in dirs)
    # A root may itself be a run dir.
    one = runs_root / "outputs" / "2025-01-02" / "01-00-00"
    assert find_run_dirs([one]) == [one.resolve()]
    assert len(find_run_dirs([runs_root, runs_root / "multirun"])) == 9  # overlapping roots: no duplicates


def test_grouping_means_and_population_sigma(runs_root: Path) -> None:
    report = collect_runs([runs_root])
    assert [(g.experiment, g.protocol, g.group, g.n) for g in report.groups] == [
        ("paper/mlp1_mnist", "paper", "aaaa1111", 3), ("custom", "default", "bbbb2222", 3)]
    a, b = report.groups
    assert a.seeds == [42, 43, 44] and b.seeds == [1, 2, 3]
    # Hand-computed: A final 0.9700 ± sqrt(8/3)e-3, best 0.9740 ± sqrt(2/3)e-3;
    # B best 0.85 ± sqrt(14/3)e-2 (deviations -3, +1, +2 points).
    assert a.final.mean == pytest.approx(0.9700) and a.final.std == pytest.approx(math.sqrt(8 / 3) * 1e-3)
    assert a.best.mean == pytest.approx(0.9740) and a.best.std == pytest.approx(math.sqrt(2 / 3) * 1e-3)
    assert b.final.mean == pytest.approx(0.85) and b.final.std == pytest.approx(pop_std(B_FINAL))
    assert b.best.mean == pytest.approx(0.85) and b.best.std == pytest.approx(math.sqrt(14 / 3) * 1e-2)
    assert b.best.std == pytest.approx(0.0216025, abs=1e-7)  # ddof=0, not the sample std 0.0264575
    assert a.delta_points == pytest.approx(97.40 - 97.36) and b.delta_points is None and b.paper is None


def test_failed_and_unfinished_runs_listed_not_averaged(runs_root: Path) -> None:
    report = collect_runs([runs_root])
    failed = {r.seed: r for r in report.failed}
    assert set(failed) == {45, 46, 47}
    assert failed[45].status == "failed" and "IntegerOverflowError" in (failed[45].error or "")
    assert failed[46].status == "running"
    assert failed[47].status == "missing summary" and failed[47].experiment == "paper/mlp1_mnist"
    assert sum(g.n for g in report.groups) == 6


def test_broken_summary_is_reported_not_fatal(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", experiment="custom", trainer="default", seed=0, group="g")
    (run / "summary.json").write_text("{not json")
    bad = make_run(tmp_path / "s", experiment="custom", trainer="default", seed=1, group="g", final=1.5)
    report = collect_runs([tmp_path])
    assert report.groups == [] and {r.status for r in report.failed} == {"unreadable"}
    assert any("not a fraction" in (r.error or "") for r in report.failed if r.path == bad.resolve())


def test_per_epoch_mean_and_band(runs_root: Path) -> None:
    a = collect_runs([runs_root]).groups[0]
    epochs, mean, std, count = a.per_epoch()
    assert epochs.tolist() == [1, 2, 3] and count.tolist() == [3, 3, 2]
    assert mean == pytest.approx([0.6, 0.7, 0.75]) and std == pytest.approx([pop_std([0.5, 0.6, 0.7]),
                                                                            pop_std([0.6, 0.7, 0.8]), 0.05])


def test_format_seeds() -> None:
    assert format_seeds(range(42, 52)) == "42-51"
    assert format_seeds([9, 1, 3, 7, 8]) == "1,3,7-9"
    assert format_seeds([]) == ""


def test_a_seed_found_twice_counts_once_from_its_newest_run(runs_root: Path, tmp_path: Path) -> None:
    original = runs_root / "outputs" / "2025-01-02" / "01-00-00"
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    newer = (copy / "summary.json").stat().st_mtime + 60
    os.utime(copy / "summary.json", (newer, newer))
    report = collect_runs([runs_root, copy])
    b = report.groups[1]
    assert b.n == 3 and b.seeds == [1, 2, 3] and b.final.mean == pytest.approx(0.85)
    assert [r.path for r in b.runs if r.seed == 1] == [copy.resolve()]
    assert [r.path for r in b.duplicates] == [original.resolve()]
    [warning] = [w for w in report.warnings if "seed 1" in w]
    assert f"also in {os.path.relpath(original)}, left out" in warning and os.path.relpath(copy) in warning


def test_no_runs_is_a_nitro_error(tmp_path: Path) -> None:
    with pytest.raises(NitroError, match="no training runs found"):
        collect_runs([tmp_path / "nothing", tmp_path])


def test_write_report_files(runs_root: Path, tmp_path: Path) -> None:
    from rich.console import Console

    out = tmp_path / "rep"
    console = Console(record=True, width=200)
    files = write_report(collect_runs([runs_root]), out, console)
    assert sorted(f.name for f in files) == ["accuracy_per_epoch.png", "report.csv", "report.md",
                                             "vs_paper.png"]
    text = console.export_text()
    assert "97.40 ± 0.08 [0.16]" in text and "97.36 ± 0.12 [0.23]" in text and "+0.04" in text
    assert "IntegerOverflowError" in text and "42-44" in text

    md = (out / "report.md").read_text()
    assert ("| paper/mlp1_mnist | paper | exact | aaaa1111 | 42-44 | 3 | 2-3 (stopped early, budget 3 of "
            "150) | 97.00 ± 0.16 | 97.40 ± 0.08 [0.16] |") in md
    assert ("| custom | default | exact | bbbb2222 | 1-3 | 3 | 1 | 85.00 ± 4.08 | 85.00 ± 2.16 [4.32] "
            "| - | - |") in md
    assert "± is the population σ" in md and "9,984 of 10,000 test images" in md and "every test image" in md
    assert "Failed or unfinished runs (3)" in md and "missing summary" in md and "layer fc1 would wrap" in md
    assert "| Epoch | paper/mlp1_mnist [paper] aaaa1111 | custom [default] bbbb2222 |" in md
    assert "| 3 | 75.00 ± 5.00 (n=2) |" in md  # two of the three seeds reached epoch 3

    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["experiment"] for r in rows] == ["paper/mlp1_mnist", "custom"]
    assert [r["compat"] for r in rows] == ["exact", "exact"]
    assert float(rows[0]["best_test_acc_mean_pct"]) == pytest.approx(97.40)
    assert float(rows[0]["best_test_acc_std_pct"]) == pytest.approx(100 * math.sqrt(2 / 3) * 1e-3, abs=1e-6)
    assert float(rows[0]["delta_pts"]) == pytest.approx(0.04) and rows[0]["paper_2std_pct"] == "0.23"
    assert rows[1]["paper_mean_pct"] == "" and rows[1]["seeds"] == "1 2 3" and rows[1]["n"] == "3"
    for name in ("accuracy_per_epoch.png", "vs_paper.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_vs_paper_skipped_without_paper_rows(runs_root: Path, tmp_path: Path) -> None:
    from rich.console import Console

    out = tmp_path / "rep"
    out.mkdir()
    (out / "vs_paper.png").write_bytes(b"stale")
    console = Console(record=True, width=200)
    files = write_report(collect_runs([runs_root / "outputs"]), out, console)
    assert "vs_paper.png" not in {f.name for f in files} and not (out / "vs_paper.png").exists()
    assert "vs_paper.png not written" in console.export_text()


def _env() -> dict[str, str]:
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "COLUMNS": "200"}


def test_report_app_end_to_end(runs_root: Path, tmp_path: Path) -> None:
    """The Hydra app as the dispatcher calls it: a single-string runs=, output into its own run dir."""
    rep = runs_root / "outputs" / "myreport"  # inside a scanned folder: must not be picked up as a run
    cmd = [sys.executable, "-m", "nitro_cli.apps.report", f"runs={runs_root}", f"hydra.run.dir={rep}"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "97.40 ± 0.08 [0.16]" in res.stdout and "Failed or unfinished runs (3)" in res.stdout
    written = {p.name for p in rep.iterdir()}
    assert {"report.md", "report.csv", "accuracy_per_epoch.png", "vs_paper.png"} <= written
    # out= and a list of folders; a second run over the same folders still finds the same 9 runs.
    out = tmp_path / "elsewhere"
    cmd = [sys.executable, "-m", "nitro_cli.apps.report",
           f"runs=[{runs_root / 'multirun'},{runs_root / 'outputs'}]", f"out={out}", f"hydra.run.dir={rep}2"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "2 group(s) from 6 completed run(s), 3 failed/unfinished" in res.stdout
    assert (out / "report.csv").is_file()


def test_report_app_no_runs_exits_2_with_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "nitro_cli.apps.report", f"runs={tmp_path / 'empty'}",
           f"hydra.run.dir={tmp_path / 'rep'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no training runs found"), res.stderr
    assert "Traceback" not in res.stderr


CONFIGS_IS_PACKAGE = (Path(nitro_cli.__file__).parent / "configs" / "__init__.py").exists()


@pytest.mark.skipif(not CONFIGS_IS_PACKAGE,
                    reason="src/nitro_cli/configs/__init__.py is missing (CLI engineer's folder): Hydra "
                    "finds configs through that package when a dispatcher imports and calls main()")
def test_report_main_called_like_the_dispatcher(runs_root: Path, tmp_path: Path) -> None:
    """main() imported and called from other code (not as __main__), with sys.argv rewritten."""
    code = ("import sys; from nitro_cli.apps.report import main; "
            f"sys.argv = ['nitro', 'runs={runs_root}', 'hydra.run.dir={tmp_path / 'rep'}']; main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "rep" / "report.md").is_file()


NITRO = Path(sys.executable).parent / "nitro"


@pytest.mark.skipif(importlib.util.find_spec("nitro_cli.cli") is None or not NITRO.exists(),
                    reason="the `nitro` console script (nitro_cli/cli.py) is not there yet")
def test_nitro_report_console_script(runs_root: Path, tmp_path: Path) -> None:
    rep = tmp_path / "rep"
    res = subprocess.run([str(NITRO), "report", f"runs={runs_root}", f"hydra.run.dir={rep}"],
                         capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "97.40 ± 0.08 [0.16]" in res.stdout
    assert (rep / "vs_paper.png").read_bytes()[:8] == PNG_MAGIC
    res = subprocess.run([str(NITRO), "report", f"runs={tmp_path / 'empty'}", f"hydra.run.dir={rep}2"],
                         capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: no training runs found")


def test_only_an_unmodified_paper_preset_is_compared_with_the_paper(tmp_path: Path) -> None:
    exp = "paper/mlp1_mnist"
    make_run(tmp_path / "budget", experiment=exp, trainer="paper", seed=1, group="g1", max_epochs=2,
             curve=[0.9, 0.95])
    make_run(tmp_path / "mini", experiment=exp, trainer="paper", seed=1, group="g2",
             overrides=("data=mnist_mini",))
    make_run(tmp_path / "ref", experiment=exp, trainer="paper", seed=1, group="g3",
             overrides=("compat=reference",))
    make_run(tmp_path / "named", experiment="custom", trainer="default", seed=1, group="g4",
             overrides=("trainer.name=paper",))
    make_run(tmp_path / "mine", experiment=exp, trainer="paper", seed=1, group="g5",
             overrides=("trainer.monitor=val", "trainer.val_fraction=0.1"))
    make_run(tmp_path / "double", experiment=exp, trainer="paper", seed=1, group="g6",
             overrides=("compat.cnn_linear_double_update=true",))
    groups = {g.group: g for g in collect_runs([tmp_path]).groups}
    assert groups["g1"].paper is PAPER_ROWS["mlp1_mnist"] and groups["g1"].modified == ()
    assert groups["g1"].epochs == "2 (budget 2 of 150)"
    # g1-g3 share experiment and protocol: labelled by what tells them apart (compat.* by its preset's name)
    assert groups["g1"].label == f"{exp} compat.name=exact data.name=mnist trainer.max_epochs=2"
    assert groups["g2"].paper is None and groups["g2"].modified == ("data.name",)
    assert groups["g2"].label == (f"{exp} (modified) compat.name=exact data.name=mnist_mini "
                                  "trainer.max_epochs=3")
    # the row under the reference's arithmetic is still the row, compared with the paper, its compat shown
    assert groups["g3"].label == f"{exp} compat.name=reference data.name=mnist trainer.max_epochs=3"
    assert "compat.int32_accumulation=true" in groups["g3"].differs  # all of them in report.csv
    assert groups["g3"].paper is PAPER_ROWS["mlp1_mnist"] and groups["g3"].modified == ()
    assert (groups["g1"].compat, groups["g3"].compat) == ("exact", "reference")
    write_report(collect_runs([tmp_path]), tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"| {groups['g3'].label} | paper | reference | g3 |" in md
    assert f"{groups['g3'].label} [paper, compat=reference] g3 |" in md  # the per-epoch table's column
    assert groups["g6"].compat == "custom: cnn_linear_double_update" and groups["g6"].paper is None
    assert groups["g6"].modified == ("compat.cnn_linear_double_update",)
    assert groups["g4"].protocol == "default"  # its trainer is the default one, whatever its name says
    assert groups["g5"].protocol == "custom" and groups["g5"].paper is None
    assert "trainer.monitor" in groups["g5"].modified


def test_configs_written_before_a_key_existed_are_read_as_what_that_nitro_did(tmp_path: Path) -> None:
    for name, exp in (("mlp", "paper/mlp1_mnist"), ("vgg", "paper/vgg8b_mnist")):
        run = make_run(tmp_path / name, experiment=exp, trainer="paper", seed=1, group=name)
        cfg = yaml.safe_load((run / ".hydra/config.yaml").read_text())
        del cfg["compat"], cfg["model"]["fe_dropout"], cfg["optimizer"]["conv_amp_multiplier"]
        (run / ".hydra/config.yaml").write_text(yaml.safe_dump(cfg))
    groups = {g.group: g for g in collect_runs([tmp_path]).groups}
    assert groups["mlp"].paper is PAPER_ROWS["mlp1_mnist"]
    # VGG blocks were trained with the conv amp multiplier before it became a switch (off in the presets).
    assert groups["vgg"].paper is None and groups["vgg"].modified == ("optimizer.conv_amp_multiplier",)


def test_runs_given_as_a_file_are_refused_in_one_line(runs_root: Path, tmp_path: Path) -> None:
    summary = runs_root / "outputs" / "2025-01-02" / "01-00-00" / "summary.json"
    res = subprocess.run([str(NITRO), "report", f"runs={summary}"], capture_output=True, text=True,
                         cwd=tmp_path, env=_env(), timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("error: runs: ") and "is a file" in res.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_reader_that_stops_early_loses_no_report_file(runs_root: Path, tmp_path: Path) -> None:
    """`nitro report ... | head -2`: the files are all written, and the closed pipe is no error."""
    out = tmp_path / "rep"
    proc = subprocess.Popen([str(NITRO), "report", f"runs={runs_root}", f"out={out}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == ""
    assert {p.name for p in out.iterdir()} == {"report.md", "report.csv", "accuracy_per_epoch.png",
                                              "vs_paper.png"}


def test_report_into_the_folder_it_scans_finds_its_runs_and_not_its_own_files(runs_root: Path,
                                                                             tmp_path: Path) -> None:
    """`runs=X out=X` (twice: the second report must not read the first one's files as runs), and an out=
    folder below a scanned root that itself holds runs."""
    sweep = runs_root / "multirun" / "2025-01-01" / "10-00-00"
    for _ in range(2):
        res = subprocess.run([str(NITRO), "report", f"runs={sweep}", f"out={sweep}"], capture_output=True,
                             text=True, cwd=tmp_path, env=_env(), timeout=120)
        assert res.returncode == 0, res.stderr
        assert "1 group(s) from 3 completed run(s), 3 failed/unfinished" in res.stdout
        assert (sweep / "report.csv").is_file()
    res = subprocess.run([str(NITRO), "report", f"runs={runs_root}", f"out={runs_root / 'outputs'}"],
                         capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "2 group(s) from 6 completed run(s), 3 failed/unfinished" in res.stdout


def test_a_metrics_csv_that_disagrees_with_summary_json_is_warned_about(tmp_path: Path) -> None:
    cut = make_run(tmp_path / "cut", experiment="custom", trainer="default", seed=1, group="g",
                   curve=[0.5, 0.6, 0.7])
    lines = (cut / "metrics.csv").read_text().splitlines(keepends=True)
    (cut / "metrics.csv").write_text("".join(lines[:2]))  # the header and epoch 1 of 3
    gone = make_run(tmp_path / "gone", experiment="custom", trainer="default", seed=2, group="g",
                    curve=[0.5, 0.6])
    (gone / "metrics.csv").unlink()
    make_run(tmp_path / "whole", experiment="custom", trainer="default", seed=3, group="g", curve=[0.5, 0.6])
    res = subprocess.run([str(NITRO), "report", f"runs={tmp_path}", f"out={tmp_path / 'rep'}"],
                         capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, res.stdout
    [cut_line] = [w for w in warnings if "cut" in w]
    assert "metrics.csv has 1 epoch row(s) but summary.json says 3 epochs ran" in cut_line
    [gone_line] = [w for w in warnings if "gone" in w]
    assert "no metrics.csv but summary.json says 2 epochs ran" in gone_line
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Warnings" in md and "metrics.csv has 1 epoch row(s)" in md
    [row] = list(csv.DictReader((tmp_path / "rep" / "report.csv").open()))
    assert row["n"] == "3"  # a warning, not a reason to leave a run out


def test_groups_of_one_experiment_are_labelled_by_the_settings_that_tell_them_apart(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    from matplotlib.figure import Figure

    runs = tmp_path / "runs"
    for lr_inv in (256, 1024):
        for seed in (1, 2):
            make_run(runs / f"lr{lr_inv}-{seed}", experiment="custom", trainer="default", seed=seed,
                     group=f"g{lr_inv}", overrides=(f"optimizer.lr_inv={lr_inv}",), curve=[0.5, 0.6])
    make_run(runs / "paper", experiment="paper/mlp1_mnist", trainer="paper", seed=1, group="p")  # alone
    res = subprocess.run([str(NITRO), "report", f"runs={runs}", f"out={tmp_path / 'rep'}"],
                         capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "custom optimizer.lr_inv=256" in res.stdout and "custom optimizer.lr_inv=1024" in res.stdout
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| custom optimizer.lr_inv=256 | default | exact | g256 | 1-2 | 2 |" in md
    assert "| custom optimizer.lr_inv=1024 | default | exact | g1024 | 1-2 | 2 |" in md
    assert "| paper/mlp1_mnist | paper | exact | p | 1 | 1 |" in md  # nothing to tell apart
    assert ("| Epoch | paper/mlp1_mnist [paper] p | custom optimizer.lr_inv=256 [default] g256 | "
            "custom optimizer.lr_inv=1024 [default] g1024 |") in md  # in the order of the values
    rows = {r["group"]: r for r in csv.DictReader((tmp_path / "rep" / "report.csv").open())}
    assert {g: r["differs"] for g, r in rows.items()} == {"g256": "optimizer.lr_inv=256",
                                                          "g1024": "optimizer.lr_inv=1024", "p": ""}

    drawn: list[str] = []  # the legend entries and tick labels of the plots, as drawn
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.extend(
        t.get_text() for ax in fig.axes for t in [*ax.get_xticklabels(),
                                                  *(ax.get_legend().get_texts() if ax.get_legend() else [])]))
    write_report(collect_runs([runs]), tmp_path / "rep2")
    assert "custom optimizer.lr_inv=256 [default] g256 (n=2)" in drawn
    assert "custom optimizer.lr_inv=1024 [default] g1024 (n=2)" in drawn


def test_many_differing_settings_are_shortened_in_labels_and_complete_in_the_csv(tmp_path: Path) -> None:
    for i, (hidden, lr_inv, amp, dropout, seed) in enumerate([(16, 256, 2, 0.1, 1), (32, 1024, 3, 0.2, 4)]):
        make_run(tmp_path / str(i), experiment="custom", trainer="default", seed=seed, group=f"g{i}",
                 overrides=(f"model.hidden=[{hidden},{hidden}]", f"optimizer.lr_inv={lr_inv}",
                            f"optimizer.amp={amp}", f"model.dropout={dropout}"))
    make_run(tmp_path / "mini", experiment="custom", trainer="default", seed=1, group="g2",
             overrides=("data=mnist",))
    report = collect_runs([tmp_path])
    a, b, c = sorted(report.groups, key=lambda g: g.group)
    assert a.differs == ("data.name=mnist_mini", "model.dropout=0.1", "model.hidden=[16,16]",
                         "optimizer.amp=2", "optimizer.lr_inv=256")  # not the seed
    assert a.label == "custom data.name=mnist_mini model.dropout=0.1 model.hidden=[16,16] +2 more"
    assert b.label == "custom data.name=mnist_mini model.dropout=0.2 model.hidden=[32,32] +2 more"
    assert c.label == "custom data.name=mnist model.dropout=0.0 model.hidden=[100,50] +2 more"
    assert c.differs[2:] == ("model.hidden=[100,50]", "optimizer.amp=null", "optimizer.lr_inv=512")


def test_the_per_epoch_table_shows_the_references_published_epochs_beside_ours(tmp_path: Path) -> None:
    exp = "paper/vgg8b_cifar10"
    make_run(tmp_path / "exact", experiment=exp, trainer="paper", seed=42, group="ex", max_epochs=4,
             curve=[0.1, 0.2, 0.3, 0.4])
    make_run(tmp_path / "ref", experiment=exp, trainer="paper", seed=42, group="rf", max_epochs=4,
             curve=[0.1, 0.25, 0.35, 0.45], overrides=("compat=reference",))
    write_report(collect_runs([tmp_path]), tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    table = md[md.index("## Test accuracy per epoch"):].splitlines()
    assert table[2].startswith("| Epoch | reference's published run, seed 42 (vgg8b_cifar10) | ")
    assert "[paper] ex |" in table[2] and "[paper, compat=reference] rf |" in table[2]
    assert table[4:8] == ["| 1 | 9.99 | 10.00 | 10.00 |", "| 2 | 29.68 | 20.00 | 25.00 |",
                          "| 3 | 44.84 | 30.00 | 35.00 |", "| 4 |  | 40.00 | 45.00 |"]

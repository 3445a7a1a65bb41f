"""The reproduction scripts, run for real on a small budget: train, extend, and keep finished runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NITRO, nitro_env, real_data_root

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_run_paper_rows_trains_extends_and_keeps_finished_runs(tmp_path: Path) -> None:
    root = real_data_root("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-images-idx3-ubyte")
    if not NITRO.exists():
        pytest.skip(f"{NITRO} is not installed")
    env = {**nitro_env(), "NITRO_DATA": str(root), "NITRO": str(NITRO)}
    run = tmp_path / "out/mlp1_mnist/paper/0"

    def rows(epochs: int) -> list[dict[str, str]]:
        res = subprocess.run([str(SCRIPTS / "run-paper-rows.sh"), str(tmp_path / "out"), str(epochs)],
                             input="mlp1_mnist paper 42\n", capture_output=True, text=True, env=env,
                             timeout=300)
        log = tmp_path / "out/logs/mlp1_mnist-paper-42.log"
        assert res.returncode == 0, res.stdout + res.stderr + log.read_text()
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        with open(run / "metrics.csv") as f:
            return list(csv.DictReader(f))

    one = rows(1)
    assert len(one) == 1
    two = rows(2)  # extended by resuming: the first epoch stays as it was
    assert [r["epoch"] for r in two] == ["1", "2"] and two[0] == one[0]
    assert rows(2) == two  # a finished run is left as it is
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2
    assert (tmp_path / "out/logs/wall_time.txt").read_text().count("mlp1_mnist paper seed 42") == 3
    bad = subprocess.run([str(SCRIPTS / "run-paper-rows.sh"), str(tmp_path / "out"), "2"],
                         input="mlp1_mnist paper 42\nnope_row paper 42\n", capture_output=True, text=True,
                         env=env, timeout=300)
    assert bad.returncode != 0 and "FAILED: nope_row paper seed 42" in bad.stderr
    assert f"see {tmp_path}/out/logs/nope_row-paper-42.log" in bad.stderr


def test_head_error_tables_every_block_of_a_checkpoint(tiny_run: Path) -> None:
    ckpt = tiny_run / "checkpoints/last.npz"
    res = subprocess.run([sys.executable, str(SCRIPTS / "head_error.py"), str(ckpt), "--images", "32"],
                         capture_output=True, text=True, env=nitro_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    assert "shared part" in header and [r.split()[0] for r in rows] == ["block1"]
    shared = float(rows[0].split()[3].rstrip("%"))
    assert 0 <= shared <= 100

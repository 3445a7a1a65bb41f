"""The committed results are what the code makes: a paper MLP1 run retrained now must give the committed
metrics rows again, bit for bit (a change to the engine, data order or protocol that alters them fails)."""

from __future__ import annotations

import csv
from pathlib import Path

from conftest import real_data_root

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _rows(path: Path, n: int) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    for row in rows:
        row.pop("seconds")  # wall time, the one column that may differ
    return rows


def test_a_two_epoch_paper_mlp1_run_reproduces_the_committed_metrics_rows(nitro, tmp_path: Path) -> None:
    real_data_root("MNIST/raw/train-images-idx3-ubyte")
    committed = RESULTS / "mlp" / "mlp1_mnist" / "paper" / "0"
    overrides = (committed / ".hydra" / "overrides.yaml").read_text()
    assert "experiment=paper/mlp1_mnist" in overrides and "seed=42" in overrides
    res = nitro("train", "experiment=paper/mlp1_mnist", "trainer=paper", "seed=42", "trainer.max_epochs=2",
                f"hydra.run.dir={tmp_path / 'run'}", "engine=numpy", timeout=300)
    assert res.returncode == 0, res.stderr
    expected = _rows(committed / "metrics.csv", 2)
    assert len(expected) == 2
    assert _rows(tmp_path / "run" / "metrics.csv", 2) == expected

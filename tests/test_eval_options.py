"""`nitro eval limit=N save_logits=true`: a quick score on the first N test images, and the logits kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nitro_cli.data import load_dataset
from nitro_cli.runner import load_checkpoint, model_from_checkpoint
from nitro_cli.runner.evaluate import check_eval


def test_limit_scores_the_first_n_images_and_save_logits_writes_theirs(tiny_run: Path, nitro,
                                                                       tmp_path: Path) -> None:
    ckpt = tiny_run / "checkpoints" / "last.npz"
    res = nitro("eval", f"ckpt={ckpt}", "limit=100", "save_logits=true", f"hydra.run.dir={tmp_path / 'ev'}")
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["n"] == 100 and report["limit"] == 100 and np.sum(report["confusion"]) == 100
    logits = np.load(tmp_path / "ev" / "logits.npy", allow_pickle=False)
    assert report["logits"] == {"file": "logits.npy", "shape": [100, 10], "dtype": str(logits.dtype)}
    assert logits.shape == (100, 10) and logits.dtype.kind == "i"
    assert f"logits.npy (100x10 {logits.dtype}" in " ".join(res.stdout.split())
    # The same numbers as the model rebuilt here, on the first 100 test images.
    model = model_from_checkpoint(load_checkpoint(ckpt))
    raw = load_dataset("mnist_mini")
    expected, _ = model.predict(check_eval(ckpt).normalizer.apply(raw.test_x[:100]))
    assert np.array_equal(logits, expected)
    accuracy = float(np.mean(logits.argmax(axis=1) == raw.test_y[:100]))
    assert report["test_accuracy"] == pytest.approx(accuracy)
    assert "first 100 of 2000 test images" in " ".join(res.stdout.split())


def test_without_options_no_logits_are_written(tiny_run: Path, nitro, tmp_path: Path) -> None:
    res = nitro("eval", f"ckpt={tiny_run / 'checkpoints' / 'last.npz'}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["n"] == 2000 and report["limit"] is None and report["logits"] is None
    assert not (tmp_path / "ev" / "logits.npy").exists() and "logits.npy" not in res.stdout


@pytest.mark.parametrize(("limit", "needle"), [
    ("0", "limit must be >= 1, got 0"),
    ("-5", "limit must be >= 1, got -5"),
    ("ten", "limit must be an integer or null, got 'ten'"),
    ("2.5", "limit must be an integer or null, got 2.5"),
    ("2001", "limit=2001 exceeds the 2000 test images of mnist_mini"),
])
def test_a_bad_limit_is_refused_in_one_line(tiny_run: Path, nitro, tmp_path: Path, limit: str,
                                            needle: str) -> None:
    out = tmp_path / "ev"
    res = nitro("eval", f"ckpt={tiny_run / 'checkpoints' / 'last.npz'}", f"limit={limit}",
                f"hydra.run.dir={out}")
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert not out.exists()  # refused before anything was written

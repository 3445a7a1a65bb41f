"""The CuPy engine: a run on a CUDA GPU is bit-identical to the same run on the CPU, checkpoints move freely.

The `gpu` tests run only where `get_backend("cupy")` succeeds (CuPy installed and a CUDA GPU usable) and
are skipped with the reason otherwise. Without a GPU, `engine=cupy` must fail in one clean line.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import params
from nitro_cli.engine import BackendUnavailable, get_backend, kernels


def _cupy_unusable() -> str | None:
    """Why CuPy cannot run here, or None when it can."""
    try:
        get_backend("cupy")
    except BackendUnavailable as exc:
        return str(exc)
    return None


REASON = _cupy_unusable()
needs_gpu = pytest.mark.skipif(REASON is not None, reason=f"needs CuPy and a CUDA GPU: {REASON}")
# One epoch of MLP1 on the embedded MNIST subset, with dropout and augmentation so that every host-side
# random stream (init, shuffle, dropout masks, augmentation) feeds the device computation.
EPOCH = ["trainer.max_epochs=1", "model.dropout=0.1", "data.augment=true"]


def _train(nitro, run_dir: Path, *args: str) -> dict:
    res = nitro("train", *args, f"hydra.run.dir={run_dir}", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def _assert_same_params(a: Path, b: Path) -> None:
    pa, pb = params(a), params(b)
    assert pa and sorted(pa) == sorted(pb)
    for key in pa:
        assert pa[key].dtype == pb[key].dtype and pa[key].shape == pb[key].shape, key
        assert np.array_equal(pa[key], pb[key]), f"{key} differs between the CPU and the GPU run"


@pytest.mark.gpu
@needs_gpu
def test_cupy_epoch_is_bit_identical_to_numpy_and_checkpoints_cross_over(nitro, tmp_path: Path) -> None:
    cpu = _train(nitro, tmp_path / "cpu", *EPOCH, "engine=numpy")
    gpu = _train(nitro, tmp_path / "gpu", *EPOCH, "engine=cupy")
    _assert_same_params(tmp_path / "cpu/checkpoints/last.npz", tmp_path / "gpu/checkpoints/last.npz")
    for key in ("test_accuracy", "best_test_accuracy", "val_accuracy", "best_epoch"):
        assert cpu[key] == gpu[key], key
    assert (tmp_path / "cpu/metrics.csv").read_text().splitlines()[1].split(",")[:-1] == \
        (tmp_path / "gpu/metrics.csv").read_text().splitlines()[1].split(",")[:-1]  # all but seconds

    # A CPU checkpoint continued on the GPU and a GPU checkpoint continued on the CPU end identical.
    on_gpu = _train(nitro, tmp_path / "cpu2gpu", f"resume={tmp_path / 'cpu/checkpoints/last.npz'}",
                    "trainer.max_epochs=2", "engine=cupy")
    on_cpu = _train(nitro, tmp_path / "gpu2cpu", f"resume={tmp_path / 'gpu/checkpoints/last.npz'}",
                    "trainer.max_epochs=2", "engine=numpy")
    assert on_gpu["epochs_run"] == on_cpu["epochs_run"] == 2
    assert on_gpu["test_accuracy"] == on_cpu["test_accuracy"]
    _assert_same_params(tmp_path / "cpu2gpu/checkpoints/last.npz", tmp_path / "gpu2cpu/checkpoints/last.npz")


@pytest.mark.gpu
@needs_gpu
def test_cupy_conv_epoch_is_bit_identical_to_numpy(nitro, tmp_path: Path) -> None:
    """The convolution, pooling and local-head kernels of a small VGG, which the MLP test never reaches."""
    conv = ["model=vgg8b", "model.features=[16,M,32,M]", "model.hidden=[64]", *EPOCH]
    cpu = _train(nitro, tmp_path / "cpu", *conv, "engine=numpy")
    gpu = _train(nitro, tmp_path / "gpu", *conv, "engine=cupy")
    _assert_same_params(tmp_path / "cpu/checkpoints/last.npz", tmp_path / "gpu/checkpoints/last.npz")
    assert cpu["test_accuracy"] == gpu["test_accuracy"]
    assert (tmp_path / "cpu/metrics.csv").read_text().splitlines()[1].split(",")[:-1] == \
        (tmp_path / "gpu/metrics.csv").read_text().splitlines()[1].split(",")[:-1]  # all but seconds


@pytest.mark.gpu
@needs_gpu
def test_eval_on_the_gpu_reproduces_a_cpu_run(nitro, tmp_path: Path) -> None:
    cpu = _train(nitro, tmp_path / "cpu", "trainer.max_epochs=1", "model.hidden=[32]", "engine=numpy")
    res = nitro("eval", f"ckpt={tmp_path / 'cpu/checkpoints/last.npz'}", "engine=cupy",
                f"hydra.run.dir={tmp_path / 'ev'}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "ev/eval.json").read_text())["test_accuracy"] == cpu["test_accuracy"]


@pytest.mark.gpu
@needs_gpu
def test_max_abs_of_device_views_is_exact() -> None:
    """Views that are neither C- nor F-contiguous (a padded pool's error, a strided slice) are reduced
    through a contiguous copy on the GPU; the result is still the exact max|a|, int64's minimum included."""
    cp = get_backend("cupy")
    a = np.random.default_rng(0).integers(-2**62, 2**62, size=(4, 30, 30, 8), dtype=np.int64)
    a[1, 5, 7, 3] = np.iinfo(np.int64).min
    on_device = cp.asarray(a)
    for view in (np.s_[:, 1:29, 1:29], np.s_[..., ::2], np.s_[:, ::3, 2:]):
        expected = max(abs(int(v)) for v in a[view].ravel())
        assert not on_device[view].flags.c_contiguous
        assert kernels.max_abs(on_device[view]) == expected == kernels.max_abs(a[view])
    assert kernels.max_abs(on_device.transpose(3, 2, 1, 0)) == 2**63  # F-contiguous: reduced in place


@pytest.mark.skipif(REASON is None, reason="CuPy and a CUDA GPU are usable here")
def test_engine_cupy_without_a_gpu_fails_in_one_line(nitro, tmp_path: Path) -> None:
    res: subprocess.CompletedProcess[str] = nitro("train", "engine=cupy", "trainer.max_epochs=1",
                                                  f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "CuPy" in lines[0] and "engine=numpy" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()  # refused before its folder was made


@pytest.mark.skipif(REASON is None, reason="CuPy and a CUDA GPU are usable here")
def test_engine_auto_falls_back_to_numpy_without_a_gpu() -> None:
    assert get_backend("auto") is np

"""The scripts, run for real on a small budget: the reproduction scripts train, extend and keep finished runs;
the benchmark's cases run, say where each product went, and skip what the machine lacks."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from conftest import NITRO, nitro_cmd, nitro_env, params, real_data_root

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
    variant = subprocess.run([str(SCRIPTS / "run-paper-rows.sh"), str(tmp_path / "out"), "1"],
                             input="mlp1_mnist paper 42 reference compat=reference\n", capture_output=True,
                             text=True, env=env, timeout=300)
    assert variant.returncode == 0, variant.stderr
    ref = tmp_path / "out/mlp1_mnist/paper-reference/0"
    assert json.loads((ref / "summary.json").read_text())["compat"]["name"] == "reference"
    assert "wrapped_loss_errors" in (ref / "metrics.csv").read_text().splitlines()[0]
    assert (tmp_path / "out/logs/mlp1_mnist-paper-reference-42.log").is_file()


def test_head_error_tables_every_block_of_a_checkpoint(tiny_run: Path) -> None:
    ckpt = tiny_run / "checkpoints/last.npz"
    res = subprocess.run([sys.executable, str(SCRIPTS / "head_error.py"), str(ckpt), "--images", "32"],
                         capture_output=True, text=True, env=nitro_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    assert "shared part" in header and [r.split()[0] for r in rows] == ["block1"]
    shared = float(rows[0].split()[3].rstrip("%"))
    assert 0 <= shared <= 100


# --- scripts/bench.py ---------------------------------------------------------------------------------------

PATHS = {"int8x1", "int8x2", "int8x3", "int8x4", "int8x5", "float32", "float32-sliced", "float64", "int64"}


def bench(*args: str) -> tuple[list[dict], subprocess.CompletedProcess[str]]:
    """Run the benchmark (with a given GEMM rate, not measured); its JSON lines and the process."""
    res = subprocess.run([sys.executable, str(SCRIPTS / "bench.py"), "--gemm-gflops", "50", *args],
                         capture_output=True, text=True, env=nitro_env(), timeout=300)
    return [json.loads(line) for line in res.stdout.splitlines()], res


def bench_module() -> ModuleType:
    """scripts/bench.py imported as a module (its helpers, without a subprocess)."""
    spec = importlib.util.spec_from_file_location("bench", SCRIPTS / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_adds_up(case: dict) -> None:
    split = case["time_split"]
    assert split["product_seconds"] == pytest.approx(sum(split["layers"].values()), abs=1e-5)
    assert split["product_seconds"] == pytest.approx(sum(split["paths"].values()), abs=1e-5)
    assert split["product_seconds"] + split["other_seconds"] == pytest.approx(split["step_seconds"], abs=1e-5)
    assert 0 < split["product_seconds"] < split["step_seconds"] and set(split["paths"]) <= PATHS


@pytest.fixture(scope="module")
def vgg_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reduced VGG (the vgg8b_mnist paper row with two small conv blocks) after 2 batches of MNIST."""
    root = real_data_root("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-images-idx3-ubyte")
    run = tmp_path_factory.mktemp("vgg") / "run"
    res = subprocess.run([*nitro_cmd(), "train", "experiment=paper/vgg8b_mnist", "model.features=[8,M,8,M]",
                          "model.hidden=[16]", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                          "trainer.limit_test_batches=1", "engine=numpy", f"hydra.run.dir={run}"],
                         capture_output=True, text=True, env={**nitro_env(), "NITRO_DATA": str(root)},
                         timeout=300, cwd=run.parent)
    assert res.returncode == 0, res.stderr
    return run / "checkpoints/last.npz"


def test_bench_labels_each_layers_products_and_splits_the_step_time() -> None:
    (case,), res = bench("--case", "mlp1_train", "--steps", "4", "--split")
    assert res.returncode == 0, res.stderr
    assert case["case"] == "mlp1_train" and case["steps"] == 4 and case["samples_per_s"] > 0
    assert case["gemm_efficiency"] > 0 and case["float64_gemm_gflops"] == 50
    methods = {"block1": ("forward_scaled", "weight_grad"), "block2": ("forward_scaled", "weight_grad"),
               "block1_head": ("forward_scaled", "weight_grad", "input_error"),
               "block2_head": ("forward_scaled", "weight_grad", "input_error"),
               "output": ("forward_scaled", "weight_grad")}
    assert set(case["paths"]) == {f"{layer}.{m}" for layer, ms in methods.items() for m in ms}
    for path in case["paths"].values():
        assert set([path] if isinstance(path, str) else path) <= PATHS
    assert set(case["time_split"]["layers"]) == set(methods) and case["time_split"]["traced_steps"] == 1
    split_adds_up(case)
    assert "mlp1_train: 1 traced step(s)" in res.stderr and "block1_head.input_error" in res.stderr


def test_bench_labels_only_the_traced_steps() -> None:
    from nitro_cli.engine import RngStreams, trace_products
    from nitro_cli.nn import build_model
    from nitro_cli.optim import IntegerSGD

    bench_py, rngs = bench_module(), RngStreams(0)
    model = build_model("mlp1", (1, 28, 28), 10, seed_rng=rngs.init, hidden=[16])
    x = rngs.augment.integers(-128, 128, size=(8, 1, 28, 28)).astype(np.int8)
    labels = np.arange(8) % 10
    y = (np.eye(10, dtype=np.int8) * 32)[labels]
    with trace_products() as records:
        with bench_py.layer_labels(model):
            model.train_step(x, y, labels, IntegerSGD(512), rngs.dropout)
        model.train_step(x, y, labels, IntegerSGD(512), rngs.dropout)
    first, second = records[: len(records) // 2], records[len(records) // 2 :]
    assert all(r.label for r in first) and not any(r.label for r in second)
    assert all(not set(vars(layer)) & set(bench_py.TRACED_METHODS) for layer in model.layers())


def test_bench_real_state_case_runs_the_checkpoints_state_on_real_mnist_batches(vgg_ckpt: Path) -> None:
    (case,), res = bench("--case", "vgg8b_mnist_train_real", "--checkpoint", str(vgg_ckpt), "--steps", "2")
    assert res.returncode == 0, res.stderr
    assert case["data"] == "mnist" and case["image_shape"] == [1, 28, 28]
    assert case["features"] == [8, "M", 8, "M"]
    assert case["weights"] == "checkpoint (mnist)" and case["steps"] == 2
    assert case["batches"] == 4  # warm-up, 2 timed, 1 traced: consecutive batches of the next epoch
    assert case["optimizer"]["lr_inv"] == 512 and case["optimizer"]["fwd_decay_inv"] == 30000
    info = case["checkpoint"]
    grown = {k.split("/")[1]: int(np.abs(v.astype(np.int64)).max()) for k, v in params(vgg_ckpt).items()}
    assert info["path"] == str(vgg_ckpt) and info["epoch"] == 1 and info["max_abs_weight"] == grown
    assert info["max_abs_weight_overall"] == max(grown.values())
    assert {"block1.forward_scaled", "block3_head.input_error", "output.weight_grad"} <= set(case["paths"])
    split_adds_up(case)


def test_bench_transplants_a_checkpoint_into_other_shapes() -> None:
    rng = np.random.default_rng(1)
    source = {"param/a/weight": rng.integers(-900, 900, (4, 3)).astype(np.int32),
              "param/b/weight": rng.integers(-50, 50, (2, 8)).astype(np.int32)}
    target = {"param/a/weight": np.zeros((4, 3), np.int32), "param/b/weight": np.zeros((2, 11), np.int32)}
    bench_py = bench_module()
    out, copied, drawn = bench_py.transplant(source, target)
    assert (copied, drawn) == (["a"], ["b"])
    assert np.array_equal(out["param/a/weight"], source["param/a/weight"])
    b = out["param/b/weight"]
    assert b.shape == (2, 11) and b.dtype == np.int32
    assert set(b.ravel()) <= set(source["param/b/weight"].ravel())
    assert np.array_equal(bench_py.transplant(source, target)[0]["param/b/weight"], b)  # a fixed seed


def test_bench_real_state_case_at_cifar10_shapes_from_an_mnist_checkpoint(vgg_ckpt: Path) -> None:
    real_data_root("cifar-10-batches-bin/data_batch_1.bin", "cifar-10-batches-bin/test_batch.bin")
    (case,), res = bench("--case", "vgg8b_train_real", "--checkpoint", str(vgg_ckpt), "--steps", "1")
    assert res.returncode == 0, res.stderr
    assert case["data"] == "cifar10" and case["image_shape"] == [3, 32, 32]
    assert case["weights"].startswith("transplanted from a mnist checkpoint")
    # 3 input channels, and every input size that follows from 32 instead of 28 pixels, differ
    assert case["drawn_layers"] == ["block1", "block1_head", "block2_head", "block3"]
    assert case["copied_layers"] == ["block2", "block3_head", "output"]
    split_adds_up(case)


def test_bench_times_nitro_train_on_a_slice_of_the_next_epoch(vgg_ckpt: Path) -> None:
    before = vgg_ckpt.read_bytes()
    (case,), res = bench("--case", "vgg8b_mnist_nitro_train", "--checkpoint", str(vgg_ckpt), "--batches", "2",
                         "--test-batches", "1")
    assert res.returncode == 0, res.stderr
    assert case["samples"] == 2 * 64 and case["batches"] == 2 and case["summary_epochs"] == 2
    assert case["samples_per_s"] == pytest.approx(case["samples"] / case["train_seconds"], rel=1e-3)
    assert case["checkpoint"]["epoch"] == 1 and "trainer.limit_train_batches=2" in case["command"]
    assert vgg_ckpt.read_bytes() == before  # it trained a copy


def test_bench_skips_what_this_machine_lacks(tmp_path: Path) -> None:
    cases = ["vgg8b_mnist_train_real", "vgg8b_train_real", "vgg8b_mnist_nitro_train"]
    lines, res = bench(*(a for c in cases for a in ("--case", c)), "--checkpoint", str(tmp_path / "none.npz"))
    assert res.returncode == 0, res.stderr
    assert [c["case"] for c in lines] == cases
    assert all(set(c) == {"case", "skipped"} and "none.npz does not exist" in c["skipped"] for c in lines)
    code = ("import runpy, sys; sys.modules['torch'] = None; "  # as if torch were not installed
            f"sys.argv = ['bench.py', '--case', 'torch_fp32_mlp1_train', '--gemm-gflops', '1']; "
            f"runpy.run_path({str(SCRIPTS / 'bench.py')!r}, run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert json.loads(res.stdout) == {"case": "torch_fp32_mlp1_train",
                                      "skipped": "torch is not installed (pip install -e '.[bench]')"}


def test_bench_torch_mlp1_case() -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (pip install -e '.[bench]')")
    (case,), res = bench("--case", "torch_fp32_mlp1_train", "--steps", "5")
    assert res.returncode == 0, res.stderr
    assert case["case"] == "torch_fp32_mlp1_train" and case["steps"] == 5 and case["samples_per_s"] > 0


def test_gpu_profile_dry_run_splits_a_step_by_layer_path_and_function() -> None:
    """scripts/gpu_profile.py (run by gpu-bench.sh on a GPU) on NumPy, on a small VGG: the split adds up."""
    args = ["--engine", "numpy", "--steps", "2", "--features", "8,16,M", "--hidden", "32", "--shapes",
            "mnist,cifar10"]
    res = subprocess.run([sys.executable, str(SCRIPTS / "gpu_profile.py"), *args], capture_output=True,
                         text=True, timeout=120, env={**nitro_env(), "OPENBLAS_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [d["shape"] for d in lines] == ["1x28x28", "3x32x32"]
    for d in lines:
        assert d["engine"] == "numpy" and d["steps"] == 2 and d["samples_per_s"] > 0
        assert {"block1.weight_grad", "block3.forward_scaled", "output.weight_grad"} <= \
            {key.split(" ")[0] for key in d["product_seconds_by_layer"]}
        assert sum(d["product_seconds_by_path"].values()) <= d["step_seconds_range"][1] * 1.5
        assert any(f["function"].startswith("train_step") for f in d["top_functions_cumulative"])


def test_bench_ab_alternates_a_setting_every_step_and_reports_both() -> None:
    res = subprocess.run([sys.executable, str(SCRIPTS / "bench_ab.py"), "mlp4_train", "outliers", "on", "off",
                          "--pairs", "2"], capture_output=True, text=True, env=nitro_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "mlp4_train, outliers alternating every step, 2 steps each:"
    for value, line in zip(("on", "off"), lines[1:], strict=True):
        assert line.startswith(f"  outliers={value}: wall median ")
        assert len(line.split("walls ")[1].strip("[]").split(",")) == 2
    refused = {"outliers": ("on", "maybe"), "digit_bits": ("7", "9"), "library": ("numpy", "torch")}
    for setting, values in refused.items():
        bad = subprocess.run([sys.executable, str(SCRIPTS / "bench_ab.py"), "mlp4_train", setting, *values],
                             capture_output=True, text=True, env=nitro_env(), timeout=300)
        assert bad.returncode == 2 and f"bad values for {setting}" in bad.stderr, bad.stderr

"""The runner as a library (no Hydra process): configs, validation, fuzzed overrides, fit, disk-full."""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import lock_held_elsewhere
from nitro_cli.cli import user_error_message
from nitro_cli.data import DATASETS
from nitro_cli.errors import NitroError
from nitro_cli.optim import sgd as sgd_module
from nitro_cli.runner import (
    build_network,
    build_optimizer,
    continue_command,
    experiment_group,
    fit,
    load_checkpoint,
    validate_train_config,
)
from nitro_cli.runner import loop as loop_module
from nitro_cli.runner import progress as progress_module
from nitro_cli.runner.config import TRAIN_SCHEMA
from nitro_cli.runner.progress import PlainDisplay
from nitro_cli.runner.rundir import lock_folder, lock_holder, unlock_folder

# The spec's table (section 5): row -> (preset, dataset, augment, dropout, fwd_decay_inv, subnet_decay_inv)
PAPER = {
    "mlp1_mnist": ("mlp1", "mnist", False, 0.0, 12000, 3000),
    "mlp2_fashion": ("mlp2", "fashion_mnist", False, 0.0, 10000, 8000),
    "mlp3_mnist": ("mlp3", "mnist", True, 0.0, 28000, 500),
    "mlp3_fashion": ("mlp3", "fashion_mnist", True, 0.0, 29000, 6000),
    "mlp4_cifar10": ("mlp4", "cifar10", True, 0.1, 19000, 7500),
    "vgg8b_mnist": ("vgg8b", "mnist", True, 0.0, 30000, 3000),
    "vgg8b_fashion": ("vgg8b", "fashion_mnist", True, 0.1, 28000, 3500),
    "vgg8b_cifar10": ("vgg8b", "cifar10", True, 0.15, 25000, 3000),
    "vgg11b_cifar10": ("vgg11b", "cifar10", True, 0.0, 28000, 4500),
}


def composed(*overrides: str, name: str = "train") -> dict[str, Any]:
    with initialize_config_module("nitro_cli.configs", version_base="1.3"):
        cfg = compose(name, overrides=list(overrides))
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


@pytest.mark.parametrize("row", sorted(PAPER))
def test_every_paper_row_pins_the_spec_table(row: str) -> None:
    cfg = validate_train_config(composed(f"experiment=paper/{row}"))
    preset, data, augment, dropout, fwd, sub = PAPER[row]
    assert cfg["experiment"] == f"paper/{row}"
    assert (cfg["model"]["preset"], cfg["data"]["name"], cfg["data"]["augment"]) == (preset, data, augment)
    assert cfg["model"]["dropout"] == dropout
    o = cfg["optimizer"]
    assert (o["lr_inv"], o["amp"], o["fwd_decay_inv"], o["subnet_decay_inv"]) == (512, None, fwd, sub)
    assert o["conv_amp_multiplier"] is False and cfg["model"]["fe_dropout"] == 0.0
    assert cfg["compat"]["name"] == "exact" and not any(v for k, v in cfg["compat"].items() if k != "name")
    assert o["plateau"] == {"factor": 3, "patience": 15, "start_epoch": 10, "min_delta": 0.01}
    assert o["early_stop"] == {"patience": 35, "start_epoch": 30, "min_delta": 0.01}
    t = cfg["trainer"]
    assert t["name"] == "paper" and t["max_epochs"] == 150 and t["batch_size"] == 64
    assert t["val_fraction"] == 0 and t["monitor"] == "test" and t["augment_per_batch"]
    assert t["drop_last"] and t["test_drop_last"]


def _divisors_of_one_step(cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """layer name -> the divisor lr_inv * amp its update used, over one real training step of 2 images."""
    info = DATASETS[cfg["data"]["name"]]
    model = build_network(cfg, info.shape, info.num_classes, np.random.default_rng(0))
    seen: dict[str, int] = {}

    def spy(weight: Any, grad: Any, divisor: int, decay_inv: Any, what: str) -> Any:
        seen[what.rsplit(" ", 1)[-1]] = divisor
        return real_update(weight, grad, divisor, decay_inv, what)

    real_update = sgd_module.sgd_update
    monkeypatch.setattr(sgd_module, "sgd_update", spy)
    x = np.random.default_rng(1).integers(-128, 128, size=(2, *info.shape)).astype(np.int8)
    labels = np.array([0, 1])
    model.train_step(x, (np.eye(info.num_classes, dtype=np.int8) * 32)[labels], labels, build_optimizer(cfg),
                     np.random.default_rng(2))
    assert set(seen) == {layer.name for layer in model.layers()}
    return seen


@pytest.mark.parametrize("row", sorted(PAPER))
def test_every_block_layer_of_every_paper_row_trains_with_amp_640(row: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    divisors = _divisors_of_one_step(validate_train_config(composed(f"experiment=paper/{row}")), monkeypatch)
    for name, divisor in divisors.items():
        is_block = name.startswith("block") and not name.endswith("_head")
        assert divisor == (512 * 640 if is_block else 512), name


def test_the_conv_amp_multiplier_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = validate_train_config(composed("model=vgg8b", "data=mnist", "model.features=[8,M,8,M]",
                                         "model.hidden=[16]", "optimizer.conv_amp_multiplier=true"))
    divisors = _divisors_of_one_step(cfg, monkeypatch)
    # 28x28 with 8 channels: head pool (2, 1), 784 // 2 = 392; 14x14 -> 8 * 14 * 14 fits, factor 196.
    assert divisors["block1"] == 512 * 640 * 392 and divisors["block2"] == 512 * 640 * 196
    assert divisors["block3"] == 512 * 640 and divisors["output"] == 512


def test_quickstart_defaults() -> None:
    cfg = validate_train_config(composed())
    assert (cfg["data"]["name"], cfg["model"]["preset"], cfg["trainer"]["name"]) == ("mnist_mini", "mlp1",
                                                                                     "default")
    assert cfg["seed"] == 42 and cfg["resume"] is None and cfg["experiment"] == "custom"
    assert cfg["trainer"]["val_fraction"] == 0.1 and not cfg["trainer"]["test_drop_last"]


def _leaf_keys(schema: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in schema.items():
        keys += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return keys


KEYS = _leaf_keys(TRAIN_SCHEMA) + ["optimizer.plateau", "model", "data", "trainer", "nope", "model.nope",
                                   "optimizer.plateau.factor", "optimizer.early_stop.patience"]
VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: str(f).lower()),
    st.sampled_from(["true", "false", "null", "[]", "[1,2]", "[0]", "[M,64]", "{}", "{a: 1}", "mlp2",
                     "cifar10", "'x y'", "${seed}", "${nope}", "[", "'", "=", "a=b", "paper", "val", "test",
                     "64"]),
    st.text(alphabet="abcM0123456789-_.,[]{}:='\" $", max_size=12),
    st.lists(st.integers(-5, 5000), max_size=4).map(lambda xs: "[" + ",".join(map(str, xs)) + "]"),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=VALUES, plus=st.booleans())
def test_fuzzed_overrides_give_a_valid_config_or_a_clean_error(key: str, value: str, plus: bool) -> None:
    override = f"{'+' if plus else ''}{key}={value}"
    try:
        cfg = validate_train_config(composed(override))
    except Exception as exc:  # what `nitro` would print instead of a traceback
        message = user_error_message(exc, "train")
        assert message and "Traceback" not in message, repr(exc)
    else:
        assert cfg["trainer"]["batch_size"] >= 1 and cfg["optimizer"]["lr_inv"] >= 1
        assert 0 <= cfg["model"]["dropout"] < 1


TINY_CFG = ("model.hidden=[16]", "trainer.max_epochs=2", "engine=numpy", "trainer.progress=none")


def test_the_limits_at_their_default_leave_the_experiment_identity_as_it_was() -> None:
    cfg = validate_train_config(composed("experiment=paper/vgg8b_mnist"))
    older = json.loads(json.dumps(cfg))  # as a run config written before the limits existed
    del older["trainer"]["limit_train_batches"], older["trainer"]["limit_test_batches"]
    assert validate_train_config(older) == cfg
    assert experiment_group(older) == experiment_group(cfg)
    limited = validate_train_config(composed("experiment=paper/vgg8b_mnist", "trainer.limit_test_batches=2"))
    assert experiment_group(limited) != experiment_group(cfg)


def test_fit_as_a_library_writes_every_output(tmp_path: Path) -> None:
    summary = fit(composed(*TINY_CFG), tmp_path / "run")
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert json.loads((tmp_path / "run/summary.json").read_text()) == summary
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.npz")
    assert ckpt.state["epoch"] == 2 and ckpt.state["config"]["model"]["hidden"] == [16]
    assert all(a.dtype == np.int32 for k, a in ckpt.arrays.items() if k.startswith("param/"))
    assert (tmp_path / "run/train.log").read_text().count("epoch ") >= 2


def test_disk_full_on_the_second_checkpoint_keeps_the_first(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = loop_module.save_checkpoint, []

    def flaky(path: Path, arrays: dict, state: dict) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, arrays, state)

    monkeypatch.setattr(loop_module, "save_checkpoint", flaky)
    with pytest.raises(NitroError, match="No space left on device.*previous .* is intact"):
        fit(composed(*TINY_CFG), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run/checkpoints/last.npz").state["epoch"] == 1
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]


def _suggested(message: str) -> list[str]:
    """The words of the command quoted in backticks in an error message."""
    return shlex.split(message.split("`")[1])


def test_disk_full_while_copying_best_suggests_continuing_in_the_runs_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src: Path, dst: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop_module.shutil, "copyfile", full)
    run = tmp_path / "run"
    with pytest.raises(NitroError, match="best.npz: No space left on device.*last.npz is intact") as err:
        fit(composed(*TINY_CFG), run)
    assert _suggested(str(err.value)) == ["nitro", "train", f"resume={run / 'checkpoints/last.npz'}",
                                          f"hydra.run.dir={run}"]


def test_disk_full_before_any_checkpoint_suggests_the_same_command_in_the_runs_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Path, arrays: dict, state: dict) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop_module, "save_checkpoint", full)
    run = tmp_path / "run"
    with pytest.raises(NitroError, match="no earlier checkpoint exists.*same command again") as err:
        fit(composed(*TINY_CFG), run)
    assert _suggested(str(err.value)) == [f"hydra.run.dir={run}"]


@pytest.mark.parametrize("name", ["plain", "my data,v1", "it's (x)", "naïve=[1]: ${y}", "back\\slash\\"])
def test_the_continue_command_reads_back_as_the_runs_own_paths(tmp_path: Path, name: str) -> None:
    """Whatever the folders are called, Hydra parses the suggested command into exactly them."""
    run, root = tmp_path / name / "run", tmp_path / name / "data"
    cfg = composed("data=mnist")
    cfg["data"]["root"] = str(root)
    words = shlex.split(continue_command(run, cfg))
    assert words[:2] == ["nitro", "train"]
    with initialize_config_module("nitro_cli.configs", version_base="1.3"):
        back = compose("train", overrides=["data=mnist", *words[2:]], return_hydra_config=True)
    assert back.resume == str(run / "checkpoints/last.npz") and back.hydra.run.dir == str(run)
    assert back.data.root == str(root)


def test_the_continue_command_leaves_out_the_root_of_the_embedded_dataset(tmp_path: Path) -> None:
    assert "data.root" not in continue_command(tmp_path, composed())


def test_summary_of_a_resumed_run_keeps_its_epochs_while_it_trains(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed run killed outright (SIGKILL) in its next epoch must not leave a summary of 0 epochs."""
    first = fit(composed(*TINY_CFG, "trainer.max_epochs=1"), tmp_path / "run")
    real, seen = loop_module._train_epoch, []

    def watching(*args: Any, **kwargs: Any) -> bool:
        seen.append(json.loads((tmp_path / "run/summary.json").read_text()))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "_train_epoch", watching)
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.npz")
    fit(composed(*TINY_CFG), tmp_path / "run", resume=ckpt)
    assert seen[0]["status"] == "running" and seen[0]["epochs_run"] == 1
    assert seen[0]["best_test_accuracy"] == first["best_test_accuracy"] and seen[0]["best_epoch"] == 1


def test_resuming_a_run_that_stopped_early_trains_nothing(tmp_path: Path) -> None:
    early = ("trainer.max_epochs=5", "optimizer.early_stop.patience=1", "optimizer.early_stop.start_epoch=1",
             "optimizer.early_stop.min_delta=1.0")  # 100 points above 0 never come: stops after epoch 1
    first = fit(composed(*TINY_CFG, *early), tmp_path / "run")
    assert first["status"] == "completed" and first["epochs_run"] == 1
    metrics = (tmp_path / "run/metrics.csv").read_text()
    again = fit(composed(*TINY_CFG, *early), tmp_path / "run",
                resume=load_checkpoint(tmp_path / "run/checkpoints/last.npz"))
    assert again["epochs_run"] == 1 and again["best_test_accuracy"] == first["best_test_accuracy"]
    assert (tmp_path / "run/metrics.csv").read_text() == metrics


def test_widths_that_do_not_fit_the_data_are_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(NitroError, match="pools a"):
        fit(composed("model=vgg8b", "model.features=[8,M,M,M,M,M,M]", *TINY_CFG), tmp_path / "run")
    assert not (tmp_path / "run/checkpoints/last.npz").exists()


def test_a_folder_has_one_writer_and_a_dead_writers_lock_is_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with lock_held_elsewhere(folder) as holder:  # then SIGKILLed: no clean-up, its lock file stays behind
        busy = f"process {holder.pid} on {socket.gethostname()}"
        assert lock_holder(folder) == busy
        with pytest.raises(NitroError, match=f"{folder} is in use by {busy}"):
            lock_folder(folder)
    assert (folder / ".lock").is_file() and lock_holder(folder) is None
    assert lock_folder(folder) == folder.resolve()
    assert (folder / ".lock").read_text().split()[0] == str(os.getpid())
    unlock_folder(folder)
    assert not (folder / ".lock").exists()


def test_plain_progress_lines_carry_the_eta_of_the_epoch_and_of_the_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    log = logging.getLogger("test_plain_progress")
    monkeypatch.setattr(log, "info", lines.append)
    clock = iter([0.0, 0.0, 10.0])  # created, epoch started, a batch done 10 s later
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    display = PlainDisplay(log, every=5.0)
    display.epoch_started(epoch=2, max_epochs=4, batches=100, done=0)
    display.batch_done(10, loss=1.0, acc=0.5, samples_per_s=64.0)
    # 1 s per batch: 90 batches left in this epoch, then 2 epochs of 100
    assert lines == ["epoch 2 batch 10/100  loss 1.000  train 50.00%  64 img/s  "
                     "ETA epoch 0:01:30, run 0:04:50"]


def test_reference_arithmetic_runs_count_their_wraps_per_epoch(tmp_path: Path) -> None:
    fit(composed(*TINY_CFG, "compat=reference"), tmp_path / "ref")
    fit(composed(*TINY_CFG), tmp_path / "exact")
    with (tmp_path / "ref/metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(int(r["wrapped_loss_errors"]) >= 0 and int(r["wrapped_sums"]) >= 0
                                  for r in rows)
    exact_header = (tmp_path / "exact/metrics.csv").read_text().splitlines()[0]
    assert "wrapped" not in exact_header

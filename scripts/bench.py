"""Benchmark the integer engine: samples/s of each model's training step and evaluation, and where it goes.

Prints one JSON line per case on stdout. Each case runs in its own subprocess so that `peak_rss_mb` is its
own. `gemm_efficiency` = the step's useful integer operations per second / this machine's float64 GEMM rate
(numpy float64 4096 x 4608 x 512, measured in the same run). Batch 64 throughout.

Cases:
  mlp1_train, mlp4_train, vgg8b_train, vgg11b_train, vgg8b_eval
      freshly initialised weights on random int8 data (CIFAR-10 shapes; mlp1_train MNIST's). Bounds are
      small there, so every product takes its cheapest exact path.
  vgg8b_mnist_train_real
      the VGG8B training step on a grown state: the weights, normalizer, optimizer and RNG state of a real
      checkpoint (--checkpoint), and consecutive MNIST batches read, normalized, augmented and one-hot
      encoded by the run's own pipeline, in the order its next epoch would take them.
  vgg8b_train_real
      the same at CIFAR-10 shapes (3x32x32 images of CIFAR-10). With --checkpoint-cifar, a CIFAR-10
      checkpoint's own state; otherwise the MNIST checkpoint's: each layer of the same shape is copied and
      each other one (the first conv, the heads) filled with values drawn (seed 0) from that layer of the
      checkpoint, so that magnitudes are those of a grown state. The JSON's `weights` says which.
  vgg8b_mnist_nitro_train
      `nitro train` itself continuing a temp copy of --checkpoint for --batches batches of its next epoch
      (trainer.limit_train_batches; data pipeline, augmentation, metrics, a --test-batches test pass and
      the checkpoint write included); samples_per_s is the slice's images per second of training time from
      nitro's own counters (the ones summary.json's samples_per_s divides, which cover the whole run).
  torch_fp32_vgg8b_train, torch_fp32_mlp1_train
      PyTorch float32 backprop of networks of the same shapes (skipped when torch is not installed:
      pip install -e '.[bench]').

Every case of our engine also traces some steps after the timed ones: `paths` gives the exact path
(int8xL, float32, float32-sliced, float64, int64) each layer's products took, as {"<layer>.<method>":
path or [paths]}, and `time_split` the seconds per step in products by layer and by path, and the rest
(`other_seconds`: im2col, pooling, ReLU, updates, Python). samples_per_s comes from the untraced steps.
A case that cannot run here (no checkpoint, no dataset, no torch) prints {"case": ..., "skipped": why}.

    python scripts/bench.py                      # every case
    python scripts/bench.py --case vgg8b_train   # one case
    python scripts/bench.py --case vgg8b_mnist_train_real --split   # with a table of the split on stderr
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nitro_cli.data import DATASETS, augment_batch, one_hot
from nitro_cli.engine import ProductRecord, RngStreams, labelled, trace_products
from nitro_cli.engine.host import cpu_threads
from nitro_cli.errors import NitroError
from nitro_cli.nn import IntegerConv2d, NitroNet, build_model
from nitro_cli.optim import IntegerSGD
from nitro_cli.runner import build_network, build_optimizer, load_checkpoint, validate_train_config
from nitro_cli.runner.prepare import check_data, prepare_data

REPO = Path(__file__).resolve().parents[1]
CASES = {
    # case: (preset, input shape, train?, timed steps)
    "mlp1_train": ("mlp1", (1, 28, 28), True, 400),
    "mlp4_train": ("mlp4", (3, 32, 32), True, 20),
    "vgg8b_train": ("vgg8b", (3, 32, 32), True, 3),
    "vgg11b_train": ("vgg11b", (3, 32, 32), True, 2),
    "vgg8b_eval": ("vgg8b", (3, 32, 32), False, 5),
}
REAL_CASES = {"vgg8b_mnist_train_real": (1, 28, 28), "vgg8b_train_real": (3, 32, 32)}  # image shape
REAL_STEPS = 3
NITRO_CASE = "vgg8b_mnist_nitro_train"
TORCH_CASES = {"torch_fp32_vgg8b_train": 3, "torch_fp32_mlp1_train": 400}  # timed steps
ALL_CASES = [*CASES, *REAL_CASES, NITRO_CASE, *TORCH_CASES]
DEFAULT_CHECKPOINT = REPO / "results/vgg/vgg8b_mnist/paper/0/checkpoints/last.npz"
BATCH = 64
CLASSES = 10
TRACED_METHODS = ("forward_scaled", "weight_grad", "input_error")


class Skipped(Exception):
    """The case cannot run on this machine (a missing checkpoint, dataset or package): why, for its JSON."""


def float64_gemm_gflops(repeats: int = 5) -> float:
    """Median float64 GEMM rate of this machine on a 4096 x 4608 x 512 product."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4096, 4608)), rng.standard_normal((4608, 512))
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 4096 * 4608 * 512 / float(np.median(times)) / 1e9


def step_gflop(model: NitroNet, n: int, train: bool) -> float:
    """Useful integer operations (2 per multiply-add) of one step on n samples."""
    macs = 0
    for block in model.blocks:
        layer = block.layer
        positions = int(np.prod(block.out_shape[1:])) if isinstance(layer, IntegerConv2d) else 1
        layer_macs = n * positions * layer.fan_in * int(block.out_shape[0])
        head_macs = n * block.head.in_features * block.head.out_features
        macs += layer_macs + head_macs
        if train:  # weight gradient of the layer; head gradient and the error sent into the block
            macs += layer_macs + 2 * head_macs
    out_macs = n * model.output.in_features * model.output.out_features
    macs += out_macs * (2 if train else 1)
    return 2 * macs / 1e9


def peak_rss_mb() -> float:
    """This process's peak resident memory: each case runs in a process of its own to make it the case's."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --- where a step's time goes -------------------------------------------------------------------------------

def _tagged(label: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        with labelled(label):
            return method(*args, **kwargs)

    return call


@contextmanager
def layer_labels(model: NitroNet) -> Iterator[None]:
    """Tag the products of every layer's forward_scaled / weight_grad / input_error as `<layer>.<method>`
    (instance attributes over the class's methods, removed on exit, so untraced steps run untouched)."""
    wrapped = []
    for layer in model.layers():  # block layers, their heads, the output layer
        for name in TRACED_METHODS:
            if hasattr(layer, name):
                setattr(layer, name, _tagged(f"{layer.name}.{name}", getattr(layer, name)))
                wrapped.append((layer, name))
    try:
        yield
    finally:
        for layer, name in wrapped:
            delattr(layer, name)


def product_paths(records: list[ProductRecord]) -> dict[str, str | list[str]]:
    """{label: the path its products took, or the list of paths when they took several}."""
    seen: dict[str, list[str]] = {}
    for r in records:
        paths = seen.setdefault(r.label or "(unlabelled)", [])
        if r.path not in paths:
            paths.append(r.path)
    return {label: p[0] if len(p) == 1 else p for label, p in seen.items()}


def time_split(records: list[ProductRecord], seconds: float, steps: int) -> dict[str, Any]:
    """Seconds per step: in products by layer and by path, and everything else (`other_seconds`)."""
    layers: dict[str, float] = {}
    paths: dict[str, float] = {}
    for r in records:
        layer = r.label.split(".")[0] or "(unlabelled)"
        layers[layer] = layers.get(layer, 0.0) + r.seconds / steps
        paths[r.path] = paths.get(r.path, 0.0) + r.seconds / steps
    products = sum(r.seconds for r in records) / steps
    return {"traced_steps": steps, "step_seconds": round(seconds / steps, 6),
            "product_seconds": round(products, 6), "other_seconds": round(seconds / steps - products, 6),
            "layers": {k: round(v, 6) for k, v in layers.items()},
            "paths": {k: round(v, 6) for k, v in sorted(paths.items(), key=lambda kv: -kv[1])}}


def split_table(case: str, records: list[ProductRecord], split: dict[str, Any]) -> str:
    """The split as a table for people: one row per layer method, then the totals by path."""
    steps, step = split["traced_steps"], split["step_seconds"]
    rows: dict[str, list[Any]] = {}  # label -> [paths, products, seconds, shape of the first]
    for r in records:
        row = rows.setdefault(r.label or "(unlabelled)", [[], 0, 0.0, f"{r.m}x{r.k}x{r.n}"])
        if r.path not in row[0]:
            row[0].append(r.path)
        row[1] += 1
        row[2] += r.seconds
    lines = [f"{case}: {steps} traced step(s), {step:.4f} s/step; products {split['product_seconds']:.4f} s, "
             f"other {split['other_seconds']:.4f} s ({split['other_seconds'] / step:.1%})",
             f"  {'layer.method':<28} {'path':<22} {'products':>8} {'first m x k x n':>20} {'ms/step':>9} "
             f"{'share':>6}"]
    for label, (paths, count, seconds, shape) in rows.items():
        lines.append(f"  {label:<28} {','.join(paths):<22} {count / steps:>8g} {shape:>20} "
                     f"{seconds / steps * 1e3:>9.3f} {seconds / steps / step:>6.1%}")
    by_path = ", ".join(f"{p} {s:.4f} s ({s / step:.1%})" for p, s in split["paths"].items())
    lines.append(f"  by path: {by_path}")
    return "\n".join(lines)


def timed(step: Callable[[int], None], model: NitroNet, steps: int, case: str,
          show_split: bool) -> tuple[list[float], dict[str, Any]]:
    """Warm up on step(0), time steps 1..steps, then trace the next ones; returns the times and the trace's
    JSON keys (`paths`, `time_split`)."""
    step(0)
    times = []
    for i in range(1, steps + 1):
        t = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t)
    traced = trace_steps(steps)
    with layer_labels(model), trace_products() as records:
        t = time.perf_counter()
        for i in range(steps + 1, steps + 1 + traced):
            step(i)
        seconds = time.perf_counter() - t
    split = time_split(records, seconds, traced)
    if show_split:
        print(split_table(case, records, split), file=sys.stderr, flush=True)
    return times, {"paths": product_paths(records), "time_split": split}


def trace_steps(steps: int) -> int:
    """How many steps are traced after `steps` timed ones: a quarter of them, at least one."""
    return max(1, steps // 4)


def result(case: str, model: NitroNet, times: list[float], train: bool, gemm_rate: float,
           trace: dict[str, Any]) -> dict[str, Any]:
    """The JSON keys every case of our engine shares: rates from the median timed step, then the trace's."""
    seconds = float(np.median(times))
    gflop = step_gflop(model, BATCH, train)
    return {
        "case": case,
        "samples_per_s": round(BATCH / seconds, 2),
        "step_seconds": round(seconds, 4),
        "step_seconds_min": round(min(times), 4),
        "step_seconds_max": round(max(times), 4),
        "gflop_per_step": round(gflop, 3),
        "gop_per_s": round(gflop / seconds, 2),
        "gemm_efficiency": round(gflop / seconds / gemm_rate, 3),
        "float64_gemm_gflops": round(gemm_rate, 1),
        "peak_rss_mb": peak_rss_mb(),
        "steps": len(times),
        "batch": BATCH,
        **trace,
    }


# --- fresh weights, random data ---------------------------------------------------------------------------

def run_case(name: str, gemm_rate: float, steps: int | None, show_split: bool) -> dict[str, Any]:
    """A step on fresh weights and one random batch, repeated: the engine's speed where bounds are small."""
    preset, shape, train, default_steps = CASES[name]
    rngs = RngStreams(0)
    model = build_model(preset, shape, CLASSES, seed_rng=rngs.init)
    opt = IntegerSGD(lr_inv=512, fwd_decay_inv=25000, subnet_decay_inv=3000)
    x = rngs.augment.integers(-128, 128, size=(BATCH, *shape)).astype(np.int8)
    labels = rngs.augment.integers(0, CLASSES, size=BATCH)
    y = (np.eye(CLASSES, dtype=np.int8) * 32)[labels]

    def step(i: int) -> None:
        if train:
            model.train_step(x, y, labels, opt, rngs.dropout)
        else:
            model.evaluate(x, labels, batch_size=BATCH)

    times, trace = timed(step, model, steps or default_steps, name, show_split)
    return result(name, model, times, train, gemm_rate, trace)


# --- grown weights, real batches ----------------------------------------------------------------------------

def read_checkpoint(path: Path) -> Any:
    """The checkpoint at `path`; a missing one skips the case."""
    if not path.exists():
        raise Skipped(f"checkpoint {path} does not exist (pass --checkpoint PATH of a VGG8B MNIST "
                      "checkpoints/last.npz written by `nitro train`)")
    return load_checkpoint(path)


def run_config(ckpt: Any) -> dict[str, Any]:
    """The checkpoint's run config, reading its dataset from $NITRO_DATA (never from a path in the file)."""
    cfg = validate_train_config(ckpt.state["config"])
    cfg["data"]["root"] = None
    return cfg


def cifar_data_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A CIFAR-10 data section augmenting like the checkpoint's run (crop padding and flips of CIFAR-10)."""
    info = DATASETS["cifar10"]
    return {**cfg["data"], "name": "cifar10", "crop_pad": info.crop_pad, "flip": info.flip}


def transplant(source: dict[str, np.ndarray], target: dict[str, np.ndarray],
               seed: int = 0) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Parameters of `target`'s shapes from a checkpoint's (`source`) of another input shape: an entry of
    the same shape is copied, any other is filled with values drawn from the same entry of `source`, so that
    its magnitudes are the grown ones. Returns the parameters and the layers copied and drawn."""
    rng = np.random.default_rng(seed)
    out, copied, drawn = {}, [], []
    for key, ref in target.items():
        if key not in source:
            raise NitroError(f"the checkpoint has no {key}: it holds another model")
        src = source[key]
        layer = key.removeprefix("param/").rsplit("/", 1)[0]
        if src.shape == ref.shape:
            out[key] = src.astype(ref.dtype, copy=True)
            copied.append(layer)
        else:
            out[key] = rng.choice(src.ravel(), size=ref.shape).astype(ref.dtype)
            drawn.append(layer)
    return out, copied, drawn


def checkpoint_info(path: Path, ckpt: Any, weights: dict[str, Any]) -> dict[str, Any]:
    """Which checkpoint a case ran from, and max|W| of each layer's `weights` (layer name -> array)."""
    max_abs = {name: int(np.abs(np.asarray(w, dtype=np.int64)).max()) for name, w in weights.items()}
    cfg = ckpt.state["config"]
    return {"path": str(path), "epoch": int(ckpt.state["epoch"]), "experiment": cfg["experiment"],
            "data": cfg["data"]["name"], "max_abs_weight": max_abs,
            "max_abs_weight_overall": max(max_abs.values())}


def real_case(name: str, args: argparse.Namespace, gemm_rate: float) -> dict[str, Any]:
    """A training step on a grown state and real batches: the bounds, hence the paths, that training meets."""
    shape = REAL_CASES[name]
    cifar_ckpt = name == "vgg8b_train_real" and args.checkpoint_cifar is not None
    path = Path(args.checkpoint_cifar if cifar_ckpt else args.checkpoint)
    ckpt = read_checkpoint(path)
    cfg = run_config(ckpt)
    trained_on = cfg["data"]["name"]
    own_data = tuple(DATASETS[trained_on].shape) == shape
    if cifar_ckpt and not own_data:
        raise NitroError(f"--checkpoint-cifar {path} was trained on {trained_on}, not on 3x32x32 images")
    if not cifar_ckpt and tuple(DATASETS[trained_on].shape) != (1, 28, 28):
        raise NitroError(f"--checkpoint {path} was trained on {trained_on}, not on 1x28x28 images")
    if not own_data:
        cfg["data"] = cifar_data_config(cfg)
    rngs = RngStreams(cfg["seed"])
    try:
        data = prepare_data(cfg, rngs)  # the run's own shuffle, split and normalizer
    except NitroError as exc:
        raise Skipped(f"dataset {cfg['data']['name']} is not available: {exc}") from None
    model = build_network(cfg, data.in_shape, data.num_classes, rngs.init)
    opt = build_optimizer(cfg)
    opt.load_state_dict(ckpt.state["optimizer"])
    params = ckpt.section("param/")
    if own_data:
        model.load_state_dict(params)
        stored = ckpt.section("norm/", strip=True)
        if not all(np.array_equal(stored[k], v) for k, v in data.normalizer.state_dict().items()):
            raise NitroError(f"the {cfg['data']['name']} files under $NITRO_DATA differ from the ones {path} "
                             "was trained on (other normalization statistics)")
        rngs.load_state_dict(ckpt.state["rng"])  # the batches of its next epoch (saved at an epoch's end)
        weights = {"weights": f"checkpoint ({trained_on})"}
    else:
        state, copied, drawn = transplant(params, model.state_dict())
        model.load_state_dict(state)
        weights = {"weights": f"transplanted from a {trained_on} checkpoint: layers of the same shape "
                              "copied, the others drawn from that layer's values (seed 0)",
                   "copied_layers": copied, "drawn_layers": drawn}
    steps = args.steps or REAL_STEPS
    bs, d, t = BATCH, cfg["data"], cfg["trainer"]
    perm = rngs.shuffle.permutation(len(data.train_y))
    y_train = one_hot(data.train_y, data.num_classes)
    batches = []
    for b in range(steps + 1 + trace_steps(steps)):  # warm-up, timed, traced: all different
        idx = perm[b * bs : (b + 1) * bs]
        x = data.train_x[idx]
        if d["augment"]:
            x = augment_batch(x, rngs.augment, d["crop_pad"], d["flip"], t["augment_per_batch"], d["aug_p"])
        batches.append((x, y_train[idx], data.train_y[idx]))

    def step(i: int) -> None:
        x, y, labels = batches[i]
        model.train_step(x, y, labels, opt, rngs.dropout)

    loaded = checkpoint_info(path, ckpt, {layer.name: layer.weight for layer in model.layers()})  # as loaded
    times, trace = timed(step, model, steps, name, args.split)
    out = result(name, model, times, True, gemm_rate, trace)
    out.update({"data": d["name"], "image_shape": list(data.in_shape), "model": model.config["preset"],
                "features": model.config["features"], "optimizer": opt.state_dict(), "batches": len(batches),
                "checkpoint": loaded, **weights})
    return out


# --- nitro train itself ------------------------------------------------------------------------------------

def nitro_command() -> list[str]:
    """The `nitro` console script of this Python, or its module where the script is not installed."""
    script = Path(sys.executable).parent / "nitro"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nitro_cli.cli"]


def nitro_train_case(args: argparse.Namespace) -> dict[str, Any]:
    """`nitro train` continuing a temp copy of the checkpoint for a slice of its next epoch."""
    path = Path(args.checkpoint)
    ckpt = read_checkpoint(path)
    state = ckpt.state
    if state.get("position") is not None:  # its counters then cover part of an epoch: no clean slice
        raise Skipped(f"{path} was saved in the middle of an epoch; pass one saved at the end of an epoch")
    try:
        check_data(run_config(ckpt))
    except NitroError as exc:
        raise Skipped(f"dataset {state['config']['data']['name']} is not available: {exc}") from None
    epoch, batches = int(state["epoch"]), args.batches
    with tempfile.TemporaryDirectory(prefix="nitro-bench-") as tmp:
        run = Path(tmp) / "run"
        (run / "checkpoints").mkdir(parents=True)
        shutil.copyfile(path, run / "checkpoints/last.npz")
        experiment = state["config"]["experiment"]
        overrides = [*([f"experiment={experiment}"] if experiment != "custom" else []),
                     f"resume={run}/checkpoints/last.npz", f"hydra.run.dir={run}",
                     f"trainer.max_epochs={epoch + 1}", f"trainer.limit_train_batches={batches}",
                     f"trainer.limit_test_batches={args.test_batches}", "trainer.progress=none"]
        # The threads of the in-process cases: left to itself, nitro would read the load the cases before it
        # left in the load average as a busy machine and take one BLAS thread.
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(cpu_threads())}
        started = time.perf_counter()
        res = subprocess.run([*nitro_command(), "train", *overrides], capture_output=True, text=True, cwd=tmp,
                             env=env)
        wall = time.perf_counter() - started
        if res.returncode != 0:
            lines = [line for line in res.stderr.splitlines() if line.strip()] or [f"exit {res.returncode}"]
            raise NitroError(f"nitro train failed: {lines[-1]}")
        summary = json.loads((run / "summary.json").read_text())
        with open(run / "metrics.csv") as fh:
            row = list(csv.DictReader(fh))[-1]
        after = load_checkpoint(run / "checkpoints/last.npz").state
    samples = int(after["samples"]) - int(state["samples"])
    seconds = float(after["train_seconds"]) - float(state["train_seconds"])
    if samples <= 0:
        raise NitroError(f"nitro train trained nothing from {path}: {res.stdout.strip().splitlines()[-1:]}")
    return {
        "case": NITRO_CASE,
        "samples_per_s": round(samples / seconds, 2),
        "samples": samples, "train_seconds": round(seconds, 3), "batches": batches, "batch": BATCH,
        "epoch_seconds": float(row["seconds"]), "test_images": args.test_batches * BATCH,
        "summary_samples_per_s": summary["samples_per_s"], "summary_epochs": summary["epochs_run"],
        "wall_seconds": round(wall, 2), "threads": int(env["OPENBLAS_NUM_THREADS"]),
        "command": shlex.join(["nitro", "train", *overrides]).replace(tmp, "<tmp>"),
        "checkpoint": checkpoint_info(path, ckpt, {k.removesuffix("/weight"): v for k, v in
                                                   ckpt.section("param/", strip=True).items()
                                                   if k.endswith("/weight")}),
    }


# --- PyTorch float32 ----------------------------------------------------------------------------------------

def torch_vgg8b(nn: Any) -> tuple[Any, tuple[int, int, int]]:
    """VGG8B's conv stack and its 1024 classifier, CIFAR-10 shapes."""
    layers, c = [], 3
    for item in [128, 256, "M", 256, 512, "M", 512, "M", 512, "M"]:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, item, 3, padding=1, bias=False), nn.LeakyReLU(0.25)]
            c = item
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(2048, 1024), nn.LeakyReLU(0.25), nn.Linear(1024, 10))
    return net, (3, 32, 32)


def torch_mlp1(nn: Any) -> tuple[Any, tuple[int, int, int]]:
    """MLP1 (784-100-50-10, no biases, like the integer layers; LeakyReLU 1/4 as NITRO-ReLU's slope 4)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 100, bias=False), nn.LeakyReLU(0.25),
                        nn.Linear(100, 50, bias=False), nn.LeakyReLU(0.25), nn.Linear(50, 10, bias=False))
    return net, (1, 28, 28)


TORCH_NETS = {"torch_fp32_vgg8b_train": torch_vgg8b, "torch_fp32_mlp1_train": torch_mlp1}


def torch_case(name: str, steps: int | None) -> dict[str, Any]:
    """float32 backprop (SGD, cross-entropy) of a network of the same shape in PyTorch, if installed."""
    try:
        import torch
    except ImportError:
        raise Skipped("torch is not installed (pip install -e '.[bench]')") from None
    from torch import nn

    net, shape = TORCH_NETS[name](nn)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(BATCH, *shape), torch.randint(0, 10, (BATCH,))

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    step()
    times = []
    for _ in range(steps or TORCH_CASES[name]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    seconds = float(np.median(times))
    return {"case": name, "samples_per_s": round(BATCH / seconds, 2), "step_seconds": round(seconds, 4),
            "torch_threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(), "steps": len(times),
            "batch": BATCH}


def one_case(name: str, args: argparse.Namespace, gemm_rate: float) -> tuple[dict[str, Any], int]:
    """The JSON of one case and its exit status: 0 (also when skipped here), 1 when it failed."""
    try:
        if name in CASES:
            return run_case(name, gemm_rate, args.steps, args.split), 0
        if name in REAL_CASES:
            return real_case(name, args, gemm_rate), 0
        if name == NITRO_CASE:
            return nitro_train_case(args), 0
        return torch_case(name, args.steps), 0
    except Skipped as exc:
        return {"case": name, "skipped": str(exc)}, 0
    except NitroError as exc:
        return {"case": name, "error": str(exc)}, 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=ALL_CASES, action="append", help="a case to run (repeatable)")
    parser.add_argument("--gemm-gflops", type=float, help="reuse a measured float64 GEMM rate")
    parser.add_argument("--steps", type=int, help="timed steps of every case instead of its own number")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help="VGG8B MNIST checkpoint of the real-state cases (default: %(default)s)")
    parser.add_argument("--checkpoint-cifar", help="a CIFAR-10 VGG8B checkpoint for vgg8b_train_real")
    parser.add_argument("--batches", type=int, default=40, help=f"training batches of {NITRO_CASE}")
    parser.add_argument("--test-batches", type=int, default=2, help=f"test batches of {NITRO_CASE}")
    parser.add_argument("--split", action="store_true", help="also print each case's time split on stderr")
    args = parser.parse_args()
    for option in ("steps", "batches", "test_batches"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    gemm_rate = args.gemm_gflops or float64_gemm_gflops()
    cases = args.case or ALL_CASES
    if len(cases) == 1:
        out, status = one_case(cases[0], args, gemm_rate)
        print(json.dumps(out), flush=True)
        return status
    forwarded = ["--gemm-gflops", str(gemm_rate), "--checkpoint", args.checkpoint,
                 "--batches", str(args.batches), "--test-batches", str(args.test_batches)]
    forwarded += ["--steps", str(args.steps)] if args.steps else []
    forwarded += ["--checkpoint-cifar", args.checkpoint_cifar] if args.checkpoint_cifar else []
    forwarded += ["--split"] if args.split else []
    failed = 0
    for name in cases:  # one subprocess per case: separate peak memory, no cross-case warm caches
        failed |= subprocess.run([sys.executable, __file__, "--case", name, *forwarded]).returncode != 0
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())

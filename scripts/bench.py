"""Benchmark the integer engine: samples/s of each model's training step and evaluation.

Prints one JSON line per case. Each case runs in its own subprocess so that `peak_rss_mb` is its own.
`gemm_efficiency` = the step's useful integer operations per second / this machine's float64 GEMM rate
(numpy float64 4096 x 4608 x 512, measured in the same run).

    python scripts/bench.py                      # every case
    python scripts/bench.py --case vgg8b_train   # one case
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from nitro_cli.engine import RngStreams
from nitro_cli.nn import IntegerConv2d, build_model
from nitro_cli.optim import IntegerSGD

CASES = {
    # case: (preset, input shape, train?, timed steps)
    "mlp1_train": ("mlp1", (1, 28, 28), True, 400),
    "mlp4_train": ("mlp4", (3, 32, 32), True, 20),
    "vgg8b_train": ("vgg8b", (3, 32, 32), True, 3),
    "vgg11b_train": ("vgg11b", (3, 32, 32), True, 2),
    "vgg8b_eval": ("vgg8b", (3, 32, 32), False, 5),
}
BATCH = 64
CLASSES = 10


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


def step_gflop(model, n: int, train: bool) -> float:
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


def run_case(name: str, gemm_rate: float) -> dict:
    preset, shape, train, steps = CASES[name]
    rngs = RngStreams(0)
    model = build_model(preset, shape, CLASSES, seed_rng=rngs.init)
    opt = IntegerSGD(lr_inv=512, fwd_decay_inv=25000, subnet_decay_inv=3000)
    x = rngs.augment.integers(-128, 128, size=(BATCH, *shape)).astype(np.int8)
    labels = rngs.augment.integers(0, CLASSES, size=BATCH)
    y = (np.eye(CLASSES, dtype=np.int8) * 32)[labels]

    def step() -> None:
        if train:
            model.train_step(x, y, labels, opt, rngs.dropout)
        else:
            model.evaluate(x, labels, batch_size=BATCH)

    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    seconds = float(np.median(times))
    gflop = step_gflop(model, BATCH, train)
    return {
        "case": name,
        "samples_per_s": round(BATCH / seconds, 2),
        "step_seconds": round(seconds, 4),
        "step_seconds_min": round(min(times), 4),
        "step_seconds_max": round(max(times), 4),
        "gflop_per_step": round(gflop, 3),
        "gop_per_s": round(gflop / seconds, 2),
        "gemm_efficiency": round(gflop / seconds / gemm_rate, 3),
        "float64_gemm_gflops": round(gemm_rate, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "steps": steps,
        "batch": BATCH,
    }


def torch_case(gemm_rate: float) -> dict | None:
    """float32 backprop of the same VGG8B (conv stack + 1024 classifier) in PyTorch, if installed."""
    try:
        import torch
    except ImportError:
        return None
    from torch import nn

    layers, c = [], 3
    for item in [128, 256, "M", 256, 512, "M", 512, "M", 512, "M"]:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, item, 3, padding=1, bias=False), nn.LeakyReLU(0.25)]
            c = item
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(2048, 1024), nn.LeakyReLU(0.25), nn.Linear(1024, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    step()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    seconds = float(np.median(times))
    return {"case": "torch_fp32_vgg8b_train", "samples_per_s": round(BATCH / seconds, 2),
            "step_seconds": round(seconds, 4), "torch_threads": torch.get_num_threads(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=[*CASES, "torch_fp32_vgg8b_train"], action="append")
    parser.add_argument("--gemm-gflops", type=float, help="reuse a measured float64 GEMM rate")
    args = parser.parse_args()
    gemm_rate = args.gemm_gflops or float64_gemm_gflops()
    cases = args.case or [*CASES, "torch_fp32_vgg8b_train"]
    if len(cases) == 1:
        name = cases[0]
        result = torch_case(gemm_rate) if name == "torch_fp32_vgg8b_train" else run_case(name, gemm_rate)
        if result is not None:
            print(json.dumps(result), flush=True)
        return 0
    for name in cases:  # one subprocess per case: separate peak memory, no cross-case warm caches
        command = [sys.executable, __file__, "--case", name, "--gemm-gflops", str(gemm_rate)]
        subprocess.run(command, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

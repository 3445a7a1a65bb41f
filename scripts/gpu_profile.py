"""Where a VGG8B training step spends its time on an engine (made for the GPU: scripts/gpu-bench.sh).

Prints one JSON line per input shape: median step seconds and images/s, the product time per layer and path
(the engine's product trace, which synchronizes the GPU around each product, so kernels are timed rather
than their launch), and the engine's functions that took the most wall time in a cProfile of the same
steps, with their call counts. With --checkpoint, the weights are a grown state's (layers of another
shape drawn from that layer's values, as bench.py's real-state cases do), so the bounds, hence the paths,
are training's; the batches stay random. On CuPy, every `int(array.max())` of a bound check waits for the
GPU and copies a scalar back, so `max_abs`, `operand_bound` and `checked_cast` time there is synchronisation.
Under CUDA_LAUNCH_BLOCKING=1 every kernel launch waits for its kernel, so each function's host time then
includes the GPU time of the kernels it launched: the way to see which of the engine's functions the GPU
spends its time in (the step is slower then; only the split is meaningful).

    python scripts/gpu_profile.py --engine cupy [--steps 5] [--checkpoint results/vgg/.../last.npz]
    python scripts/gpu_profile.py --engine numpy --steps 1 --features 8,16,M --hidden 32   # a dry run
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench import layer_labels, read_checkpoint, transplant  # scripts/bench.py, beside this file
from nitro_cli.engine import RngStreams, get_backend, trace_products
from nitro_cli.nn import build_model
from nitro_cli.optim import IntegerSGD

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
def profile_shape(xp, shape: tuple[int, int, int], steps: int, features, hidden, grown) -> dict:
    rngs = RngStreams(0)
    model = build_model("vgg8b", shape, 10, hidden=hidden, features=features, seed_rng=rngs.init, xp=xp)
    if grown is not None:
        model.load_state_dict(transplant(grown, model.state_dict())[0])
    opt = IntegerSGD(lr_inv=512, fwd_decay_inv=30000, subnet_decay_inv=3000, amp=640)
    x = rngs.augment.integers(-128, 128, size=(steps + 1, 64, *shape)).astype(np.int8)
    labels = rngs.augment.integers(0, 10, size=(steps + 1, 64))
    y = (np.eye(10, dtype=np.int8) * 32)[labels]

    def step(i: int) -> None:
        model.train_step(x[i], y[i], labels[i], opt, rngs.dropout)

    def synchronize() -> None:
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()

    step(0)  # warm-up: kernel compilation, memory pool
    synchronize()
    times = []
    for i in range(1, steps + 1):
        started = time.perf_counter()
        step(i)
        synchronize()
        times.append(time.perf_counter() - started)
    by_layer: dict[str, float] = defaultdict(float)
    by_path: dict[str, float] = defaultdict(float)
    profiler = cProfile.Profile()
    with trace_products() as records, layer_labels(model):
        profiler.enable()
        for i in range(1, steps + 1):
            step(i)
        synchronize()
        profiler.disable()
    for r in records:
        by_layer[f"{r.label} {r.path}"] += r.seconds / steps
        by_path[r.path] += r.seconds / steps
    stats = pstats.Stats(profiler)
    ours = [(v, f"{k[2]} ({k[0].rsplit('/', 1)[-1]}:{k[1]})")
            for k, v in stats.stats.items() if "nitro_cli" in k[0]]  # type: ignore[attr-defined]
    host = sorted(((v[3] / steps, v[1] / steps, name) for v, name in ours), reverse=True)
    own = sorted(((v[2] / steps, v[1] / steps, name) for v, name in ours), reverse=True)
    step_s = float(np.median(times))
    return {
        "shape": "x".join(map(str, shape)), "engine": xp.__name__, "steps": steps,
        "weights": "grown" if grown is not None else "fresh",
        "step_seconds": round(step_s, 4), "step_seconds_range": [round(min(times), 4), round(max(times), 4)],
        "samples_per_s": round(64 / step_s, 1),
        "product_seconds_by_path": {k: round(v, 4) for k, v in sorted(by_path.items())},
        "product_seconds_by_layer": {k: round(v, 4) for k, v in by_layer.items()},
        "top_functions_cumulative": [{"function": name, "seconds_per_step": round(cum, 4),
                                      "calls_per_step": round(calls, 1)}
                                     for cum, calls, name in host[:40]],
        # without the functions it calls (CuPy's compiled calls count as its own): under
        # CUDA_LAUNCH_BLOCKING=1, the GPU time of the kernels it launches itself
        "top_functions_own": [{"function": name, "seconds_per_step": round(t, 4),
                               "calls_per_step": round(calls, 1)} for t, calls, name in own[:30]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="cupy", choices=["cupy", "numpy"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--shapes", default="mnist,cifar10")
    parser.add_argument("--features", help="conv widths and M, e.g. 8,16,M (default: VGG8B's)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--checkpoint", help="a VGG8B checkpoint whose grown weights to start from")
    args = parser.parse_args()
    xp = get_backend(args.engine)
    features = None if not args.features else \
        [f if f == "M" else int(f) for f in args.features.split(",")]
    grown = None if not args.checkpoint else read_checkpoint(Path(args.checkpoint)).section("param/")
    for name in args.shapes.split(","):
        out = profile_shape(xp, SHAPES[name], args.steps, features, [args.hidden], grown)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

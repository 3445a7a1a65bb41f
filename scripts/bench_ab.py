"""In-process A/B of one int8-path setting on a bench.py case: the setting alternates every training step.

On a shared, noisy machine two separate bench runs differ by more than most changes; alternating inside
one process gives both settings the same minutes, the same batches in turn and the same memory. The order
is A B B A A B B A ..., so that each value runs on as many odd as even steps (an A/A run here showed odd
steps a few percent slower than even ones). Prints each setting's median wall and CPU seconds per step.

Usage: [NITRO_DATA=...] .venv/bin/python scripts/bench_ab.py CASE SETTING A B [--pairs N] [--checkpoint CKPT]
SETTING is one of the `nitro_cli.engine.int8gemm` module settings below; e.g.
  scripts/bench_ab.py vgg8b_mnist_train_real outliers on off
  scripts/bench_ab.py vgg8b_mnist_train_real outlier_rows on off
  scripts/bench_ab.py vgg8b_train digit_bits 8 7
  scripts/bench_ab.py mlp4_train library onnxruntime torch
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import bench
from nitro_cli.engine import int8gemm


def _digit_bits(value: str) -> int:
    """7, or 8 only where the engine itself proved 8-bit digits exact here (int8gemm.digit_bits)."""
    if value not in ("7", "8") or (value == "8" and int8gemm.digit_bits() != 8):
        raise ValueError(value)
    return int(value)


def _library(value: str) -> str:
    """A GEMM library that passes the engine's worst-case self-test at the digit width in use."""
    if value not in int8gemm.BACKENDS or not (
            value == "onnxruntime" or (int8gemm._torch_available()
                                       and int8gemm._worst_case_exact(int8gemm.digit_bits(), value))):
        raise ValueError(value)
    return value


# setting: (module attribute, value parser; a value the engine would refuse raises ValueError)
SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "outliers": ("OUTLIER_MAX_DENSITY",
                 lambda v: {"on": int8gemm.OUTLIER_MAX_DENSITY, "off": -1.0}[v]),  # off: every limb dense
    # the convolutions' top-digit rows as one small GEMM (off: their top limb dense)
    "outlier_rows": ("OUTLIER_MAX_ROW_FRACTION",
                     lambda v: {"on": int8gemm.OUTLIER_MAX_ROW_FRACTION, "off": -1.0}[v]),
    "digit_bits": ("_DIGIT_BITS", _digit_bits),
    "library": ("_BACKEND", _library),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=[*bench.CASES, *bench.REAL_CASES])
    parser.add_argument("setting", choices=list(SETTINGS))
    parser.add_argument("values", nargs=2, help="the two values, A and B")
    parser.add_argument("--pairs", type=int, default=6, help="timed steps per value")
    parser.add_argument("--checkpoint", default=str(bench.DEFAULT_CHECKPOINT),
                        help="VGG8B MNIST checkpoint of the real-state cases (default: %(default)s)")
    args = parser.parse_args()
    attribute, parse = SETTINGS[args.setting]
    try:
        values = [parse(v) for v in args.values]
    except (KeyError, ValueError):
        parser.error(f"bad values for {args.setting} (or refused on this machine): {args.values}")
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in args.values}

    def alternating(step: Callable[[int], None], *_: Any) -> tuple[list[float], dict[str, Any]]:
        step(0)  # warm-up
        for i in range(1, 2 * args.pairs + 1):
            which = (i // 2) % 2  # A B B A A B B A ...
            setattr(int8gemm, attribute, values[which])
            wall, cpu = time.perf_counter(), time.process_time()
            step(i)
            times[args.values[which]].append((time.perf_counter() - wall, time.process_time() - cpu))
        return [1.0], {}

    bench.timed = alternating  # the cases' own setup, this timing loop
    if args.case in bench.REAL_CASES:
        bench.real_case(args.case, argparse.Namespace(checkpoint=args.checkpoint, checkpoint_cifar=None,
                                                      steps=2 * args.pairs, split=False), 1.0)
    else:
        bench.run_case(args.case, 1.0, 2 * args.pairs, False)
    print(f"{args.case}, {args.setting} alternating every step, {args.pairs} steps each:")
    for value, runs in times.items():
        wall, cpu = (statistics.median(r[i] for r in runs) for i in (0, 1))
        print(f"  {args.setting}={value}: wall median {wall:.3f} s, CPU median {cpu:.3f} s; "
              f"walls {[round(r[0], 3) for r in runs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ablation of the reference behaviours (spec section 6) on a reduced VGG8B trained on MNIST.

VGG8B with channels / 16 (8, 16, M, 16, 32, M, 32, M, 32, M), a classifier block of 64 and decoder_dim 256
keeps VGG8B's head-pool geometry on 28x28 inputs (every head pool is padded). Each variant trains from the
same initial weights on the same batches (seeded shuffle, batches of 64, no augmentation, no dropout, the
paper's lr_inv 512, amp 640 and vgg8b_mnist decays) and is scored every --every steps on the same held-out
training images (the last --held-out of the shuffled training set, never trained on).

    python scripts/ablation.py [--steps 600] [--every 100] [--out results/ablation]

Writes ablation.csv (one row per variant and step) and ablation.md (tables) into --out and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from nitro_cli.data import fit_normalizer, load_dataset, one_hot
from nitro_cli.nn import EXACT, Arithmetic, build_model
from nitro_cli.optim import IntegerSGD

FEATURES = [8, 16, "M", 16, 32, "M", 32, "M", 32, "M"]
REFERENCE = Arithmetic(True, True, True, True)
# variant: (arithmetic, conv amp multiplier)
VARIANTS = {
    "exact (default)": (EXACT, False),
    "exact + conv amp multiplier (old spec)": (EXACT, True),
    "exact + int8 loss error": (replace(EXACT, int8_loss_error=True), False),
    "exact + int32 accumulation": (replace(EXACT, int32_accumulation=True), False),
    "exact + head-pool zero padding": (replace(EXACT, head_pool_zero_padding=True), False),
    "exact + linear block double update": (replace(EXACT, cnn_linear_double_update=True), False),
    "reference (all four)": (REFERENCE, False),
}


def prepare(seed: int, held_out: int) -> tuple[np.ndarray, ...]:
    raw = load_dataset("mnist")
    order = np.random.default_rng(seed).permutation(len(raw.train_y))
    x, y = raw.train_x[order], raw.train_y[order].astype(np.int64)
    train_x, train_y, test_x, test_y = x[:-held_out], y[:-held_out], x[-held_out:], y[-held_out:]
    norm = fit_normalizer(train_x)
    return norm.apply(train_x), train_y, norm.apply(test_x), test_y


def run(variant: str, data: tuple[np.ndarray, ...], steps: int, every: int, seed: int) -> list[list]:
    arith, multiplier = VARIANTS[variant]
    train_x, train_y, test_x, test_y = data
    model = build_model("vgg8b", (1, 28, 28), 10, hidden=[64], features=FEATURES, decoder_dim=256,
                        seed_rng=np.random.default_rng(seed), arith=arith)
    opt = IntegerSGD(lr_inv=512, fwd_decay_inv=30000, subnet_decay_inv=3000, amp=640,
                     conv_amp_multiplier=multiplier)
    rows, started = [], time.monotonic()
    for step in range(1, steps + 1):
        idx = slice((step - 1) * 64, step * 64)
        model.train_step(train_x[idx], one_hot(train_y[idx], 10), train_y[idx], opt)
        if step % every == 0:
            res = model.evaluate(test_x, test_y)
            rows.append([variant, step, *[round(100 * a, 1) for a in res.head_accuracies],
                         round(100 * res.accuracy, 1)])
            print(f"{variant:40} step {step:4d}  heads {rows[-1][2:-1]}  output {rows[-1][-1]}  "
                  f"({time.monotonic() - started:.0f}s)", flush=True)
    return rows


def markdown(rows: list[list], heads: int, steps: int, held_out: int) -> str:
    header = "| variant | step | " + " | ".join(f"head {i}" for i in range(1, heads + 1)) + " | output |"
    lines = [f"Held-out accuracy (%) of each head and of the output on {held_out} MNIST training images "
             f"never trained on; reduced VGG8B, {steps} steps of 64 images.", "", header,
             "|" + "---|" * (heads + 3)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--held-out", type=int, default=512)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("results/ablation"))
    args = parser.parse_args()
    data = prepare(args.seed, args.held_out)
    if args.steps * 64 > len(data[1]):
        parser.error(f"--steps {args.steps} needs more than the {len(data[1])} training images (one pass)")
    rows = [row for variant in VARIANTS for row in run(variant, data, args.steps, args.every, args.seed)]
    heads = len(rows[0]) - 3
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "ablation.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["variant", "step", *[f"head{i}" for i in range(1, heads + 1)], "output"],
                                  *rows])
    text = markdown(rows, heads, args.steps, args.held_out)
    (args.out / "ablation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

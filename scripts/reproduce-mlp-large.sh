#!/usr/bin/env bash
# The paper's large MLP rows under `trainer=paper` (up to 150 epochs, early stopping): MLP3_SEEDS seeds of
# mlp3_mnist and mlp3_fashion (default 3: 42..44) and MLP4_SEEDS of mlp4_cifar10 (default 1), then
# `nitro report`. Slow on a CPU (an MLP3 run takes about an hour on one core, an MLP4 run several), so it is
# meant to be rerun across sessions: see run-paper-rows.sh. MLP4 goes first, beside the MLP3 queue.
# Usage: NITRO_DATA=... scripts/reproduce-mlp-large.sh [OUT_DIR]   (the data root must hold CIFAR-10 too)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/mlp-large}
{
  for seed in $(seq 42 $((41 + ${MLP4_SEEDS:-1}))); do echo "mlp4_cifar10 paper $seed"; done
  for seed in $(seq 42 $((41 + ${MLP3_SEEDS:-3}))); do
    echo "mlp3_mnist paper $seed"; echo "mlp3_fashion paper $seed"
  done
} | scripts/run-paper-rows.sh "$OUT" 150
"${NITRO:-.venv/bin/nitro}" report "runs=[$OUT/mlp3_mnist,$OUT/mlp3_fashion,$OUT/mlp4_cifar10]" "out=$OUT"

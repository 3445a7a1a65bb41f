#!/usr/bin/env bash
# The paper's VGG8B rows at a reduced budget on a CPU: vgg8b_mnist and vgg8b_fashion, seed 42, `trainer=paper`,
# the first EPOCHS epochs (the paper trains up to 150), both rows side by side with one BLAS thread each, then
# `nitro report`. Rerun with a larger EPOCHS to extend: each run resumes bit-identically from its last.npz.
# Usage: NITRO_DATA=... scripts/reproduce-vgg.sh EPOCHS [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export NITRO=${NITRO:-.venv/bin/nitro}
export EPOCHS=${1:?number of epochs} OUT=${2:-results/vgg}
: "${NITRO_DATA:?set NITRO_DATA to the folder holding MNIST/ and FashionMNIST/ (see nitro data list)}"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT/logs"

run_row() {  # row
  local dir="$OUT/$1/paper/0" resume=() start
  if [ -f "$dir/checkpoints/last.npz" ]; then resume=("resume=$dir/checkpoints/last.npz"); fi
  start=$(date +%s)
  "$NITRO" train "experiment=paper/$1" trainer.max_epochs="$EPOCHS" seed=42 "hydra.run.dir=$dir" "${resume[@]}" \
    >>"$OUT/logs/$1.log" 2>&1
  echo "$1: epochs up to $EPOCHS, wall time $(( $(date +%s) - start )) s on $(nproc --all) cores" \
    "($(lscpu | sed -n 's/^Model name: *//p'))" | tee -a "$OUT/logs/wall_time.txt"
}
export -f run_row

printf '%s\n' vgg8b_mnist vgg8b_fashion | xargs -P 2 -L 1 bash -c 'run_row "$@"' _
"$NITRO" report "runs=[$OUT/vgg8b_mnist,$OUT/vgg8b_fashion]" "out=$OUT"

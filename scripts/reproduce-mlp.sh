#!/usr/bin/env bash
# Reproduce the paper's two small MLP rows on a CPU: seeds 42..51 under both protocols (trainer=paper: the
# paper's test-set protocol; trainer=default: validation split), then `nitro report`.
# Runs go two at a time (one BLAS thread each) into OUT/<row>/<protocol>/<seed - 42>/. The script can be
# rerun: completed runs are kept, interrupted ones resume bit-identically from their last.npz.
# Usage: NITRO_DATA=... scripts/reproduce-mlp.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export NITRO=${NITRO:-.venv/bin/nitro}
export OUT=${1:-results/mlp}
: "${NITRO_DATA:?set NITRO_DATA to the folder holding MNIST/ and FashionMNIST/ (see nitro data list)}"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT/logs"

run_one() {  # row protocol seed
  local dir="$OUT/$1/$2/$(($3 - 42))" resume=()
  if grep -qs '"status": "completed"' "$dir/summary.json"; then return 0; fi
  if [ -f "$dir/checkpoints/last.npz" ]; then resume=("resume=$dir/checkpoints/last.npz"); fi
  "$NITRO" train "experiment=paper/$1" "trainer=$2" trainer.max_epochs=150 "seed=$3" \
    "hydra.run.dir=$dir" "${resume[@]}" >>"$OUT/logs/$1-$2.log" 2>&1
}
export -f run_one

start=$(date +%s)
for row in mlp2_fashion mlp1_mnist; do  # the longer row first, so both workers finish together
  for protocol in paper default; do
    for seed in $(seq 42 51); do echo "$row $protocol $seed"; done
  done
done | xargs -P 2 -L 1 bash -c 'run_one "$@"' _
echo "wall time: $(( $(date +%s) - start )) s on $(nproc --all) cores ($(lscpu | sed -n 's/^Model name: *//p'))" \
  | tee -a "$OUT/logs/wall_time.txt"
"$NITRO" report "runs=[$OUT/mlp1_mnist,$OUT/mlp2_fashion]" "out=$OUT"

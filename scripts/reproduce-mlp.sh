#!/usr/bin/env bash
# Reproduce the paper's two small MLP rows on a CPU: seeds 42..51 under both protocols (trainer=paper: the
# paper's test-set protocol; trainer=default: validation split), then `nitro report`. Rerunnable (see
# run-paper-rows.sh). About 45 minutes on 2 cores.
# Usage: NITRO_DATA=... scripts/reproduce-mlp.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/mlp}
for row in mlp2_fashion mlp1_mnist; do  # the longer row first, so both workers finish together
  for protocol in paper default; do
    for seed in $(seq 42 51); do echo "$row $protocol $seed"; done
  done
done | scripts/run-paper-rows.sh "$OUT" 150
"${NITRO:-.venv/bin/nitro}" report "runs=[$OUT/mlp1_mnist,$OUT/mlp2_fashion]" "out=$OUT"

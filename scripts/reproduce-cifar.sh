#!/usr/bin/env bash
# The paper's CIFAR-10 rows on a CPU, seed 42, trainer=paper, the first EPOCHS epochs (about 15-25 minutes an
# epoch on 2 cores; the paper trains up to 150): VGG8B in both arithmetics (compat=exact, the default, and
# compat=reference, which replays the reference code's), VGG8B with only the reference's double update of
# the classifier's linear block, and VGG11B; two at a time, then `nitro report` over every run in OUT_DIR.
# Rerun with a larger EPOCHS to extend: each run resumes bit-identically from its last.npz.
# Usage: NITRO_DATA=... scripts/reproduce-cifar.sh EPOCHS [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:?number of epochs} OUT=${2:-results/vgg}
printf '%s\n' "vgg8b_cifar10 paper 42" "vgg8b_cifar10 paper 42 reference compat=reference" \
  "vgg8b_cifar10 paper 42 double-update compat.cnn_linear_double_update=true" "vgg11b_cifar10 paper 42" \
  | scripts/run-paper-rows.sh "$OUT" "$EPOCHS"
"${NITRO:-.venv/bin/nitro}" report "runs=$OUT" "out=$OUT"

#!/usr/bin/env bash
# The paper's VGG8B rows at a reduced budget on a CPU: vgg8b_mnist and vgg8b_fashion, seed 42, `trainer=paper`,
# the first EPOCHS epochs (the paper trains up to 150; here about an hour per epoch), side by side, then
# `nitro report`. Rerun with a larger EPOCHS to extend: each run resumes bit-identically from its last.npz.
# Usage: NITRO_DATA=... scripts/reproduce-vgg.sh EPOCHS [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:?number of epochs} OUT=${2:-results/vgg}
printf '%s\n' "vgg8b_mnist paper 42" "vgg8b_fashion paper 42" | scripts/run-paper-rows.sh "$OUT" "$EPOCHS"
"${NITRO:-.venv/bin/nitro}" report "runs=$OUT" "out=$OUT"  # every run in OUT, the CIFAR-10 ones too

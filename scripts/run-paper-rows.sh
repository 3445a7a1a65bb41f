#!/usr/bin/env bash
# Trains runs of the paper's rows two at a time (one BLAS thread each). Reads "row protocol seed [variant
# override...]" lines on stdin; each run goes into OUT/<row>/<protocol>[-<variant>]/<seed - 42>/ for at most
# EPOCHS epochs with the overrides (e.g. "vgg8b_cifar10 paper 42 reference compat=reference"), its log into
# OUT/logs/<row>-<protocol>[-<variant>]-<seed>.log (one per run: two runs of a row may train at once). Rerunnable
# (resume=auto): a run with a last.npz resumes from it bit-identically, which extends a run to a larger
# EPOCHS and leaves a finished one (early stop or EPOCHS reached) as it is.
# Usage: printf '%s\n' "mlp1_mnist paper 42" ... | NITRO_DATA=... scripts/run-paper-rows.sh OUT EPOCHS
set -euo pipefail
cd "$(dirname "$0")/.."
export NITRO=${NITRO:-.venv/bin/nitro} OUT=${1:?output folder} EPOCHS=${2:?most epochs per run}
: "${NITRO_DATA:?set NITRO_DATA to the data root (see nitro data list)}"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT/logs"

run_one() {  # row protocol seed [variant override...]
  local row=$1 protocol=$2${4:+-$4} seed=$3 start rc=0
  shift 3; shift $(($# > 0 ? 1 : 0))
  local dir="$OUT/$row/$protocol/$((seed - 42))" log="$OUT/logs/$row-$protocol-$seed.log"
  start=$(date +%s)
  "$NITRO" train "experiment=paper/$row" "trainer=${protocol%%-*}" "trainer.max_epochs=$EPOCHS" "seed=$seed" \
    "$@" "hydra.run.dir=$dir" resume=auto >>"$log" 2>&1 || rc=$?
  echo "$row $protocol seed $seed: up to $EPOCHS epochs, $(( $(date +%s) - start )) s, exit $rc" \
    >>"$OUT/logs/wall_time.txt"
  if [ "$rc" -ne 0 ]; then echo "FAILED: $row $protocol seed $seed (exit $rc), see $log" >&2; return 1; fi
}
export -f run_one

start=$(date +%s) rc=0
xargs -P 2 -L 1 bash -c 'run_one "$@"' _ || rc=$?
echo "wall time: $(( $(date +%s) - start )) s on $(nproc --all) cores ($(lscpu | sed -n 's/^Model name: *//p'))" \
  | tee -a "$OUT/logs/wall_time.txt"
exit "$rc"

#!/usr/bin/env bash
# The GPU check of issue 18, in one run of at most 8 minutes on a machine with CuPy and a CUDA GPU (e.g. the
# lent device machine, whose python3 has CuPy, NumPy and ONNX Runtime): the `gpu` tests, then VGG8B training
# steps on the GPU with their time split (scripts/gpu_profile.py: products per layer and path, host
# functions by wall time and calls, where each bound check's GPU synchronisation shows).
# Packages the machine lacks (hydra-core, omegaconf, antlr4-python3-runtime, rich) install from wheels in
# .whl/ when it is there (see the device tool's README for downloading them here). Results go to $OUT (or
# ./gpu-bench-out): pytest.log and profile.jsonl.
# Usage: scripts/gpu-bench.sh [STEPS]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3} STEPS=${1:-5} DEST=${OUT:-gpu-bench-out}
mkdir -p "$DEST"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --find-links .whl hydra-core omegaconf antlr4-python3-runtime rich
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || export PYTHONPATH=$PWD/src
"$PY" -c "import cupy; print('CuPy', cupy.__version__, cupy.cuda.runtime.getDeviceProperties(0)['name'].decode())"
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv || true
rc=0
timeout 240 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$DEST/pytest.log" || rc=1
timeout 200 "$PY" scripts/gpu_profile.py --engine cupy --steps "$STEPS" | tee "$DEST/profile.jsonl" || rc=1
exit "$rc"

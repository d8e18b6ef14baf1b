#!/usr/bin/env bash
# Builds, checks and times the CUDA back-end in one go, on a GPU machine:
#   bash scripts/gpu_check.sh [build|kernels|tests|bench|all]...   (default: all)
# Logs go to $OUT (default /tmp/gpu_check). Works with the machine's own python3
# (torch, numpy, safetensors); pybind11 comes from .whl/ when it is missing.
# GLM_GOLDEN_DIR (default .gpudata/ if it holds glm_model.data) points at the golden data.
# BENCH_ARGS adds arguments to glmserve.bench; PYTEST_K selects tests (-k).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
want() { for s in "${steps[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done; return 1; }
if [ -z "${GLM_GOLDEN_DIR:-}" ] && [ -f .gpudata/glm_model.data ]; then export GLM_GOLDEN_DIR=$PWD/.gpudata; fi

PY=${PYTHON:-python3}
if ! "$PY" -c "import pybind11" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/pybind11-*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv

BUILD=${BUILD:-build/gpu}
status=0
if want build || want kernels || want tests || want bench; then
  t0=$(date +%s)
  cmake -S backend_src -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
    -DGLM_PYMODULE_OUT="$PWD/glmserve" -DGLM_BACKEND_OUT="$PWD/$BUILD/backends/chatglm" \
    -DGLM_WITH_CUDA=ON -DGLM_CUDA_ARCHS="${GLM_CUDA_ARCHS:-90a}" >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  cmake --build "$BUILD" -j "$(nproc)" --target _engine glm_cuda_kernel_test >>"$OUT/build.log" 2>&1 \
    || { grep -E "error|Error" "$OUT/build.log" | head -40; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
fi
if want kernels; then
  "$BUILD/engine/cuda/glm_cuda_kernel_test" "${KERNEL_SEED:-$RANDOM}" 2>&1 | tee "$OUT/kernel_test.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if want tests; then
  export GLM_CUDA_KERNEL_TEST=$PWD/$BUILD/engine/cuda/glm_cuda_kernel_test
  "$PY" -m pytest -m gpu -v -s -p no:cacheprovider tests/test_cuda_engine.py ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$OUT/pytest.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if want bench; then
  # shellcheck disable=SC2086
  "$PY" -m glmserve.bench --out "$OUT/bench.md" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
exit $status

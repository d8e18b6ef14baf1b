#!/usr/bin/env bash
# INT8 weight-only mode on a GPU machine, in one go (docs/int8.md):
#   bash scripts/gpu_int8.sh [build|kernels|kbench|tests|bench|all]...   (default: all)
# build: _engine + glm_cuda_int8_test (GLM_CUDA_ARCHS, default 90a: the packed-layout kernels; only the kernel
# test when the steps are kernels/kbench alone); kernels: the standalone kernel
# test; kbench: its timing mode (one block's linear layers, fp16 vs each int8
# kernel, per token count); tests: pytest -m gpu tests/test_int8_cuda.py; bench:
# glmserve.bench_int8 (fp16 and int8 rows in the same run). Logs go to $OUT
# (default /tmp/gpu_int8). Works with the machine's own python3 (torch, numpy,
# safetensors); pybind11 comes from .whl/ when it is missing. The tiny model and
# its int8 conversions are read from models/ when present (carry them).
# INT8_BENCH_ARGS replaces the bench arguments; PYTEST_K selects tests (-k).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_int8}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
want() { for s in "${steps[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done; return 1; }

PY=${PYTHON:-python3}
if ! "$PY" -c "import pybind11" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/pybind11-*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv

BUILD=${BUILD:-build/gpu-int8}
status=0
targets=(glm_cuda_int8_test)
if want build || want tests || want bench; then targets+=(_engine); fi
if want build || want kernels || want kbench || want tests || want bench; then
  t0=$(date +%s)
  cmake -S backend_src -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
    -DGLM_PYMODULE_OUT="$PWD/glmserve" -DGLM_BACKEND_OUT="$PWD/$BUILD/backends/chatglm" \
    -DGLM_WITH_CUDA=ON -DGLM_CUDA_ARCHS="${GLM_CUDA_ARCHS:-90a}" >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  cmake --build "$BUILD" -j "$(nproc)" --target "${targets[@]}" >>"$OUT/build.log" 2>&1 \
    || { grep -E "error|Error" "$OUT/build.log" | head -40; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
fi
if want kernels; then
  "$BUILD/engine/cuda/glm_cuda_int8_test" "${KERNEL_SEED:-$RANDOM}" 2>&1 | tee "$OUT/int8_test.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if want kbench; then
  "$BUILD/engine/cuda/glm_cuda_int8_test" bench 2>&1 | tee "$OUT/int8_kbench.md"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if want tests; then
  export GLM_CUDA_INT8_TEST=$PWD/$BUILD/engine/cuda/glm_cuda_int8_test
  "$PY" -m pytest -m gpu -v -s -p no:cacheprovider tests/test_int8_cuda.py ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$OUT/pytest.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if want bench; then
  # shellcheck disable=SC2086
  "$PY" -m glmserve.bench_int8 --out "$OUT/bench_int8.md" ${INT8_BENCH_ARGS:---int8-lm-head} 2>&1 | tee "$OUT/bench.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
exit $status

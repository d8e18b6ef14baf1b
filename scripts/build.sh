#!/usr/bin/env bash
# Builds backend_src/ (engine, CPU back-end, CUDA back-end when nvcc + cuBLAS are
# there, pybind11 module, Triton backend). Warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc)}
PY="$VENV/bin/python"
cmake_args=(-S backend_src -B "$BUILD/cmake" -DCMAKE_BUILD_TYPE=Release
  -DPython_EXECUTABLE="$(realpath "$PY")"
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)"
  -DGLM_BACKEND_OUT="$(realpath -m "$BUILD/backends/chatglm")"
  -DGLM_PYMODULE_OUT="$(realpath glmserve)")
if [ -n "${GLM_CMAKE_ARGS:-}" ]; then read -r -a extra <<<"$GLM_CMAKE_ARGS"; cmake_args+=("${extra[@]}"); fi
cmake "${cmake_args[@]}" >/dev/null
cmake --build "$BUILD/cmake" -j "$JOBS"

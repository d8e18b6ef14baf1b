#!/usr/bin/env bash
# Docker step 3: builds backend_src/ with scripts/build.sh (the script `make build`
# runs) and checks what the server needs came out of it: the Triton backend
# $BUILD/backends/chatglm/libtriton_chatglm.so exporting the TRITONBACKEND entry
# points, the pybind11 module glmserve/_engine*.so, and, with REQUIRE_CUDA=1,
# the CUDA back-end compiled in (the build fails instead of silently falling
# back to CPU-only when nvcc or cuBLAS is missing).
#
#   bash docker/build_backend.sh
# Environment (besides scripts/build.sh's VENV, BUILD, JOBS, GLM_CMAKE_ARGS):
#   REQUIRE_CUDA=1   pass -DGLM_WITH_CUDA=ON and check the CUDA back-end (the image's default)
#   CUDA_ARCHS       CMAKE_CUDA_ARCHITECTURES, e.g. "80;90" (empty: backend_src's default)
#   CUDA_HOME        where nvcc is when it is not on PATH (default /usr/local/cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV=${VENV:-.venv}
export BUILD=${BUILD:-build}
REQUIRE_CUDA=${REQUIRE_CUDA:-0}
CUDA_ARCHS=${CUDA_ARCHS:-}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

[ -x "$VENV/bin/python" ] || { echo "build_backend: no $VENV (run scripts/setup.sh first)" >&2; exit 1; }

extra=${GLM_CMAKE_ARGS:-}
if [ "$REQUIRE_CUDA" = 1 ]; then
  extra="$extra -DGLM_WITH_CUDA=ON"
  if ! command -v nvcc >/dev/null 2>&1 && [ -z "${CUDACXX:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    export CUDACXX="$CUDA_HOME/bin/nvcc"
  fi
fi
[ -n "$CUDA_ARCHS" ] && extra="$extra -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS"
export GLM_CMAKE_ARGS="${extra# }"
echo "build_backend: scripts/build.sh (BUILD=$BUILD, GLM_CMAKE_ARGS=${GLM_CMAKE_ARGS:-none})"
bash scripts/build.sh

fail=0
lib="$BUILD/backends/chatglm/libtriton_chatglm.so"
if [ ! -f "$lib" ]; then
  echo "build_backend: $lib was not built" >&2
  fail=1
else
  for sym in TRITONBACKEND_Initialize TRITONBACKEND_ModelInitialize TRITONBACKEND_ModelInstanceInitialize \
    TRITONBACKEND_ModelInstanceExecute; do
    if ! nm -D --defined-only "$lib" | grep -qw "$sym"; then
      echo "build_backend: $lib does not export $sym" >&2
      fail=1
    fi
  done
fi
compgen -G "glmserve/_engine*.so" >/dev/null || { echo "build_backend: glmserve/_engine*.so was not built" >&2; fail=1; }
if [ "$REQUIRE_CUDA" = 1 ]; then
  cache="$BUILD/cmake/CMakeCache.txt"
  if ! grep -q '^GLM_WITH_CUDA:STRING=ON$' "$cache" 2>/dev/null \
    || [ -z "$(find "$BUILD/cmake" -name 'libglm_engine_cuda.*' -print -quit)" ]; then
    echo "build_backend: REQUIRE_CUDA=1 but the CUDA back-end (glm_engine_cuda) was not built" >&2
    fail=1
  fi
fi
[ "$fail" = 0 ] || exit 1
echo "build_backend: ok: $lib$([ "$REQUIRE_CUDA" = 1 ] && echo ' (CUDA back-end built)')"

#!/usr/bin/env bash
# Sourced by scripts/serve.sh and usable by hand:
#   source scripts/triton_env.sh   # then: "$TRITONSERVER" --model-repository=... --backend-directory="$TRITON_BACKEND_DIR"
# Finds tritonserver in the venv's nvidia-pytriton (or uses $TRITONSERVER, an
# external server such as /opt/tritonserver/bin/tritonserver, with the Python
# backend in $TRITON_PYTHON_BACKEND, default <server>/../backends/python), puts the venv's bin first on
# PATH (the Python backend stub takes its interpreter and numpy from the first
# python3 on PATH), adds nvidia_pytriton.libs to LD_LIBRARY_PATH, and lays out
# the backend directory $BUILD/backends: chatglm/ (built by scripts/build.sh)
# and python/ (pytriton's Python backend + the stub for this Python version).
_glm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV=${VENV:-.venv}
BUILD=${BUILD:-build}
case "$VENV" in /*) ;; *) VENV="$_glm_root/$VENV" ;; esac
case "$BUILD" in /*) ;; *) BUILD="$_glm_root/$BUILD" ;; esac
_glm_py="$VENV/bin/python"
if [ ! -x "$_glm_py" ]; then
  echo "triton_env: no Python venv at $VENV (run: make setup)" >&2
  return 1 2>/dev/null || exit 1
fi
_glm_site="$("$_glm_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
_glm_pyver="$("$_glm_py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
if [ -n "${TRITONSERVER:-}" ] &&
   [ "$(realpath -ms "$TRITONSERVER")" != "$(realpath -ms "$_glm_site/pytriton/tritonserver/bin/tritonserver")" ]; then
  # An external server (e.g. the NGC image's /opt/tritonserver) and its Python backend.
  if [ ! -x "$TRITONSERVER" ]; then
    echo "triton_env: TRITONSERVER=$TRITONSERVER is not an executable" >&2
    return 1 2>/dev/null || exit 1
  fi
  TRITON_HOME="$(cd "$(dirname "$TRITONSERVER")/.." && pwd)"
  _glm_pybe="${TRITON_PYTHON_BACKEND:-$TRITON_HOME/backends/python}"
  _glm_stub="$_glm_pybe/triton_python_backend_stub"
  _glm_external=1
else
  TRITON_HOME="$_glm_site/pytriton/tritonserver"
  TRITONSERVER="$TRITON_HOME/bin/tritonserver"
  if [ ! -x "$TRITONSERVER" ]; then
    echo "triton_env: no tritonserver at $TRITONSERVER (nvidia-pytriton missing from $VENV?)" >&2
    return 1 2>/dev/null || exit 1
  fi
  _glm_pybe="$TRITON_HOME/backends/python"
  _glm_stub="$TRITON_HOME/python_backend_stubs/$_glm_pyver/triton_python_backend_stub"
  _glm_external=0
fi
TRITON_BACKEND_DIR="$BUILD/backends"
mkdir -p "$TRITON_BACKEND_DIR/python"
if [ ! -f "$_glm_stub" ]; then
  echo "triton_env: no Python backend stub for Python $_glm_pyver at $_glm_stub" >&2
  return 1 2>/dev/null || exit 1
fi
for _f in "$_glm_pybe/libtriton_python.so" \
          "$_glm_pybe/triton_python_backend_utils.py" "$_glm_stub"; do
  _dst="$TRITON_BACKEND_DIR/python/$(basename "$_f")"
  if [ ! -f "$_dst" ] || ! cmp -s "$_f" "$_dst"; then cp -f "$_f" "$_dst"; fi
done
chmod +x "$TRITON_BACKEND_DIR/python/triton_python_backend_stub"
export PATH="$VENV/bin:$PATH"
if [ "$_glm_external" = 0 ]; then
  export LD_LIBRARY_PATH="$_glm_site/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export TRITONSERVER TRITON_HOME TRITON_BACKEND_DIR
unset _glm_root _glm_py _glm_site _glm_pyver _glm_stub _glm_pybe _glm_external _f _dst

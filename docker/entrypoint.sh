#!/usr/bin/env bash
# The container's entry point (docker/Dockerfile), also usable on a host. Serving
# goes through scripts/serve.sh, the script `make serve` runs, pointed at the
# image's own tritonserver (/opt/tritonserver) and its Python backend.
#
#   entrypoint.sh [serve] [TRITONSERVER_ARGS...]  serve MODEL_DIR (default command)
#   entrypoint.sh prepare                         `make model` into MODEL_DIR, then exit
#   entrypoint.sh demo-model                      `make demo-model` (the tiny CPU demo)
#   entrypoint.sh check                           check the installation, start nothing
#   entrypoint.sh COMMAND...                      run anything else (bash, make ..., python ...)
#
# Environment knobs (Makefile names; defaults are the container's):
#   MODEL_DIR       checkpoint to serve (default /models/chatglm-6b, the volume):
#                   converted (`make model`), or hub-style (serve.sh converts it
#                   once into $BUILD/converted); empty: the tiny demo model
#   PREPARE_MODEL   1: when MODEL_DIR has no config.json, run `make model` first
#                   (downloads ~13 GB from the model hub); 0 (default): fail with a hint
#   DEVICE DTYPE INT8 GPUS       as for `make serve` (INT8=1 also makes `prepare` write int8)
#   HOST            listen address (default 0.0.0.0 in a container)
#   HTTP_PORT GRPC_PORT METRICS_PORT   8000 8001 8002
#   OPENAI_PORT     the OpenAI-compatible API beside tritonserver (default 9000; 0: off),
#                   started by scripts/serve.sh; also OPENAI_HOST, OPENAI_WORKERS, OPENAI_ARGS
#   GLM_OPENAI_API_KEY   when set, every OpenAI API request needs "Authorization: Bearer <it>"
#   TRITONSERVER    the tritonserver binary (default /opt/tritonserver/bin/tritonserver
#                   when it exists, else nvidia-pytriton's in the venv)
#   TRITON_ARGS     more tritonserver arguments (so are the arguments after "serve")
#   TRITON_PYTHON_BACKEND   Triton's Python backend folder whose stub matches
#                   the venv's Python (default /opt/tritonserver/backends/python)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

export VENV=${VENV:-.venv}
export BUILD=${BUILD:-build}
export MODEL_DIR=${MODEL_DIR-/models/chatglm-6b}
export PREPARE_MODEL=${PREPARE_MODEL:-0}
export HOST=${HOST:-0.0.0.0}
if [ -z "${TRITONSERVER:-}" ] && [ -x /opt/tritonserver/bin/tritonserver ]; then
  export TRITONSERVER=/opt/tritonserver/bin/tritonserver
fi
if [ -z "${TRITON_PYTHON_BACKEND:-}" ] && [ -d /opt/tritonserver/backends/python ]; then
  export TRITON_PYTHON_BACKEND=/opt/tritonserver/backends/python
fi

log() { echo "entrypoint: $*" >&2; }

# a converted checkpoint, or a hub-style one (serve.sh converts that once into $BUILD)
have_checkpoint() { [ -f "$1/config.json" ]; }

prepare() {
  [ -n "$MODEL_DIR" ] || { log "prepare needs MODEL_DIR"; exit 2; }
  if have_checkpoint "$MODEL_DIR"; then
    log "$MODEL_DIR already holds a checkpoint; nothing to do"
    return 0
  fi
  # `make model` writes models/chatglm-6b: point that at MODEL_DIR (the volume).
  mkdir -p "$MODEL_DIR" models
  local target
  target=$(realpath -m "$MODEL_DIR")
  if [ "$(realpath -m models/chatglm-6b)" != "$target" ]; then
    if [ -e models/chatglm-6b ] && [ ! -L models/chatglm-6b ]; then
      log "models/chatglm-6b exists and is not a link to $MODEL_DIR; move it away first"
      exit 1
    fi
    ln -sfn "$target" models/chatglm-6b
  fi
  log "downloading and converting THUDM/chatglm-6b into $MODEL_DIR (INT8=${INT8:-0})"
  make --no-print-directory model
}

check() {
  local fail=0 py="$VENV/bin/python" srv=${TRITONSERVER:-}
  if [ -z "$srv" ]; then
    srv=$("$py" -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parent / "tritonserver/bin/tritonserver")' 2>/dev/null || true)
  fi
  if [ -n "$srv" ] && [ -x "$srv" ]; then log "tritonserver: $srv"; else
    log "no tritonserver binary (TRITONSERVER=${srv:-unset})"
    fail=1
  fi
  [ -f "$BUILD/backends/chatglm/libtriton_chatglm.so" ] || { log "missing $BUILD/backends/chatglm/libtriton_chatglm.so"; fail=1; }
  [ -f model_repository/chatglm/config.pbtxt ] || { log "missing model_repository/"; fail=1; }
  [ -f scripts/serve.sh ] || { log "missing scripts/serve.sh"; fail=1; }
  if ! "$py" -c 'import numpy, sentencepiece, glmserve, glmserve.tokenizer
assert numpy.__version__.startswith("1."), "numpy %s: the stub needs numpy<2" % numpy.__version__'; then
    log "the venv $VENV cannot run the Python models"
    fail=1
  fi
  if ! "$py" -c 'import uvicorn, glmserve.openai_api.app' 2>/dev/null; then
    log "the venv $VENV cannot run the OpenAI-compatible API (glmserve.openai_api)"
    fail=1
  fi
  if [ -n "${TRITON_PYTHON_BACKEND:-}" ]; then
    local pyver stub="$TRITON_PYTHON_BACKEND/triton_python_backend_stub"
    pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    if [ ! -x "$stub" ]; then
      log "no stub in $TRITON_PYTHON_BACKEND"
      fail=1
    elif command -v ldd >/dev/null 2>&1 && ! ldd "$stub" | grep -q "libpython$pyver"; then
      log "the stub in $TRITON_PYTHON_BACKEND does not load libpython$pyver (the venv's Python)"
      fail=1
    fi
  fi
  if [ -n "$MODEL_DIR" ] && ! have_checkpoint "$MODEL_DIR"; then
    log "note: $MODEL_DIR holds no checkpoint yet (mount the volume, or run 'prepare')"
  fi
  [ "$fail" = 0 ] || exit 1
  log "check: ok"
}

cmd=${1:-serve}
case "$cmd" in
  serve | -*)
    [ "$cmd" = serve ] && shift || true
    if [ -n "$MODEL_DIR" ] && ! have_checkpoint "$MODEL_DIR"; then
      if [ "$PREPARE_MODEL" = 1 ]; then
        prepare
      else
        log "no checkpoint in MODEL_DIR=$MODEL_DIR (no config.json)."
        log "Mount one (docker run -v /path/to/models:/models), run the 'prepare' command"
        log "(or set PREPARE_MODEL=1) to download and convert THUDM/chatglm-6b, or set"
        log "MODEL_DIR= (empty) for the tiny CPU demo model."
        exit 1
      fi
    fi
    export MODEL="$MODEL_DIR"
    [ -n "$MODEL" ] || [ -f models/chatglm-tiny/model.safetensors ] || make --no-print-directory demo-model
    # extra arguments go to tritonserver (serve.sh appends TRITON_ARGS)
    if [ $# -gt 0 ]; then export TRITON_ARGS="${TRITON_ARGS:+$TRITON_ARGS }$*"; fi
    PATH="$(realpath "$VENV")/bin:$PATH"
    export PATH
    exec bash scripts/serve.sh
    ;;
  prepare) prepare ;;
  demo-model) make --no-print-directory demo-model ;;
  check) check ;;
  *) exec "$@" ;;
esac

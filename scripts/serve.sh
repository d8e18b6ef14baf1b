#!/usr/bin/env bash
# `make serve`: tritonserver in the foreground with our model repository and
# backend directory. Run after `make build` and `make demo-model`.
#
# Environment (all optional):
#   MODEL         converted checkpoint dir (config.json with glmserve_format) or a
#                 hub-style one (converted once into $BUILD/converted/<name>[-int8]);
#                 default: models/chatglm-tiny (the demo model)
#   DEVICE        cpu | cuda | auto (default auto: cuda when nvidia-smi lists a GPU)
#   DTYPE         fp32 | fp16 (default: fp32 on cpu, fp16 on cuda)
#   INT8=1        INT8 weight-only (hub-style MODEL is converted with --int8)
#   W8A8=N        with INT8=1: W8A8 (per-token int8 activations, int8 tensor cores) from N
#                 tokens on (the decoder's cuda_int8_w8a8_min_tokens; docs/int8.md)
#   KV_CACHE_DTYPE  fp8: the KV cache as E4M3 with a scale per token and head (about 2x the
#                 blocks); auto (default): the compute dtype
#   FP8=1         FP8 E4M3 block linears (a float MODEL, quantized at load; GPUs with FP8
#                 tensor cores, compute capability 8.9+; docs/int8.md "FP8")
#   GPUS          GPU ids for CUDA_VISIBLE_DEVICES (one decoder instance per GPU)
#   HOST          bind address (default 127.0.0.1, loopback only)
#   HTTP_PORT GRPC_PORT METRICS_PORT   (default 8000 8001 8002)
#   BUILD VENV    build and venv directories (default build, .venv)
#   TRITON_ARGS   more tritonserver arguments, e.g.
#                 "--backend-config=chatglm,num_kv_blocks=512 --log-verbose=1"
#   OPENAI_PORT   the OpenAI-compatible API (python -m glmserve.openai_api, docs/openai.md)
#                 beside tritonserver (default 9000; 0 or off: not started). It binds
#                 OPENAI_HOST (default HOST), runs OPENAI_WORKERS uvicorn workers (default
#                 1), needs GLM_OPENAI_API_KEY on every request when that is set, gets
#                 OPENAI_ARGS as more arguments, and exits together with tritonserver.
# Model control is off (--model-control-mode=none): the repository API cannot
# load or unload models. A checkpoint without ice_text.model serves only
# chatglm_decoder (ids in, ids out) with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DEVICE=${DEVICE:-auto}
DTYPE=${DTYPE:-}
INT8=${INT8:-0}
FP8=${FP8:-0}
W8A8=${W8A8:-0}
KV_CACHE_DTYPE=${KV_CACHE_DTYPE:-}
case "$KV_CACHE_DTYPE" in
  "" | auto | fp8) ;;
  *) echo "serve.sh: KV_CACHE_DTYPE must be auto or fp8, got '$KV_CACHE_DTYPE'" >&2; exit 2 ;;
esac
HOST=${HOST:-127.0.0.1}
HTTP_PORT=${HTTP_PORT:-8000}
GRPC_PORT=${GRPC_PORT:-8001}
METRICS_PORT=${METRICS_PORT:-8002}
GPUS=${GPUS:-}
MODEL=${MODEL:-}

say() { echo "serve: $*" >&2; }
die() { say "error: $*"; exit 1; }

# shellcheck source=scripts/triton_env.sh
source scripts/triton_env.sh   # TRITONSERVER, TRITON_BACKEND_DIR, PATH, LD_LIBRARY_PATH
PY="$VENV/bin/python"
[ -f "$TRITON_BACKEND_DIR/chatglm/libtriton_chatglm.so" ] ||
  die "$TRITON_BACKEND_DIR/chatglm/libtriton_chatglm.so is missing (run: make build)"

is_int8() { [ "$INT8" = "1" ] || [ "$INT8" = "true" ]; }
is_fp8() { [ "$FP8" = "1" ] || [ "$FP8" = "true" ]; }
if is_int8 && is_fp8; then
  echo "serve.sh: INT8=1 and FP8=1 are two modes: choose one" >&2
  exit 2
fi

# ---- checkpoint -------------------------------------------------------------
is_converted() {
  [ -f "$1/config.json" ] && [ -f "$1/model.safetensors" ] &&
    "$PY" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("glmserve_format") else 1)' \
      "$1/config.json" 2>/dev/null
}
if [ -z "$MODEL" ]; then
  CKPT="$ROOT/models/chatglm-tiny"
  is_converted "$CKPT" || die "no demo model in $CKPT (run: make demo-model)"
else
  SRC="$(realpath -m "$MODEL")"
  [ -d "$SRC" ] || die "MODEL=$MODEL is not a directory"
  if is_converted "$SRC"; then
    CKPT="$SRC"
  else
    [ -f "$SRC/config.json" ] || die "MODEL=$MODEL has no config.json (not a ChatGLM checkpoint)"
    CKPT="$BUILD/converted/$(basename "$SRC")$(is_int8 && echo -int8 || true)"
    if is_converted "$CKPT"; then
      say "using the converted checkpoint $CKPT"
    else
      say "converting $SRC -> $CKPT (once)"
      conv=(--src "$SRC" --out "$CKPT")
      is_int8 && conv+=(--int8)
      "$PY" -m glmserve.convert "${conv[@]}"
    fi
  fi
fi
if is_int8 && ! grep -q '"int8": *true' "$CKPT/config.json"; then
  say "INT8=1: $CKPT is a float checkpoint; the engine quantizes it to int8 at load"
fi

# ---- device -----------------------------------------------------------------
if [ "$DEVICE" = "auto" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    DEVICE=cuda
  else
    DEVICE=cpu
  fi
fi
args=(
  "--model-repository=$ROOT/model_repository"
  "--backend-directory=$TRITON_BACKEND_DIR"
  "--model-control-mode=none"
  "--http-address=$HOST" "--http-port=$HTTP_PORT"
  "--grpc-address=$HOST" "--grpc-port=$GRPC_PORT"
  "--metrics-address=$HOST" "--metrics-port=$METRICS_PORT"
  "--allow-metrics=true"
)
case "$DEVICE" in
  cuda)
    args+=("--model-config-name=gpu")
    [ -n "$GPUS" ] && export CUDA_VISIBLE_DEVICES="$GPUS"
    ;;
  cpu) ;;
  *) die "DEVICE=$DEVICE: expected cpu, cuda or auto" ;;
esac
[ -n "$DTYPE" ] && args+=("--backend-config=chatglm,dtype=$DTYPE")
is_int8 && args+=("--backend-config=chatglm,int8=true")
is_fp8 && args+=("--backend-config=chatglm,fp8=true")
[ -n "$KV_CACHE_DTYPE" ] && args+=("--backend-config=chatglm,kv_cache_dtype=$KV_CACHE_DTYPE")
[ "$W8A8" != "0" ] && args+=("--backend-config=chatglm,cuda_int8_w8a8_min_tokens=$W8A8")

# ---- tokenizer: without it, the decoder alone ---------------------------------
if [ ! -f "$CKPT/ice_text.model" ]; then
  say "warning: $CKPT has no ice_text.model: serving chatglm_decoder only (ids in, ids out);"
  say "warning: the text models chatglm, preprocessing and postprocessing are off"
  REPO="$BUILD/triton_repo_decoder_only"
  rm -rf "$REPO"
  mkdir -p "$REPO"
  cp -r "$ROOT/model_repository/chatglm_decoder" "$REPO/"
  args[0]="--model-repository=$REPO"
fi

export GLM_CHECKPOINT_DIR="$CKPT"
if [ -n "${TRITON_ARGS:-}" ]; then read -r -a extra <<<"$TRITON_ARGS"; args+=("${extra[@]}"); fi
say "checkpoint $CKPT, device $DEVICE${DTYPE:+, dtype $DTYPE}$(is_int8 && echo ', int8' || true)$(is_fp8 && echo ', fp8' || true)"
say "HTTP $HOST:$HTTP_PORT  gRPC $HOST:$GRPC_PORT  metrics $HOST:$METRICS_PORT"

# ---- the OpenAI-compatible API beside it ----------------------------------------
# Started in the background before the exec below: its parent, this shell ($$), then
# becomes tritonserver itself, and --parent-pid stops it when tritonserver exits.
OPENAI_PORT=${OPENAI_PORT:-9000}
OPENAI_HOST=${OPENAI_HOST:-$HOST}
OPENAI_WORKERS=${OPENAI_WORKERS:-1}
if [ "$OPENAI_PORT" = 0 ] || [ "$OPENAI_PORT" = off ]; then
  say "OpenAI-compatible API: off (OPENAI_PORT=$OPENAI_PORT)"
elif [ ! -f "$CKPT/ice_text.model" ]; then
  say "OpenAI-compatible API: off (no tokenizer in $CKPT)"
else
  upstream=$HOST
  case "$HOST" in 0.0.0.0 | :: | "") upstream=127.0.0.1 ;; esac
  oai=(--checkpoint "$CKPT" --triton-url "$upstream:$HTTP_PORT" --host "$OPENAI_HOST"
    --port "$OPENAI_PORT" --workers "$OPENAI_WORKERS" --parent-pid $$)
  if [ -n "${OPENAI_ARGS:-}" ]; then read -r -a more <<<"$OPENAI_ARGS"; oai+=("${more[@]}"); fi
  "$PY" -m glmserve.openai_api "${oai[@]}" &
  say "OpenAI-compatible API http://$OPENAI_HOST:$OPENAI_PORT/v1 (pid $!, API key $([ -n "${GLM_OPENAI_API_KEY:-}" ] && echo required || echo off))"
fi
exec "$TRITONSERVER" "${args[@]}"

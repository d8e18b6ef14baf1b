#!/usr/bin/env bash
# GPU check of the Triton path at full size, ChatGLM-6B's shapes with random
# fp16 weights (--backend-config=chatglm,random_weights=true), KIND_GPU via
# --model-config-name=gpu:
#  1. chatglm_decoder alone (ids in, ids out): one streamed request, then tokens/s
#     of concurrent /generate requests;
#  2. the whole ensemble (Python pre/postprocessing included, their gpu variants)
#     with the tiny demo tokenizer (its special ids written into the config), text
#     in: tokens/s of concurrent /generate (one response each) and of concurrent
#     /generate_stream (one response per token through postprocessing).
#     (Part 2 has not been run yet: the shared GPU budget went to the engine
#     work; part 1 gave the figures in backend_src/triton/README.md.)
# Run on the GPU machine after scripts/gpu_triton_e2e.sh (same call), which
# leaves the Python venv ($E2E_VENV) and the CUDA build ($BUILD) behind.
#   OUT=... bash scripts/triton_gpu_fullsize.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/triton_fullsize}
export VENV=${E2E_VENV:-/tmp/e2e-venv}
export BUILD=${BUILD:-build/e2e}
TOKENS=${TOKENS:-128}
CONC=${CONC:-1 16 64 128}
mkdir -p "$OUT"
log() { echo "fullsize: $*" | tee -a "$OUT/fullsize.log"; }

CK="$OUT/chatglm-6b-random"
mkdir -p "$CK"
cat >"$CK/config.json" <<'JSON'
{"vocab_size": 130528, "hidden_size": 4096, "num_attention_heads": 32, "num_layers": 28,
 "inner_hidden_size": 16384, "layernorm_epsilon": 1e-05, "max_sequence_length": 2048,
 "position_encoding_2d": true, "bos_token_id": 130004, "eos_token_id": 130005,
 "mask_token_id": 130000, "gmask_token_id": 130001, "pad_token_id": 3,
 "torch_dtype": "float16", "glmserve_format": 1}
JSON
REPO="$OUT/repo"
rm -rf "$REPO" && mkdir -p "$REPO" && cp -r model_repository/chatglm_decoder "$REPO/"

# shellcheck source=scripts/triton_env.sh
source scripts/triton_env.sh || exit 1
GLM_CHECKPOINT_DIR="$CK" "$TRITONSERVER" --model-repository="$REPO" \
  --backend-directory="$TRITON_BACKEND_DIR" --model-config-name=gpu \
  --backend-config=chatglm,random_weights=true --http-address=127.0.0.1 \
  --grpc-address=127.0.0.1 --http-port=18100 --grpc-port=18101 --metrics-port=18102 \
  >"$OUT/server.log" 2>&1 &
spid=$!
for _ in $(seq 300); do curl -sf localhost:18100/v2/health/ready >/dev/null && break; sleep 1; done
if ! curl -sf localhost:18100/v2/health/ready >/dev/null; then
  log "server not ready"; tail -30 "$OUT/server.log"; kill -9 $spid; exit 1
fi
grep -E "chatglm_decoder instance" "$OUT/server.log" | tee -a "$OUT/fullsize.log"
IDS="[$(seq -s, 100 120),130001,130004]"
curl -sN -X POST localhost:18100/v2/models/chatglm_decoder/generate_stream \
  -d "{\"input_ids\": $IDS, \"max_tokens\": 32, \"stream\": true}" >"$OUT/stream.txt"
log "generate_stream: $(grep -c '^data:' "$OUT/stream.txt") events"
body="{\"input_ids\": $IDS, \"max_tokens\": $TOKENS, \"ignore_eos\": true}"
for c in $CONC; do
  t0=$(date +%s.%N)
  seq "$c" | xargs -P "$c" -I{} curl -s -o /dev/null -X POST \
    localhost:18100/v2/models/chatglm_decoder/generate -d "$body"
  t1=$(date +%s.%N)
  log "$(python3 -c "c=$c; t=$TOKENS; s=$t1-$t0; print(f'concurrency {c:4d}: {c*t} tokens in {s:.2f} s = {c*t/s:.0f} tokens/s')")"
done
curl -s localhost:18102/metrics | grep -E '^glm_(max_batch|kv_blocks|generated|requests_total)' \
  | tee -a "$OUT/fullsize.log"
kill -INT $spid; wait $spid; log "server exit code $?"

# ---- 2. the whole ensemble at full size -------------------------------------
CK2="$OUT/chatglm-6b-random-tinytok"
mkdir -p "$CK2"
cp models/chatglm-tiny/ice_text.model "$CK2/"
sed -e 's/"bos_token_id": 130004/"bos_token_id": 684/' -e 's/"eos_token_id": 130005/"eos_token_id": 685/' \
  -e 's/"mask_token_id": 130000/"mask_token_id": 680/' -e 's/"gmask_token_id": 130001/"gmask_token_id": 681/' \
  "$CK/config.json" >"$CK2/config.json"
GLM_CHECKPOINT_DIR="$CK2" "$TRITONSERVER" --model-repository="$ROOT/model_repository" \
  --backend-directory="$TRITON_BACKEND_DIR" --model-config-name=gpu \
  --backend-config=chatglm,random_weights=true --http-address=127.0.0.1 \
  --grpc-address=127.0.0.1 --http-port=18100 --grpc-port=18101 --metrics-port=18102 \
  >"$OUT/server_ensemble.log" 2>&1 &
spid=$!
for _ in $(seq 300); do curl -sf localhost:18100/v2/health/ready >/dev/null && break; sleep 1; done
if ! curl -sf localhost:18100/v2/health/ready >/dev/null; then
  log "ensemble server not ready"; tail -30 "$OUT/server_ensemble.log"; kill -9 $spid; exit 1
fi
text='hello world, this is a test prompt for the full size model'
for mode in generate generate_stream; do
  stream=false; [ $mode = generate_stream ] && stream=true
  body="{\"text_input\": \"$text\", \"max_tokens\": $TOKENS, \"ignore_eos\": true, \"stream\": $stream}"
  for c in $CONC; do
    t0=$(date +%s.%N)
    seq "$c" | xargs -P "$c" -I{} sh -c "curl -s -X POST localhost:18100/v2/models/chatglm/$mode -d '$body' | grep -c '^data:' >/dev/null"
    t1=$(date +%s.%N)
    log "$(python3 -c "c=$c; t=$TOKENS; s=$t1-$t0; print(f'ensemble $mode concurrency {c:4d}: {c*t} tokens in {s:.2f} s = {c*t/s:.0f} tokens/s')")"
  done
done
curl -s -X POST localhost:18100/v2/models/chatglm/generate_stream \
  -d "{\"text_input\": \"$text\", \"max_tokens\": 16, \"stream\": true}" | grep -c '^data:' \
  | sed 's/^/ensemble stream events for 16 tokens: /' | tee -a "$OUT/fullsize.log"
curl -s localhost:18102/metrics | grep -E '^glm_(max_batch|kv_blocks_used|requests_total)' \
  | tee -a "$OUT/fullsize.log"
kill -INT $spid; wait $spid; log "ensemble server exit code $?"

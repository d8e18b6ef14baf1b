#!/usr/bin/env bash
# Issue 5 on the GPU machine: `make serve MODEL=... INT8=1` serving the int8 engine through
# tritonserver, checked with one request (one device call, about a minute):
#   1. the venv and the backend build: scripts/gpu_soak.sh setup (carry
#      .gpucarry/tritonserver.tar.xz and .soakcarry);
#   2. a config-only ChatGLM-6B checkpoint (glmserve.bench.REAL_CONFIG, random weights);
#   3. scripts/serve.sh with DEVICE=cuda INT8=1 (the engine quantizes the weights at load);
#   4. one streamed and one plain generate on chatglm_decoder; the server log must say int8
#      and every answer must carry exactly max_tokens ids. Exit 0 = all held.
# Environment: PORT (18320: HTTP; gRPC +1, metrics +2), VENV (/tmp/sv), BUILD (build/e2e), OUT,
# DEVICE (cuda), CK_CONFIG (a config.json instead of ChatGLM-6B's). CPU dry run:
#   DEVICE=cpu VENV=.venv BUILD=build CK_CONFIG=models/chatglm-tiny/config.json bash scripts/gpu_serve_int8.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18320}
DEVICE=${DEVICE:-cuda}
export DEVICE
VENV=${VENV:-/tmp/sv}
BUILD=${BUILD:-build/e2e}
OUT=${OUT:-/tmp/gpu_serve_int8}
W=/tmp/gpu_serve_int8_work
mkdir -p "$OUT" "$W"
log() { echo "gpu_serve_int8: $*"; }
VENV=$VENV BUILD=$BUILD bash scripts/gpu_soak.sh setup || { log "setup failed"; exit 1; }
CK="$W/ck"
"$VENV/bin/python" -m glmserve.config_only "$CK" ${CK_CONFIG:+--config "$CK_CONFIG"} || exit 1
DEVICE=$DEVICE INT8=1 MODEL="$CK" VENV="$VENV" BUILD="$BUILD" HTTP_PORT=$PORT GRPC_PORT=$((PORT + 1)) \
  METRICS_PORT=$((PORT + 2)) TRITON_ARGS="--backend-config=chatglm,random_weights=true" \
  bash scripts/serve.sh >"$W/server.log" 2>&1 &
SPID=$!
trap 'kill -TERM $SPID 2>/dev/null; wait $SPID 2>/dev/null' EXIT
URL=127.0.0.1:$PORT
for _ in $(seq 600); do
  curl -sf "$URL/v2/models/chatglm_decoder/ready" >/dev/null && break
  kill -0 $SPID 2>/dev/null || break
  sleep 0.5
done
grep -E "serve:|chatglm_decoder instance" "$W/server.log" | sed 's/^.*\] "//; s/"$//' | tee "$OUT/server_lines.txt"
curl -sf "$URL/v2/models/chatglm_decoder/ready" >/dev/null || { log "server not ready"; tail -30 "$W/server.log"; exit 1; }
status=0
grep -q "int8" "$OUT/server_lines.txt" || { log "the server log does not say int8"; status=1; }
IDS=$("$VENV/bin/python" -c "import json; c=json.load(open('$CK/config.json')); print(list(range(100, 116)) + [c['gmask_token_id'], c['bos_token_id']])")
curl -s -X POST "$URL/v2/models/chatglm_decoder/generate" \
  -d "{\"input_ids\": $IDS, \"max_tokens\": 32, \"ignore_eos\": true}" >"$OUT/generate.json"
curl -sN -X POST "$URL/v2/models/chatglm_decoder/generate_stream" \
  -d "{\"input_ids\": $IDS, \"max_tokens\": 32, \"ignore_eos\": true, \"stream\": true}" >"$OUT/generate_stream.txt"
"$VENV/bin/python" - "$OUT" <<'PYEOF' || status=1
import json, sys
out = sys.argv[1]
plain = json.load(open(f"{out}/generate.json"))
ids = plain["output_ids"]
ids = ids if isinstance(ids, list) else [ids]
events = [json.loads(l[5:]) for l in open(f"{out}/generate_stream.txt") if l.startswith("data:")]
streamed = []
for e in events:
    v = e["output_ids"]
    streamed += v if isinstance(v, list) else [v]
print(f"gpu_serve_int8: generate returned {len(ids)} ids; generate_stream {len(events)} events, {len(streamed)} ids; "
      f"same ids: {ids == streamed}; first ids {ids[:8]}")
sys.exit(0 if len(ids) == 32 and streamed == ids else 1)
PYEOF
curl -s "127.0.0.1:$((PORT + 2))/metrics" | grep -E '^glm_(generated_tokens_total|requests_total|kv_blocks_total)' \
  | tee "$OUT/metrics.txt"
log "exit $status"
exit $status

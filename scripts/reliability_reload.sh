#!/usr/bin/env bash
# Reload loop (issue 8): tritonserver in explicit model-control mode serving chatglm_decoder
# alone; CYCLES times: unload, load, one request; after each cycle the server's host RSS and
# thread count (/proc/<pid>/status) and, when nvidia-smi is there, the GPU memory in use.
# Prints the series (CSV in $OUT/reload.csv) and exits 1 when RSS or GPU memory grew beyond
# the bounds between cycle 2 and the end.
#
#   bash scripts/reliability_reload.sh                                  # CPU, tiny model
#   DEVICE=cuda RANDOM_WEIGHTS=1 MODEL=build/soak-6b bash scripts/reliability_reload.sh
#
# Environment: MODEL (converted checkpoint dir; default models/chatglm-tiny), DEVICE (cpu|cuda),
# RANDOM_WEIGHTS=1 (random weights of MODEL's config.json: no weights file needed), CYCLES (20),
# KV_BLOCKS (256), RSS_BOUND_MB (64), GPU_BOUND_MB (256), PORT (18000), OUT, BUILD, VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODEL=$(realpath -m "${MODEL:-models/chatglm-tiny}")
DEVICE=${DEVICE:-cpu}
CYCLES=${CYCLES:-20}
KV_BLOCKS=${KV_BLOCKS:-256}
RSS_BOUND_MB=${RSS_BOUND_MB:-64}
GPU_BOUND_MB=${GPU_BOUND_MB:-256}
PORT=${PORT:-18000}
OUT=${OUT:-$ROOT/build/reliability_reload}
mkdir -p "$OUT"
# shellcheck source=scripts/triton_env.sh
source scripts/triton_env.sh
PY="$VENV/bin/python"

REPO="$OUT/repo"
rm -rf "$REPO"
mkdir -p "$REPO"
cp -r model_repository/chatglm_decoder "$REPO/"
args=("--model-repository=$REPO" "--backend-directory=$TRITON_BACKEND_DIR"
  "--model-control-mode=explicit" "--load-model=chatglm_decoder"
  "--http-address=127.0.0.1" "--http-port=$PORT"
  "--grpc-address=127.0.0.1" "--grpc-port=$((PORT + 1))"
  "--metrics-address=127.0.0.1" "--metrics-port=$((PORT + 2))"
  "--backend-config=chatglm,num_kv_blocks=$KV_BLOCKS")
[ "$DEVICE" = "cuda" ] && args+=("--model-config-name=gpu")
[ "${RANDOM_WEIGHTS:-0}" = "1" ] && args+=("--backend-config=chatglm,random_weights=true")
export GLM_CHECKPOINT_DIR="$MODEL"

"$TRITONSERVER" "${args[@]}" >"$OUT/tritonserver.log" 2>&1 &
PID=$!
cleanup() { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap cleanup EXIT
URL="http://127.0.0.1:$PORT"
ready() { curl -sf "$URL/v2/models/chatglm_decoder/ready" >/dev/null; }
wait_for() {  # predicate-command, seconds
  for _ in $(seq $(($2 * 10))); do
    if "$1"; then return 0; fi
    kill -0 "$PID" 2>/dev/null || { tail -20 "$OUT/tritonserver.log"; exit 1; }
    sleep 0.1
  done
  return 1
}
not_ready() { ! ready; }
wait_for ready 600 || { echo "reload: server not ready" >&2; exit 1; }

# A prompt of the served model: 3 plain ids + [gMASK] <sop>.
BODY=$("$PY" -c 'import json,sys; c=json.load(open(sys.argv[1]+"/config.json"));
print(json.dumps({"input_ids":[5,6,7,c["gmask_token_id"],c["bos_token_id"]],"max_tokens":8,"ignore_eos":True}))' "$MODEL")
gpu_mib() { command -v nvidia-smi >/dev/null 2>&1 &&
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1 || echo ""; }
field() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$PID/status"; }

echo "cycle,rss_kb,threads,gpu_mib" >"$OUT/reload.csv"
echo "0,$(field VmRSS),$(field Threads),$(gpu_mib)" >>"$OUT/reload.csv"
for i in $(seq "$CYCLES"); do
  curl -sf -X POST "$URL/v2/repository/models/chatglm_decoder/unload" >/dev/null
  wait_for not_ready 120 || { echo "reload: unload $i did not finish" >&2; exit 1; }
  curl -sf -X POST "$URL/v2/repository/models/chatglm_decoder/load" >/dev/null
  wait_for ready 600 || { echo "reload: load $i did not finish" >&2; exit 1; }
  out=$(curl -sf -X POST "$URL/v2/models/chatglm_decoder/generate" -d "$BODY") ||
    { echo "reload: request after load $i failed" >&2; exit 1; }
  echo "$out" | grep -q '"output_ids"' || { echo "reload: bad answer: $out" >&2; exit 1; }
  echo "$i,$(field VmRSS),$(field Threads),$(gpu_mib)" >>"$OUT/reload.csv"
done
cat "$OUT/reload.csv"
"$PY" - "$OUT/reload.csv" "$RSS_BOUND_MB" "$GPU_BOUND_MB" <<'PYEOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rss_bound, gpu_bound = int(sys.argv[2]) * 1024, int(sys.argv[3])
tail = rows[2:] if len(rows) > 4 else rows
rss = [int(r["rss_kb"]) for r in tail]
msg = [f"reload: {len(rows) - 1} cycles, RSS {rss[0] // 1024} -> max {max(rss) // 1024} MiB"]
ok = max(rss) - rss[0] <= rss_bound
if tail[0]["gpu_mib"]:
    gpu = [int(r["gpu_mib"]) for r in tail]
    msg.append(f"GPU memory {gpu[0]} -> max {max(gpu)} MiB")
    ok = ok and max(gpu) - gpu[0] <= gpu_bound
print(", ".join(msg) + ("" if ok else "  GROWTH BEYOND BOUND"))
sys.exit(0 if ok else 1)
PYEOF

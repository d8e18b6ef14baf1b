#!/usr/bin/env bash
# Serving benchmark through Triton on the GPU machine, in ONE device call (issues 7 and 8):
#   1. the Python-backend venv (system python3 + numpy/sentencepiece wheels + pytriton's
#      tritonserver from $CARRY, as scripts/gpu_triton_e2e.sh lays it out) and the backend
#      built with CUDA;
#   2. tritonserver serving chatglm_decoder alone, ChatGLM-6B's config with random fp16
#      weights (--backend-config=chatglm,random_weights=true, --model-config-name=gpu:
#      KIND_GPU, KV cache = 0.9 of free GPU memory, max_running_seqs 256), in explicit
#      model-control mode so that the same server can be reloaded at the end;
#   3. load_tests/http_bench.py (stdlib HTTP/SSE client, several processes):
#      sweep at concurrency 1, 8, 64, 256 (seed workload), in-flight vs static batching
#      (Poisson arrivals, mixed lengths, cap 64), a soak at 256 for the time that is left,
#      then unload/load cycles with host RSS and GPU memory per cycle while time remains.
# Everything stops by $BUDGET_S seconds after the start (default 560). Results: $OUT.
#   OUT=/tmp/gs CARRY=.gpucarry bash scripts/gpu_serving.sh
# Short run, reload first (checks the per-load RSS), no sweep:
#   RELOAD_FIRST=1 SWEEP=none BUDGET_S=420 OUT=/tmp/gs bash scripts/gpu_serving.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-560}
OUT=${OUT:-/tmp/gpu_serving}
CARRY=${CARRY:-.gpucarry}
V=${E2E_VENV:-/tmp/e2e-venv}
W=${WORK:-/tmp/gpu_serving_work}
PORT=${PORT:-18200}
SWEEP=${SWEEP:-1:20 8:20 64:25 256:30}   # concurrency:seconds
IVS_S=${IVS_S:-45}
IVS_RATE=${IVS_RATE:-12}   # the 2026-11-26 H200 run used 50: both modes saturated (docs/serving_gpu.md)
IVS_CONC=${IVS_CONC:-64}
SOAK_MAX=${SOAK_MAX:-240}
CYCLES=${CYCLES:-20}
RELOAD_FIRST=${RELOAD_FIRST:-0}   # 1: the reload cycles right after the warm-up, before the benchmarks
SOAK_RESERVE=${SOAK_RESERVE:-}    # seconds kept after the soak (default 100, or 20 with RELOAD_FIRST=1)
[ -n "$SOAK_RESERVE" ] || { [ "$RELOAD_FIRST" = 1 ] && SOAK_RESERVE=20 || SOAK_RESERVE=100; }
# SWEEP=none skips the sweep. Each phase's results are copied to $OUT as soon as it ends.
mkdir -p "$OUT" "$W"
log() { echo "gpu_serving [$(( $(date +%s) - T0 ))s]: $*" | tee -a "$W/run.log"; }
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
PYB=python3   # the machine's python3: runs the client (stdlib; matplotlib if present)

# ---- 1. venv + build (same layout as scripts/gpu_triton_e2e.sh) ----------------
if [ ! -x "$V/bin/python" ]; then
  /usr/bin/python3 -m venv --without-pip "$V" || { log "venv failed"; exit 1; }
  SITE=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  tar xf "$(ls "$CARRY"/tritonserver.tar* | head -1)" -C "$SITE" || { log "untar failed"; exit 1; }
  for w in "$CARRY"/*.whl; do "$V/bin/python" -m zipfile -e "$w" "$SITE" || exit 1; done
  echo "$ROOT" >"$SITE/glmserve-repo.pth"
fi
log "venv ready"
BUILD=${BUILD:-build/e2e}
if [ ! -f "$BUILD/backends/chatglm/libtriton_chatglm.so" ]; then
  cmake -S backend_src -B "$BUILD/cmake" -DCMAKE_BUILD_TYPE=Release \
    -DGLM_PYMODULE_OUT="$ROOT/$BUILD/pymod" -DGLM_BACKEND_OUT="$ROOT/$BUILD/backends/chatglm" \
    >"$W/cmake.log" 2>&1 || { tail -30 "$W/cmake.log"; exit 1; }
  cmake --build "$BUILD/cmake" -j "$(nproc)" --target triton_chatglm >"$W/build.log" 2>&1 \
    || { grep -E "error" "$W/build.log" | head -30; exit 1; }
  log "backend built"
fi
export VENV=$V BUILD
# shellcheck source=scripts/triton_env.sh
source scripts/triton_env.sh || exit 1

# ---- 2. the server ------------------------------------------------------------
CK="$W/chatglm-6b-random"
mkdir -p "$CK"
CFGNAME=${CFGNAME:-gpu}   # CPU dry run: CFGNAME=config CK_CONFIG=models/chatglm-tiny/config.json
if [ -n "${CK_CONFIG:-}" ]; then cp "$CK_CONFIG" "$CK/config.json"; else
cat >"$CK/config.json" <<'JSON'
{"vocab_size": 130528, "hidden_size": 4096, "num_attention_heads": 32, "num_layers": 28,
 "inner_hidden_size": 16384, "layernorm_epsilon": 1e-05, "max_sequence_length": 2048,
 "position_encoding_2d": true, "bos_token_id": 130004, "eos_token_id": 130005,
 "mask_token_id": 130000, "gmask_token_id": 130001, "pad_token_id": 3,
 "torch_dtype": "float16", "glmserve_format": 1}
JSON
fi
REPO="$W/repo"
rm -rf "$REPO" && mkdir -p "$REPO" && cp -r model_repository/chatglm_decoder "$REPO/"
URL=127.0.0.1:$PORT
ready() { curl -sf "$URL/v2/models/chatglm_decoder/ready" >/dev/null; }
t_load=$(date +%s.%N)
GLM_CHECKPOINT_DIR="$CK" "$TRITONSERVER" --model-repository="$REPO" \
  --backend-directory="$TRITON_BACKEND_DIR" --model-config-name="$CFGNAME" \
  --backend-config=chatglm,random_weights=true --model-control-mode=explicit \
  --load-model=chatglm_decoder --http-address=127.0.0.1 --grpc-address=127.0.0.1 \
  --metrics-address=127.0.0.1 --http-port=$PORT --grpc-port=$((PORT + 1)) \
  --metrics-port=$((PORT + 2)) --exit-timeout-secs=15 >"$W/server.log" 2>&1 &
SPID=$!
for _ in $(seq 600); do ready && break; kill -0 $SPID 2>/dev/null || break; sleep 0.5; done
if ! ready; then log "server not ready"; tail -30 "$W/server.log"; kill -9 $SPID; exit 1; fi
log "server ready (pid $SPID), first load $(python3 -c "import time; print(f'{time.time()-$t_load:.1f}')") s"
grep -E "chatglm_decoder instance|KV|kv" "$W/server.log" | head -5 | tee -a "$W/run.log"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>&1 | tee -a "$W/run.log"
IDS=$(python3 -c "import json; c=json.load(open('$CK/config.json')); print(list(range(100, 116)) + [c['gmask_token_id'], c['bos_token_id']])")
curl -sN -X POST "$URL/v2/models/chatglm_decoder/generate_stream" \
  -d "{\"input_ids\": $IDS, \"max_tokens\": 150, \"ignore_eos\": true, \"stream\": true}" >"$W/warm.txt"
log "warm-up stream: $(grep -c '^data:' "$W/warm.txt") events"
HB=("$PYB" load_tests/http_bench.py --url "$URL" --config "$CK/config.json" --out "$W/b" --pause 2)

# ---- reload cycles (a function: run first or last, see RELOAD_FIRST) --------------
reload_cycles() {
  field() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$SPID/status"; }
  gpu() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1; }
  echo "cycle,unload_s,load_s,rss_kb,threads,gpu_mib" >"$W/reload.csv"
  echo "0,,,$(field VmRSS),$(field Threads),$(gpu)" >>"$W/reload.csv"
  BODY="{\"input_ids\": $IDS, \"max_tokens\": 8, \"ignore_eos\": true}"
  last=30
  for i in $(seq "$CYCLES"); do
    [ "$(left)" -lt $(( last * 3 / 2 + 10 )) ] && { log "reload: stopped after $((i - 1)) cycles (time)"; break; }
    a=$(date +%s.%N)
    curl -sf -X POST "$URL/v2/repository/models/chatglm_decoder/unload" >/dev/null
    for _ in $(seq 600); do ready || break; sleep 0.1; done
    b=$(date +%s.%N)
    curl -sf -X POST "$URL/v2/repository/models/chatglm_decoder/load" >/dev/null || { log "load $i failed"; break; }
    for _ in $(seq 1200); do ready && break; sleep 0.1; done
    c=$(date +%s.%N)
    curl -sf -X POST "$URL/v2/models/chatglm_decoder/generate" -d "$BODY" | grep -q output_ids \
      || log "request after load $i failed"
    row=$(python3 -c "print(f'{$b-$a:.2f},{$c-$b:.2f}')")
    last=$(python3 -c "print(int($c-$a)+1)")
    echo "$i,$row,$(field VmRSS),$(field Threads),$(gpu)" >>"$W/reload.csv"
  done
  cat "$W/reload.csv" | tee -a "$W/run.log"
  cp "$W/reload.csv" "$OUT/"
}
[ "$RELOAD_FIRST" = 1 ] && reload_cycles

# ---- 3. benchmarks ------------------------------------------------------------
[ "$SWEEP" = none ] && SWEEP=""
for cs in $SWEEP; do
  c=${cs%%:*}; d=${cs##*:}
  "${HB[@]}" sweep --conc "$c" -d "$d" --name "sweep_c$c" 2>&1 | grep -E "^C=|Error|error" | tee -a "$W/run.log"
done
"${HB[@]}" inflight-vs-static --conc "$IVS_CONC" --rate "$IVS_RATE" -d "$IVS_S" 2>&1 \
  | grep -vE "^\|" | tee -a "$W/run.log"
cp "$W/b/inflight_vs_static.json" "$OUT/" 2>/dev/null
soak=$(( $(left) - SOAK_RESERVE )); [ $soak -gt "$SOAK_MAX" ] && soak=$SOAK_MAX
if [ $soak -ge 30 ]; then
  log "soak at 256 for $soak s"
  "${HB[@]}" soak --conc 256 -d "$soak" --pid $SPID 2>&1 | grep -E "^soak|^C=" | tee -a "$W/run.log"
  cp "$W/b/soak.json" "$OUT/" 2>/dev/null
else
  log "no time left for the soak"
fi
curl -s "127.0.0.1:$((PORT + 2))/metrics" | grep -E '^glm_(max_batch|kv_blocks|requests_total)' \
  | tee -a "$W/run.log"

# ---- 4. reload cycles (unless RELOAD_FIRST=1: done before the benchmarks) ----------
[ "$RELOAD_FIRST" = 1 ] || reload_cycles
kill -INT $SPID; wait $SPID; log "server exit code $?"

# ---- 5. collect -------------------------------------------------------------------
"$PYB" - "$W/b" <<'PY' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
b = Path(sys.argv[1])
print("| concurrency | tokens/s | whole-run tok/s | TTFT p50/p99 ms | ITL p50/p99 ms | req | fail | client cpu max |")
for f in sorted(b.glob("sweep_c*.json"), key=lambda p: int(p.stem[7:])):
    s = json.loads(f.read_text())["rows"][0]
    print(f"| {s['concurrency']} | {s['tokens_per_s']:.0f} | {s['tokens_per_s_whole']:.0f} | "
          f"{s['ttft_ms_p50']:.1f}/{s['ttft_ms_p99']:.1f} | {s['itl_ms_p50']:.2f}/{s['itl_ms_p99']:.2f} | "
          f"{s['requests']} | {s['failures']} | {s['client_cpu_max_frac']} |")
f = b / "inflight_vs_static.json"
if f.exists():
    r = json.loads(f.read_text())
    for m in ("inflight", "static"):
        s = r[m]
        print(f"{m}: {s['tokens_per_s']:.0f} tok/s, TTFT p99 {s['ttft_ms_p99']} ms, fail {s['failures']}")
    print("ratio", r["throughput_ratio"])
PY
cp "$W/run.log" "$OUT/"
tail -200 "$W/server.log" >"$OUT/server_tail.log"
tar czf "$OUT/all.tar.gz" -C "$W" b run.log reload.csv 2>/dev/null
ls -la "$OUT"

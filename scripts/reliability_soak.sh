#!/usr/bin/env bash
# Soak (issue 8): `make serve` with random weights, Locust for DURATION at USERS users, the
# server sampled every SAMPLE_S seconds (host RSS and threads from /proc, GPU memory from
# nvidia-smi, generated tokens, KV blocks and active requests from the metrics port).
# Prints failures, RSS / GPU memory at the start (after the first minute) and at the end, and
# tokens/s per minute; exits 1 on any failed request.
#
# On the GPU machine (10 minutes, 256 users, ChatGLM-6B's shapes, random fp16 weights):
#   DEVICE=cuda USERS=256 DURATION=10m bash scripts/reliability_soak.sh
# The ensemble path through `make load-test` instead (text in/out; random weights of the tiny
# demo model, whose tokenizer matches):
#   MODE=ensemble DEVICE=cuda USERS=256 DURATION=10m bash scripts/reliability_soak.sh
#
# Environment: MODE (decoder | ensemble), DEVICE (cpu | cuda), USERS (256), SPAWN_RATE (32),
# DURATION (10m), SAMPLE_S (10), MODEL (decoder mode: a config-only checkpoint made here from
# glmserve.bench.REAL_CONFIG; ensemble mode: models/chatglm-tiny), PORT (base port, 8000),
# OUT (build/reliability_soak/<UTC time>), BUILD, VENV (needs tritonclient, locust and
# nvidia-pytriton: `make setup`'s venv), LOCUST (the Locust launcher, $VENV/bin/locust),
# PYTHON (the Python of the checkpoint and summary steps, $VENV/bin/python).
# On the GPU machine, in two device calls (setup, detached soak, collection): scripts/gpu_soak.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${MODE:-decoder}
DEVICE=${DEVICE:-cuda}
USERS=${USERS:-256}
SPAWN_RATE=${SPAWN_RATE:-32}
DURATION=${DURATION:-10m}
SAMPLE_S=${SAMPLE_S:-10}
PORT=${PORT:-8000}
VENV=${VENV:-.venv}
BUILD=${BUILD:-build}
OUT=${OUT:-$ROOT/build/reliability_soak/$(date -u +%Y%m%dT%H%M%SZ)}
PY=${PYTHON:-$VENV/bin/python}
LOCUST=${LOCUST:-$VENV/bin/locust}
mkdir -p "$OUT"

if [ "$MODE" = "decoder" ]; then
  MODEL=${MODEL:-$BUILD/soak-6b}
  if [ ! -f "$MODEL/config.json" ]; then
    # ChatGLM-6B's config, no tokenizer (serve.sh then serves chatglm_decoder alone) and a
    # placeholder weights file (random_weights never reads it; serve.sh checks it exists).
    "$PY" -m glmserve.config_only "$MODEL"
  fi
else
  MODEL=${MODEL:-models/chatglm-tiny}
fi

HTTP_PORT=$PORT GRPC_PORT=$((PORT + 1)) METRICS_PORT=$((PORT + 2)) MODEL="$MODEL" DEVICE="$DEVICE" \
  BUILD="$BUILD" VENV="$VENV" TRITON_ARGS="--backend-config=chatglm,random_weights=true" \
  bash scripts/serve.sh >"$OUT/tritonserver.log" 2>&1 &
PID=$!  # serve.sh execs tritonserver: this is the server's pid
SAMPLER=""
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
  kill -TERM "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1200); do
  curl -sf "127.0.0.1:$PORT/v2/health/ready" >/dev/null && break
  kill -0 "$PID" 2>/dev/null || { tail -30 "$OUT/tritonserver.log"; exit 1; }
  sleep 0.5
done
curl -sf "127.0.0.1:$PORT/v2/health/ready" >/dev/null || { echo "soak: server not ready" >&2; exit 1; }

metric() {  # name -> sum over label sets
  curl -sf "127.0.0.1:$((PORT + 2))/metrics" |
    awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d", s }'
}
sample() {
  echo "t_s,rss_kb,threads,gpu_mib,tokens_total,kv_blocks_used,active_requests"
  local t0
  t0=$(date +%s)
  while kill -0 "$PID" 2>/dev/null; do
    gpu=""
    command -v nvidia-smi >/dev/null 2>&1 &&
      gpu=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    echo "$(($(date +%s) - t0)),$(awk '$1=="VmRSS:"{print $2}' /proc/$PID/status)," \
      "$(awk '$1=="Threads:"{print $2}' /proc/$PID/status),$gpu,$(metric glm_generated_tokens_total)," \
      "$(metric glm_kv_blocks_used),$(metric glm_active_requests)" | tr -d ' '
    sleep "$SAMPLE_S"
  done
}
sample >"$OUT/samples.csv" &
SAMPLER=$!

set +e
if [ "$MODE" = "decoder" ]; then
  "$LOCUST" -f load_tests/soak_decoder.py --headless --only-summary \
    -u "$USERS" -r "$SPAWN_RATE" -t "$DURATION" --host "127.0.0.1:$((PORT + 1))" \
    --ids-config "$MODEL/config.json" --csv "$OUT/locust" >"$OUT/locust.log" 2>&1
  rc=$?
else
  USERS=$USERS SPAWN_RATE=$SPAWN_RATE DURATION=$DURATION GRPC_PORT=$((PORT + 1)) \
    RESULTS="$OUT/load" VENV="$VENV" bash scripts/load_test.sh >"$OUT/locust.log" 2>&1
  rc=$?
fi
set -e
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=""
tail -5 "$OUT/locust.log"

"$PY" - "$OUT" "$SAMPLE_S" <<'PYEOF'
import csv, glob, sys
out, step = sys.argv[1], int(sys.argv[2])
rows = list(csv.DictReader(open(f"{out}/samples.csv")))
stats = glob.glob(f"{out}/locust_stats.csv") + glob.glob(f"{out}/load/locust_stats.csv")
fails = reqs = 0
if stats:
    for r in csv.DictReader(open(stats[0])):
        if r["Name"] == "Aggregated":
            fails, reqs = int(r["Failure Count"]), int(r["Request Count"])
if not rows:  # the server died before the first sample
    print(f"soak: requests {reqs}, failures {fails}; no samples")
    open(f"{out}/soak_summary.txt", "w").write(f"requests {reqs}, failures {fails}; no samples\n")
    sys.exit(0)
warm = [r for r in rows if int(r["t_s"]) >= 60] or rows
first, last = warm[0], warm[-1]
line = [f"requests {reqs}, failures {fails}",
        f"RSS {int(first['rss_kb']) // 1024} -> {int(last['rss_kb']) // 1024} MiB",
        f"threads {first['threads']} -> {last['threads']}"]
if first["gpu_mib"]:
    line.append(f"GPU memory {first['gpu_mib']} -> {last['gpu_mib']} MiB")
per_min = []
for a, b in zip(rows, rows[1:]):
    if int(b["t_s"]) // 60 > int(a["t_s"]) // 60 or b is rows[-1]:
        per_min.append(b)
tps = []
prev = rows[0]
for r in per_min:
    dt = int(r["t_s"]) - int(prev["t_s"])
    if dt > 0:
        tps.append((int(r["tokens_total"]) - int(prev["tokens_total"])) / dt)
    prev = r
line.append("tokens/s per minute " + ", ".join(f"{x:.0f}" for x in tps))
print("soak: " + "; ".join(line))
open(f"{out}/soak_summary.txt", "w").write("; ".join(line) + "\n")
PYEOF
echo "soak: samples in $OUT/samples.csv, Locust in $OUT"
exit $rc

#!/usr/bin/env bash
# GPU tasks: builds, checks, benchmarks and serving runs of the CUDA back-end on a machine
# with an NVIDIA GPU (docs/gpu_tasks.md has the full reference and the old script names).
#
#   bash scripts/gpu.sh TASK...          e.g.  bash scripts/gpu.sh kernels tests bench
#   bash scripts/gpu.sh help
#
# Engine tasks (run with $PYTHON, the machine's Python with torch and numpy):
#   build          the CUDA build: _engine, glm_cuda_kernel_test, glm_cuda_int8_test, triton_chatglm
#   kernels        glm_cuda_kernel_test (seed KERNEL_SEED)
#   tests          pytest -m gpu tests/gpu/test_cuda_*.py (PYTEST_K selects with -k)
#   bench          python -m glmserve.bench (BENCH_ARGS adds arguments)
#   bench-prev     the same benchmark of another source tree, PREV_SRC (a directory or a
#                  `git archive` .tar.gz; e.g. the commit before), built on its own: compare
#                  with bench in the same run
#   diag           glmserve.cuda_diag: tiny model, CUDA vs CPU engine (SANITIZE=1: under
#                  compute-sanitizer, tool SANITIZE_TOOL, default initcheck)
#   int8-kernels   glm_cuda_int8_test (seed KERNEL_SEED)
#   int8-kbench    glm_cuda_int8_test bench: one block's linear layers, fp16 vs each int8 kernel
#   int8-tests     pytest -m gpu tests/gpu/test_int8_cuda.py (PYTEST_K)
#   int8-bench     python -m glmserve.bench_int8 (INT8_BENCH_ARGS, default --int8-lm-head)
#   check          = kernels tests bench           int8 = int8-kernels int8-kbench int8-tests int8-bench
# Serving tasks (tritonserver from $VENV, the backend built with CUDA):
#   setup          the venv and the backend build only
#   triton-e2e     make serve's script on the tiny demo model: the whole ensemble, one streamed
#                  and one plain text request (their texts must agree)
#   fullsize       ChatGLM-6B's shapes, random fp16 weights: chatglm_decoder alone (tokens/s of
#                  concurrent requests), then the whole ensemble with the demo tokenizer
#   openai         the OpenAI-compatible API vs direct Triton gRPC, Locust at 256 streams each
#                  (ChatGLM-6B's shapes, random weights, the demo tokenizer)
#   serving        the serving benchmark: sweep, in-flight vs static batching, a soak and
#                  unload/load cycles on one server, within BUDGET_S seconds
#   serve-int8     make serve INT8=1 on ChatGLM-6B's shapes: the log says int8, generate ids =
#                  generate_stream ids (32 each)
#   serve-fp8      the same with FP8=1 KV_CACHE_DTYPE=fp8: the log names both
#   multi          one decoder instance per GPU: the sweep with GPUS=0, then GPUS=0,1
#   reload         unload/load cycles of chatglm_decoder; fails when RSS / GPU memory grow
#   soak           Locust for DURATION at USERS users against make serve, the server sampled
#   soak-start     the soak detached (it outlives this command); follows it for WAIT_S seconds
#   soak-finish    waits up to WAIT_S for a detached soak, collects its results (its exit code)
#   soak-status    one progress line of a detached soak       soak-stop   ends it
#
# Each task writes its logs to $OUT/<task>/ (OUT default /tmp/glm-gpu); tasks run in the
# order given, a failed build stops the run; the exit code is the last failed task's.
# Environment (defaults): PYTHON (python3), BUILD (build/gpu; CMake in $BUILD/cmake),
# GLM_CUDA_ARCHS (90a), GLM_WITH_CUDA (ON; OFF with DEVICE=cpu), GLM_CMAKE_ARGS, JOBS (nproc),
# NO_BUILD=1 (use the build as it is), VENV (/tmp/glm-venv; made from $OFFLINE_DIR when
# missing, see scripts/lib.sh), OFFLINE_DIR (.offline), SETUP (1 remakes the venv), DEVICE
# (cuda; cpu for dry runs of the serving tasks), WORK (/tmp/glm-gpu-work), GLM_GOLDEN_DIR,
# and each task's own knobs (docs/gpu_tasks.md).
# shellcheck disable=SC2317  # the task_* functions are called by name
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

OUT=$(glm_abspath "${OUT:-/tmp/glm-gpu}")
WORK=$(glm_abspath "${WORK:-/tmp/glm-gpu-work}")
BUILD=$(glm_abspath "${BUILD:-build/gpu}")
VENV=$(glm_abspath "${VENV:-/tmp/glm-venv}")
OFFLINE_DIR=$(glm_abspath "${OFFLINE_DIR:-.offline}")
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1
if [ -z "${GLM_GOLDEN_DIR:-}" ] && [ -f "$OFFLINE_DIR/glm_model.data" ]; then
  export GLM_GOLDEN_DIR=$OFFLINE_DIR
fi
KERNEL_TEST=$BUILD/cmake/engine/cuda/glm_cuda_kernel_test
INT8_TEST=$BUILD/cmake/engine/cuda/glm_cuda_int8_test

# The CMake targets each task needs (built once, before the tasks run).
targets_of() {
  case "$1" in
    build) echo _engine glm_cuda_kernel_test glm_cuda_int8_test triton_chatglm ;;
    kernels) echo glm_cuda_kernel_test ;;
    tests) echo _engine glm_cuda_kernel_test ;;
    bench | diag | int8-bench) echo _engine ;;
    int8-kernels | int8-kbench) echo glm_cuda_int8_test ;;
    int8-tests) echo _engine glm_cuda_int8_test ;;
    setup | triton-e2e | fullsize | openai | serving | serve-int8 | serve-fp8 | multi | reload | soak | soak-start) echo triton_chatglm ;;
    *) echo "" ;;
  esac
}

# Runs a command, its output also into a log; returns the command's exit code.
tee_run() {  # log, command...
  local log=$1
  shift
  "$@" 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}

# Makes or reuses the venv and checks it for what the task needs ($O/venv_check.txt).
need_venv() {  # need...
  glm_venv || exit 1
  glm_venv_check "$@" >"$O/venv_check.txt" 2>&1
  local rc=$?
  cat "$O/venv_check.txt"
  [ "$rc" -eq 0 ] || glm_die "the venv $VENV lacks modules (SETUP=1 remakes one made here)"
}

# ================================================================ engine tasks
task_build() { :; }  # the build ran before the tasks

# The GPU tests of one file, with PYTEST_K as -k; pytest.log.
gpu_pytest() {  # test file...
  tee_run "$O/pytest.log" "$PYTHON" -m pytest -m gpu -v -s -p no:cacheprovider "$@" ${PYTEST_K:+-k "$PYTEST_K"}
}

# A benchmark module with its arguments (a string, split on spaces); <md> and bench.log.
gpu_bench() {  # module, md file, arguments
  local args
  read -r -a args <<<"$3"
  tee_run "$O/bench.log" "$PYTHON" -m "$1" --out "$O/$2" "${args[@]}"
}

task_kernels() { tee_run "$O/kernel_test.log" "$KERNEL_TEST" "${KERNEL_SEED:-$RANDOM}"; }
task_tests() { GLM_CUDA_KERNEL_TEST=$KERNEL_TEST gpu_pytest tests/gpu/test_cuda_*.py; }
task_bench() { gpu_bench glmserve.bench bench.md "${BENCH_ARGS:-}"; }

# Another source tree's engine (PREV_SRC), built into $BUILD/prev, benchmarked as `bench`.
task_bench_prev() {
  [ -n "${PREV_SRC:-}" ] || glm_die "bench-prev needs PREV_SRC (a source directory or a .tar.gz)"
  local src=$PREV_SRC
  if [ -f "$src" ]; then
    src=$WORK/prev_src
    rm -rf "$src"
    mkdir -p "$src"
    tar xzf "$PREV_SRC" -C "$src" || glm_die "cannot unpack $PREV_SRC"
  fi
  ( cd "$src" && ROOT=$src BUILD=$BUILD/prev glm_build "$O" _engine ) || return 1
  ( cd "$src" && gpu_bench glmserve.bench bench.md "${BENCH_ARGS:-}" )
}
task_int8_kernels() { tee_run "$O/int8_test.log" "$INT8_TEST" "${KERNEL_SEED:-$RANDOM}"; }
task_int8_kbench() { tee_run "$O/int8_kbench.md" "$INT8_TEST" bench; }
task_int8_tests() { GLM_CUDA_INT8_TEST=$INT8_TEST gpu_pytest tests/gpu/test_int8_cuda.py; }
task_int8_bench() { gpu_bench glmserve.bench_int8 bench_int8.md "${INT8_BENCH_ARGS:---int8-lm-head}"; }

task_diag() {
  if [ "${SANITIZE:-0}" = 1 ]; then
    compute-sanitizer --tool "${SANITIZE_TOOL:-initcheck}" --print-limit 10 \
      "$PYTHON" -m glmserve.cuda_diag --small 2>&1 | tail -60 | tee "$O/diag.log"
    return "${PIPESTATUS[0]}"
  fi
  tee_run "$O/diag.log" "$PYTHON" -m glmserve.cuda_diag
}

# ================================================================ serving tasks
task_setup() {
  need_venv server
}

# The tiny demo model through make serve's script on the GPU: preprocessing -> chatglm_decoder
# -> postprocessing, one request over /generate_stream and one over /generate.
# Knobs: E2E_MODEL (models/chatglm-tiny), PORT (18000: HTTP; gRPC +1, metrics +2).
task_triton_e2e() {
  local port=${PORT:-18000} model=${E2E_MODEL:-models/chatglm-tiny}
  local log="$O/e2e.log"
  need_venv server ensemble
  cat "$O/venv_check.txt" >>"$log"
  [ -n "${E2E_MODEL:-}" ] || glm_demo_model || exit 1
  VENV=$VENV BUILD=$BUILD DEVICE=$DEVICE MODEL=$model HTTP_PORT=$port GRPC_PORT=$((port + 1)) \
    METRICS_PORT=$((port + 2)) bash scripts/serve.sh >"$O/server_tiny.log" 2>&1 &
  local spid=$! status=0
  trap '[ -z "${spid:-}" ] || glm_stop "$spid" TERM 30' EXIT
  local url="127.0.0.1:$port/v2/models/chatglm"
  if glm_wait_http "127.0.0.1:$port/v2/health/ready" "$spid" 120 1; then
    glm_log "server ready (device $DEVICE)" | tee -a "$log"
    local body='{"text_input": "你好，请介绍一下你自己。", "max_tokens": 48, "stream": true}'
    curl -sN -X POST "$url/generate_stream" -d "$body" >"$O/stream.txt"
    glm_log "generate_stream: $(grep -c '^data:' "$O/stream.txt") events" | tee -a "$log"
    head -c 1500 "$O/stream.txt" | tee -a "$log"
    echo | tee -a "$log"
    body='{"text_input": "你好，请介绍一下你自己。", "max_tokens": 48}'
    curl -s -X POST "$url/generate" -d "$body" | tee "$O/generate.json" | tee -a "$log"
    echo | tee -a "$log"
    "$VENV/bin/python" -m glmserve.http_checks same-text "$O/stream.txt" "$O/generate.json" |
      tee -a "$log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    glm_metrics $((port + 2)) '^glm_' | tee "$O/metrics_tiny.txt" | head -20 | tee -a "$log"
  else
    glm_log "server did not become ready" | tee -a "$log"
    tail -40 "$O/server_tiny.log"
    status=1
  fi
  glm_stop "$spid" INT 60
  glm_log "server exit code $?" | tee -a "$log"
  grep -iE "cuda|gpu|device" "$O/server_tiny.log" | head -10 | tee -a "$log"
  return "$status"
}

# For each concurrency C: C requests of <tokens> new tokens each POSTed at once, one line of
# tokens/s when all have answered.
rate_sweep() {  # label, url, body, tokens, concurrencies
  local c t0 t1
  for c in $5; do
    t0=$(date +%s.%N)
    seq "$c" | xargs -P "$c" -I{} curl -s -o /dev/null -X POST "$2" -d "$3"
    t1=$(date +%s.%N)
    glm_log "$(awk -v l="$1" -v c="$c" -v t="$4" -v a="$t0" -v b="$t1" \
      'BEGIN { s = b - a; printf "%sconcurrency %4d: %d tokens in %.2f s = %.0f tokens/s", l, c, c * t, s, c * t / s }')"
  done
}

# ChatGLM-6B's shapes, random fp16 weights, KIND_GPU (--model-config-name=gpu):
#  1. chatglm_decoder alone (ids in, ids out): one streamed request, then tokens/s of
#     concurrent /generate requests at each concurrency of CONC;
#  2. the whole ensemble (Python pre/postprocessing, their gpu variants) with the demo
#     model's tokenizer (its special ids written into the config), text in: tokens/s of
#     concurrent /generate (one response each) and /generate_stream (a response per token).
# Knobs: TOKENS (128), CONC ("1 16 64 128"), PORT (18100). CPU dry run: DEVICE=cpu
# CFGNAME=config CK_CONFIG=models/chatglm-tiny/config.json TOKENS=8 CONC="1 4".
task_fullsize() {
  local port=${PORT:-18100} tokens=${TOKENS:-128} conc=${CONC:-1 16 64 128}
  local log="$O/fullsize.log" url="127.0.0.1:${PORT:-18100}/v2/models"
  need_venv server ensemble
  glm_demo_model || exit 1
  local ck="$WORK/chatglm-6b-random" repo="$WORK/repo"
  "$VENV/bin/python" -m glmserve.config_only "$ck" ${CK_CONFIG:+--config "$CK_CONFIG"} || exit 1
  rm -rf "$repo" && mkdir -p "$repo" && cp -r model_repository/chatglm_decoder "$repo/"
  export VENV BUILD
  # shellcheck source=scripts/triton_env.sh
  source scripts/triton_env.sh || exit 1
  # shellcheck disable=SC2054  # --backend-config takes commas
  local srv=(--backend-directory="$TRITON_BACKEND_DIR" --model-config-name="${CFGNAME:-gpu}"
    --backend-config=chatglm,random_weights=true --http-address=127.0.0.1
    --grpc-address=127.0.0.1 --http-port="$port" --grpc-port=$((port + 1)) --metrics-port=$((port + 2)))
  GLM_CHECKPOINT_DIR="$ck" "$TRITONSERVER" --model-repository="$repo" "${srv[@]}" >"$O/server.log" 2>&1 &
  local spid=$!
  trap '[ -z "${spid:-}" ] || glm_stop "$spid" TERM 30' EXIT
  if ! glm_wait_http "127.0.0.1:$port/v2/health/ready" "$spid" 300 1; then
    glm_log "server not ready" | tee -a "$log"
    tail -30 "$O/server.log"
    glm_stop "$spid" KILL 5
    exit 1
  fi
  grep -E "chatglm_decoder instance" "$O/server.log" | tee -a "$log"
  local ids body
  ids=$(glm_prompt_ids "$ck/config.json" 100 21)
  curl -sN -X POST "$url/chatglm_decoder/generate_stream" \
    -d "{\"input_ids\": $ids, \"max_tokens\": 32, \"stream\": true}" >"$O/stream.txt"
  glm_log "generate_stream: $(grep -c '^data:' "$O/stream.txt") events" | tee -a "$log"
  body="{\"input_ids\": $ids, \"max_tokens\": $tokens, \"ignore_eos\": true}"
  rate_sweep "" "$url/chatglm_decoder/generate" "$body" "$tokens" "$conc" | tee -a "$log"
  glm_metrics $((port + 2)) '^glm_(max_batch|kv_blocks|generated|requests_total)' | tee -a "$log"
  glm_stop "$spid" INT 60
  glm_log "server exit code $?" | tee -a "$log"

  # ---- 2. the whole ensemble at full size
  local ck2="$WORK/chatglm-6b-random-tinytok"
  mkdir -p "$ck2"
  cp models/chatglm-tiny/ice_text.model "$ck2/"
  sed -e 's/"bos_token_id": 130004/"bos_token_id": 684/' -e 's/"eos_token_id": 130005/"eos_token_id": 685/' \
    -e 's/"mask_token_id": 130000/"mask_token_id": 680/' -e 's/"gmask_token_id": 130001/"gmask_token_id": 681/' \
    "$ck/config.json" >"$ck2/config.json"
  GLM_CHECKPOINT_DIR="$ck2" "$TRITONSERVER" --model-repository="$ROOT/model_repository" "${srv[@]}" \
    >"$O/server_ensemble.log" 2>&1 &
  spid=$!
  if ! glm_wait_http "127.0.0.1:$port/v2/health/ready" "$spid" 300 1; then
    glm_log "ensemble server not ready" | tee -a "$log"
    tail -30 "$O/server_ensemble.log"
    glm_stop "$spid" KILL 5
    exit 1
  fi
  local text='hello world, this is a test prompt for the full size model' mode stream
  for mode in generate generate_stream; do
    stream=false
    [ "$mode" = generate_stream ] && stream=true
    body="{\"text_input\": \"$text\", \"max_tokens\": $tokens, \"ignore_eos\": true, \"stream\": $stream}"
    rate_sweep "ensemble $mode " "$url/chatglm/$mode" "$body" "$tokens" "$conc" | tee -a "$log"
  done
  curl -s -X POST "$url/chatglm/generate_stream" \
    -d "{\"text_input\": \"$text\", \"max_tokens\": 16, \"stream\": true}" | grep -c '^data:' |
    sed 's/^/ensemble stream events for 16 tokens: /' | tee -a "$log"
  glm_metrics $((port + 2)) '^glm_(max_batch|kv_blocks_used|requests_total)' | tee -a "$log"
  glm_stop "$spid" INT 60
  glm_log "ensemble server exit code $?" | tee -a "$log"
}

# The OpenAI-compatible API against direct Triton gRPC (docs/benchmarks.md, "OpenAI-compatible
# API"): make serve's script on ChatGLM-6B's shapes with random fp16 weights and the demo
# tokenizer (its special ids written into the config), OPENAI_WORKERS (8) uvicorn workers;
# then Locust (seed workload: 150 tokens, greedy, ignore_eos) with OPENAI_USERS (256) gRPC
# users and as many OpenAI users in one run, then each path alone at OPENAI_USERS streams,
# each for DURATION (90s); LOCUST_PROCESSES (8). PORT 18400 (HTTP; gRPC +1, metrics +2),
# the OpenAI API on PORT+3. Results: $OUT/openai/{both,grpc,openai}/summary.md. Runs in
# OPENAI_RUNS ("openai grpc both": the runs with gRPC users last, since tritonserver 2.51 may
# crash when Locust cancels gRPC streams at the end of a run, README "Known limits"). CPU dry run: DEVICE=cpu VENV=.venv BUILD=build
# CK_CONFIG=models/chatglm-tiny/config.json OPENAI_USERS=4 DURATION=10s LOCUST_PROCESSES=1.
task_openai() {
  local users=${OPENAI_USERS:-256} duration=${DURATION:-90s} port=${PORT:-18400} run rc=0
  local py="$VENV/bin/python" ck="$WORK/chatglm-6b-random-tinytok"
  need_venv server ensemble clients openai
  glm_demo_model || exit 1
  "$py" -m glmserve.config_only "$ck" ${CK_CONFIG:+--config "$CK_CONFIG"} \
    --special-ids-from models/chatglm-tiny/config.json || exit 1
  cp models/chatglm-tiny/ice_text.model "$ck/"
  HTTP_PORT=$port GRPC_PORT=$((port + 1)) METRICS_PORT=$((port + 2)) OPENAI_PORT=$((port + 3)) \
    OPENAI_WORKERS=${OPENAI_WORKERS:-8} MODEL="$ck" DEVICE="$DEVICE" BUILD="$BUILD" VENV="$VENV" \
    TRITON_ARGS="--backend-config=chatglm,random_weights=true" \
    bash scripts/serve.sh >"$O/serve.log" 2>&1 &
  SPID=$! # serve.sh execs tritonserver; the OpenAI API exits with it
  trap 'glm_stop "$SPID" TERM 60' EXIT
  if ! glm_wait_http "127.0.0.1:$((port + 3))/health" "$SPID" 1200 0.5; then
    tail -30 "$O/serve.log"
    glm_die "server or OpenAI API not ready"
  fi
  grep -E "chatglm_decoder instance|OpenAI-compatible API" "$O/serve.log" | tee "$O/openai.log"
  for run in ${OPENAI_RUNS:-openai grpc both}; do
    local classes=ChatGLMUser n=$users
    case "$run" in
      both) classes="ChatGLMUser OpenAIUser" n=$((2 * users)) ;;
      openai) classes=OpenAIUser ;;
    esac
    glm_log "$run: $n users ($classes) for $duration" | tee -a "$O/openai.log"
    USERS=$n SPAWN_RATE=${SPAWN_RATE:-64} DURATION=$duration LOCUST_PROCESSES=${LOCUST_PROCESSES:-8} \
      LOCUST_CLASSES="$classes" GRPC_PORT=$((port + 1)) OPENAI_PORT=$((port + 3)) MODEL="$ck" \
      RESULTS="$O/$run" VENV="$VENV" bash scripts/load_test.sh >"$O/$run.log" 2>&1 || rc=$?
    tee -a "$O/openai.log" <"$O/$run/summary.md" 2>/dev/null || tail -20 "$O/$run.log"
  done
  glm_metrics $((port + 2)) '^glm_(max_batch|kv_blocks_used|requests_total)' | tee -a "$O/openai.log"
  return "$rc"
}

# The serving benchmark through Triton: chatglm_decoder alone, ChatGLM-6B's config with
# random fp16 weights (KIND_GPU, KV cache 0.9 of free GPU memory, max_running_seqs 256), in
# explicit model-control mode so that the same server can be reloaded at the end;
# load_tests/http_bench.py (stdlib HTTP/SSE client, several processes, run by $PYTHON):
# SWEEP ("concurrency:seconds ...", default "1:20 8:20 64:25 256:30"; none skips it),
# in-flight vs static batching (IVS_CONC 64, IVS_RATE 12 requests/s, IVS_S 45 s), a soak
# at 256 for the time that is left (at most SOAK_MAX 240 s, SOAK_RESERVE seconds kept),
# then CYCLES (20) unload/load cycles with host RSS and GPU memory per cycle while time
# remains (RELOAD_FIRST=1: the cycles right after the warm-up, before the benchmarks).
# Everything stops by BUDGET_S (560) seconds after the start. PORT 18200. CPU dry run:
# CFGNAME=config CK_CONFIG=models/chatglm-tiny/config.json DEVICE=cpu.
task_serving() {
  local port=${PORT:-18200} budget=${BUDGET_S:-560} sweep=${SWEEP:-1:20 8:20 64:25 256:30}
  local ivs_s=${IVS_S:-45} ivs_rate=${IVS_RATE:-12} ivs_conc=${IVS_CONC:-64} soak_max=${SOAK_MAX:-240}
  local cycles=${CYCLES:-20} reload_first=${RELOAD_FIRST:-0} reserve=${SOAK_RESERVE:-}
  [ -n "$reserve" ] || { [ "$reload_first" = 1 ] && reserve=20 || reserve=100; }
  local w=$WORK url="127.0.0.1:$port"
  mkdir -p "$w"
  log() { glm_log "$*" | tee -a "$w/run.log"; }
  left() { echo $((budget - ($(date +%s) - T0))); }
  need_venv server
  log "venv ready"
  export VENV BUILD
  # shellcheck source=scripts/triton_env.sh
  source scripts/triton_env.sh || exit 1
  local ck="$w/chatglm-6b-random" repo="$w/repo"
  "$VENV/bin/python" -m glmserve.config_only "$ck" ${CK_CONFIG:+--config "$CK_CONFIG"} || exit 1
  rm -rf "$repo" && mkdir -p "$repo" && cp -r model_repository/chatglm_decoder "$repo/"
  ready() { curl -sf "$url/v2/models/chatglm_decoder/ready" >/dev/null; }
  local t_load
  t_load=$(date +%s.%N)
  GLM_CHECKPOINT_DIR="$ck" "$TRITONSERVER" --model-repository="$repo" \
    --backend-directory="$TRITON_BACKEND_DIR" --model-config-name="${CFGNAME:-gpu}" \
    --backend-config=chatglm,random_weights=true --model-control-mode=explicit \
    --load-model=chatglm_decoder --http-address=127.0.0.1 --grpc-address=127.0.0.1 \
    --metrics-address=127.0.0.1 --http-port="$port" --grpc-port=$((port + 1)) \
    --metrics-port=$((port + 2)) --exit-timeout-secs=15 >"$w/server.log" 2>&1 &
  SPID=$!
  trap 'glm_stop "$SPID" TERM 30' EXIT
  if ! glm_wait_http "$url/v2/models/chatglm_decoder/ready" "$SPID" 600 0.5; then
    log "server not ready"
    tail -30 "$w/server.log"
    glm_stop "$SPID" KILL 5
    exit 1
  fi
  log "server ready (pid $SPID), first load $(glm_since "$t_load") s"
  grep -E "chatglm_decoder instance|KV|kv" "$w/server.log" | head -5 | tee -a "$w/run.log"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>&1 | tee -a "$w/run.log"
  IDS=$(glm_prompt_ids "$ck/config.json")
  curl -sN -X POST "$url/v2/models/chatglm_decoder/generate_stream" \
    -d "{\"input_ids\": $IDS, \"max_tokens\": 150, \"ignore_eos\": true, \"stream\": true}" >"$w/warm.txt"
  log "warm-up stream: $(grep -c '^data:' "$w/warm.txt") events"
  local hb=("$PYTHON" load_tests/http_bench.py --url "$url" --config "$ck/config.json" --out "$w/b" --pause 2)

  reload_cycles() {
    field() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$SPID/status"; }
    gpu() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1; }
    echo "cycle,unload_s,load_s,rss_kb,threads,gpu_mib" >"$w/reload.csv"
    echo "0,,,$(field VmRSS),$(field Threads),$(gpu)" >>"$w/reload.csv"
    local body="{\"input_ids\": $IDS, \"max_tokens\": 8, \"ignore_eos\": true}" last=30 i a b c
    for i in $(seq "$cycles"); do
      [ "$(left)" -lt $((last * 3 / 2 + 10)) ] && { log "reload: stopped after $((i - 1)) cycles (time)"; break; }
      a=$(date +%s.%N)
      curl -sf -X POST "$url/v2/repository/models/chatglm_decoder/unload" >/dev/null
      for _ in $(seq 600); do ready || break; sleep 0.1; done
      b=$(date +%s.%N)
      curl -sf -X POST "$url/v2/repository/models/chatglm_decoder/load" >/dev/null || { log "load $i failed"; break; }
      for _ in $(seq 1200); do ready && break; sleep 0.1; done
      c=$(date +%s.%N)
      curl -sf -X POST "$url/v2/models/chatglm_decoder/generate" -d "$body" | grep -q output_ids ||
        log "request after load $i failed"
      last=$(awk -v a="$a" -v c="$c" 'BEGIN { print int(c - a) + 1 }')
      echo "$i,$(awk -v a="$a" -v b="$b" -v c="$c" 'BEGIN { printf "%.2f,%.2f", b - a, c - b }'),$(field VmRSS),$(field Threads),$(gpu)" >>"$w/reload.csv"
    done
    tee -a "$w/run.log" <"$w/reload.csv"
    cp "$w/reload.csv" "$O/"
  }
  [ "$reload_first" = 1 ] && reload_cycles

  [ "$sweep" = none ] && sweep=""
  local cs c d soak
  for cs in $sweep; do
    c=${cs%%:*}
    d=${cs##*:}
    "${hb[@]}" sweep --conc "$c" -d "$d" --name "sweep_c$c" 2>&1 | grep -E "^C=|Error|error" | tee -a "$w/run.log"
  done
  "${hb[@]}" inflight-vs-static --conc "$ivs_conc" --rate "$ivs_rate" -d "$ivs_s" 2>&1 |
    grep -vE "^\|" | tee -a "$w/run.log"
  cp "$w/b/inflight_vs_static.json" "$O/" 2>/dev/null
  soak=$(($(left) - reserve))
  [ "$soak" -gt "$soak_max" ] && soak=$soak_max
  if [ "$soak" -ge 30 ]; then
    log "soak at 256 for $soak s"
    "${hb[@]}" soak --conc 256 -d "$soak" --pid "$SPID" 2>&1 | grep -E "^soak|^C=" | tee -a "$w/run.log"
    cp "$w/b/soak.json" "$O/" 2>/dev/null
  else
    log "no time left for the soak"
  fi
  glm_metrics $((port + 2)) '^glm_(max_batch|kv_blocks|requests_total)' | tee -a "$w/run.log"

  [ "$reload_first" = 1 ] || reload_cycles
  glm_stop "$SPID" INT 60
  log "server exit code $?"

  "$PYTHON" -m glmserve.serving_report "$w/b" | tee "$O/summary.txt"
  cp "$w/run.log" "$O/"
  tail -200 "$w/server.log" >"$O/server_tail.log"
  tar czf "$O/all.tar.gz" -C "$w" b run.log reload.csv 2>/dev/null
  ls -la "$O"
}

# make serve MODEL=... INT8=1 (serve-int8) or FP8=1 KV_CACHE_DTYPE=fp8 (serve-fp8) on
# ChatGLM-6B's config (random weights, quantized at load), checked with one plain and one
# streamed generate on chatglm_decoder: the server's ready line must name the mode's
# kernels ("int8"; "fp8 block linears" and, with KV_CACHE_DTYPE=fp8, "KV cache fp8") and
# both answers must carry the same 32 ids. Knobs: PORT (18320), CK_CONFIG (a config.json
# instead of ChatGLM-6B's), KV_CACHE_DTYPE (serve-int8: auto; serve-fp8: fp8). CPU dry run
# of serve-int8 (the CPU has no fp8 linears):
#   DEVICE=cpu VENV=.venv BUILD=build CK_CONFIG=models/chatglm-tiny/config.json bash scripts/gpu.sh serve-int8
task_serve_int8() { serve_quantized INT8 "${KV_CACHE_DTYPE:-auto}" int8 serve-int8; }
task_serve_fp8() { serve_quantized FP8 "${KV_CACHE_DTYPE:-fp8}" "fp8 block linears" serve-fp8; }

# serve_quantized FLAG KV_DTYPE WORDS LABEL: make serve with FLAG=1 and KV_CACHE_DTYPE, the
# ready line must contain WORDS (and "KV cache fp8" when KV_DTYPE is fp8); LABEL names the
# check's line (its KV cache dtype too).
serve_quantized() {
  local flag=$1 kv=$2 words=$3 label=$4 port=${PORT:-18320} ck="$WORK/ck" url="127.0.0.1:${PORT:-18320}"
  need_venv server
  "$VENV/bin/python" -m glmserve.config_only "$ck" ${CK_CONFIG:+--config "$CK_CONFIG"} || exit 1
  env "$flag=1" KV_CACHE_DTYPE="$kv" DEVICE="$DEVICE" MODEL="$ck" VENV="$VENV" BUILD="$BUILD" \
    HTTP_PORT="$port" GRPC_PORT=$((port + 1)) METRICS_PORT=$((port + 2)) \
    TRITON_ARGS="--backend-config=chatglm,random_weights=true" \
    bash scripts/serve.sh >"$WORK/server.log" 2>&1 &
  SPID=$!
  trap 'glm_stop "$SPID" TERM 30' EXIT
  glm_wait_http "$url/v2/models/chatglm_decoder/ready" "$SPID" 600 0.5
  grep -E "serve:|chatglm_decoder instance" "$WORK/server.log" | sed 's/^.*\] "//; s/"$//' | tee "$O/server_lines.txt"
  curl -sf "$url/v2/models/chatglm_decoder/ready" >/dev/null ||
    { glm_log "server not ready"; tail -30 "$WORK/server.log"; exit 1; }
  local status=0 ids
  grep -qF "$words" "$O/server_lines.txt" || { glm_log "the server log does not say '$words'"; status=1; }
  if [ "$kv" = fp8 ] && ! grep -qF "KV cache fp8" "$O/server_lines.txt"; then
    glm_log "the server log does not say 'KV cache fp8'"
    status=1
  fi
  ids=$(glm_prompt_ids "$ck/config.json")
  curl -s -X POST "$url/v2/models/chatglm_decoder/generate" \
    -d "{\"input_ids\": $ids, \"max_tokens\": 32, \"ignore_eos\": true}" >"$O/generate.json"
  curl -sN -X POST "$url/v2/models/chatglm_decoder/generate_stream" \
    -d "{\"input_ids\": $ids, \"max_tokens\": 32, \"ignore_eos\": true, \"stream\": true}" >"$O/generate_stream.txt"
  "$VENV/bin/python" -m glmserve.http_checks same-ids "$O/generate.json" "$O/generate_stream.txt" \
    --expect 32 --label "$label" || status=1
  glm_log "KV cache dtype $kv"
  glm_metrics $((port + 2)) '^glm_(generated_tokens_total|requests_total|kv_blocks_total)' | tee "$O/metrics.txt"
  glm_log "exit $status"
  return "$status"
}

# One chatglm_decoder instance per GPU (configs/gpu.pbtxt: instance_group [ { count: 1 kind:
# KIND_GPU } ] with no `gpus:` list, so Triton makes one instance on every visible GPU;
# serve.sh narrows the visible GPUs with CUDA_VISIBLE_DEVICES=$GPUS) and the throughput
# scaling from 1 to 2 GPUs: for GPUS in $CONFIGS, the server started as `make serve` does it
# on a config-only ChatGLM-6B checkpoint with random fp16 weights, the instances it made,
# GPU memory per GPU, load_tests/http_bench.py sweep at each concurrency of $CONC for $DUR
# seconds (run by BENCH_PY, default the venv's python), the per-instance metrics, the server
# stopped; then $OUT/multi/multi_gpu.md (glmserve.multi_gpu). max_batch_size and
# max_running_seqs are 256 per instance: concurrency 512 is where 2 GPUs show. Phases and
# sweep points are skipped when the time left of BUDGET_S is short.
# Knobs: CONFIGS ("0 0,1"), CONC ("64 256 512"), DUR (25), PAUSE (2), BUDGET_S (540),
# PORT (18310), CK_CONFIG. CPU dry run (one CPU phase; the 2-GPU phase is skipped):
#   DEVICE=cpu VENV=.venv BUILD=build CK_CONFIG=models/chatglm-tiny/config.json CONC="8 16" DUR=8 \
#     bash scripts/gpu.sh multi
task_multi() {
  local configs=${CONFIGS:-0 0,1} conc=${CONC:-64 256 512} dur=${DUR:-25} pause=${PAUSE:-2}
  local budget=${BUDGET_S:-540} port=${PORT:-18310} w=$WORK
  local bench_py=${BENCH_PY:-$VENV/bin/python} url="127.0.0.1:${PORT:-18310}"
  rm -rf "$w"
  mkdir -p "$w"
  log() { glm_log "$*" | tee -a "$w/run.log"; }
  left() { echo $((budget - ($(date +%s) - T0))); }
  finish() {
    cp "$w/run.log" "$O/run.log" 2>/dev/null
    log "files in $O: $(find "$O" -maxdepth 1 -type f -printf '%f ')"
  }
  need_venv server 2>&1 | tee -a "$w/run.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { log "setup failed"; finish; exit 1; }
  local ck="$w/ck" ngpu=0
  "$VENV/bin/python" -m glmserve.config_only "$ck" ${CK_CONFIG:+--config "$CK_CONFIG"} ||
    { log "checkpoint failed"; finish; exit 1; }
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader >"$w/cards.csv" 2>/dev/null
    ngpu=$(grep -c . "$w/cards.csv")
  fi
  touch "$w/cards.csv"
  log "$ngpu GPU(s) visible: $(tr '\n' ';' <"$w/cards.csv")"
  [ "$DEVICE" = cuda ] && [ "$ngpu" -eq 0 ] && { log "DEVICE=cuda but no GPU visible"; finish; exit 1; }
  smi_mem() {
    command -v nvidia-smi >/dev/null 2>&1 &&
      nvidia-smi --query-gpu=index,memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits 2>/dev/null
  }
  local n_conc first=1 g gpus need tag label p est t_start ok i c ids
  n_conc=$(wc -w <<<"$conc")
  for g in $configs; do
    need=$(tr ',' '\n' <<<"$g" | grep -c .)
    tag=${g//,/-}
    label=$g
    [ "$DEVICE" != cuda ] && [ "$first" = 1 ] && tag=cpu label=cpu # the CPU run: no GPUS
    p="$w/phase_$tag"
    mkdir -p "$p"
    echo "$label" >"$p/gpus"
    if [ "$DEVICE" != cuda ] && [ "$first" != 1 ]; then
      log "GPUS=$label: skipped (DEVICE=$DEVICE: only the first configuration runs, on the CPU; needs $need GPUs, $ngpu visible)"
      echo "skipped: needs $need GPUs, $ngpu visible (DEVICE=$DEVICE)" >"$p/skipped"
      continue
    fi
    first=0
    if [ "$DEVICE" = cuda ] && [ "$need" -gt "$ngpu" ]; then
      log "GPUS=$label: skipped (needs $need GPUs, $ngpu visible)"
      echo "skipped: needs $need GPUs, $ngpu visible" >"$p/skipped"
      continue
    fi
    est=$((60 + dur + 15 + 40)) # start, one sweep point, stop
    if [ "$(left)" -lt "$est" ]; then
      log "GPUS=$label: skipped ($(left) s left, a phase needs at least $est)"
      echo "skipped: out of time ($(left) s left)" >"$p/skipped"
      continue
    fi
    log "GPUS=$label: starting the server (serve.sh, as make serve DEVICE=$DEVICE GPUS=${label#cpu})"
    t_start=$(date +%s.%N)
    gpus=""
    [ "$DEVICE" = cuda ] && gpus=$g
    HTTP_PORT=$port GRPC_PORT=$((port + 1)) METRICS_PORT=$((port + 2)) DEVICE="$DEVICE" \
      GPUS="$gpus" MODEL="$ck" BUILD="$BUILD" VENV="$VENV" \
      TRITON_ARGS="--backend-config=chatglm,random_weights=true" \
      bash scripts/serve.sh >"$p/server.log" 2>&1 &
    SPID=$! # serve.sh execs tritonserver
    trap 'glm_stop "$SPID" TERM 30' EXIT
    ok=0
    for _ in $(seq 480); do
      curl -sf "$url/v2/health/ready" >/dev/null && { ok=1; break; }
      kill -0 "$SPID" 2>/dev/null || break
      [ "$(left)" -lt 40 ] && break
      sleep 0.5
    done
    if [ "$ok" != 1 ]; then
      log "GPUS=$label: server not ready"
      tail -n 30 "$p/server.log" | tee -a "$w/run.log"
      echo "failed: server not ready" >"$p/skipped"
      glm_stop "$SPID" KILL 5
      tail -n 200 "$p/server.log" >"$O/server_gpus$tag.log"
      continue
    fi
    glm_since "$t_start" >"$p/ready_s"
    log "GPUS=$label: ready in $(cat "$p/ready_s") s"
    grep -E "chatglm_decoder instance .*(checkpoint|ready:)" "$p/server.log" | sed 's/^.*\] "//; s/"$//' >"$p/instances.txt"
    grep -E '^\| chatglm_decoder' "$p/server.log" >>"$p/instances.txt"
    tee -a "$w/run.log" <"$p/instances.txt"
    smi_mem >"$p/smi_load.csv"
    [ -s "$p/smi_load.csv" ] && log "GPU memory after load (index, used MiB, total MiB, util %): $(tr '\n' ';' <"$p/smi_load.csv")"
    # one warm-up request before the measurements
    ids=$(glm_prompt_ids "$ck/config.json")
    curl -s -X POST "$url/v2/models/chatglm_decoder/generate" \
      -d "{\"input_ids\": $ids, \"max_tokens\": 16, \"ignore_eos\": true}" >"$p/warm.json"
    grep -q output_ids "$p/warm.json" || log "GPUS=$label: warm-up request failed: $(head -c 300 "$p/warm.json")"
    i=0
    for c in $conc; do
      i=$((i + 1))
      if [ "$(left)" -lt $((dur + 15 + 45)) ]; then
        log "GPUS=$label: concurrency $c skipped ($(left) s left)"
        continue
      fi
      "$bench_py" load_tests/http_bench.py sweep --url "$url" --config "$ck/config.json" --conc "$c" \
        -d "$dur" --out "$p/b" --name "c$c" 2>&1 | grep -E "^C=|rror|not ready" | tee -a "$w/run.log"
      [ "$i" -lt "$n_conc" ] && sleep "$pause"
    done
    smi_mem >"$p/smi_after.csv"
    curl -s "127.0.0.1:$((port + 2))/metrics" >"$p/metrics.txt"
    grep -E '^glm_(generated_tokens_total|max_batch_size|kv_blocks_total|requests_total|engine_healthy)\{' "$p/metrics.txt" |
      tee -a "$w/run.log" >/dev/null
    glm_stop "$SPID" TERM 45
    echo $? >"$p/server_rc"
    log "GPUS=$label: server stopped (exit code $(cat "$p/server_rc"))"
    tail -n 200 "$p/server.log" >"$O/server_gpus$tag.log"
  done
  "$bench_py" -m glmserve.multi_gpu "$w" "$O" --device "$DEVICE" --conc "$conc" --dur "$dur" 2>&1 |
    tee -a "$w/run.log"
  finish
}

# Unload/load cycles: tritonserver in explicit model-control mode serving chatglm_decoder
# alone; CYCLES times: unload, load, one request; after each cycle the server's host RSS and
# thread count (/proc/<pid>/status) and, when nvidia-smi is there, the GPU memory in use
# ($OUT/reload/reload.csv); exits 1 when RSS or GPU memory grew beyond the bounds between
# cycle 2 and the end (glmserve.reliability reload-check).
# Knobs: MODEL (converted checkpoint; default models/chatglm-tiny), RANDOM_WEIGHTS=1 (random
# weights of MODEL's config.json), CYCLES (20), KV_BLOCKS (256), RSS_BOUND_MB (64),
# GPU_BOUND_MB (256), PORT (18000). On the CPU: DEVICE=cpu VENV=.venv BUILD=build.
task_reload() {
  local model cycles=${CYCLES:-20} port=${PORT:-18000}
  model=$(realpath -m "${MODEL:-models/chatglm-tiny}")
  need_venv server
  export VENV BUILD
  # shellcheck source=scripts/triton_env.sh
  source scripts/triton_env.sh || exit 1
  local repo="$WORK/repo"
  rm -rf "$repo" && mkdir -p "$repo" && cp -r model_repository/chatglm_decoder "$repo/"
  local args=("--model-repository=$repo" "--backend-directory=$TRITON_BACKEND_DIR"
    "--model-control-mode=explicit" "--load-model=chatglm_decoder"
    "--http-address=127.0.0.1" "--http-port=$port"
    "--grpc-address=127.0.0.1" "--grpc-port=$((port + 1))"
    "--metrics-address=127.0.0.1" "--metrics-port=$((port + 2))"
    "--backend-config=chatglm,num_kv_blocks=${KV_BLOCKS:-256}")
  [ "$DEVICE" = cuda ] && args+=("--model-config-name=gpu")
  [ "${RANDOM_WEIGHTS:-0}" = 1 ] && args+=("--backend-config=chatglm,random_weights=true")
  GLM_CHECKPOINT_DIR="$model" "$TRITONSERVER" "${args[@]}" >"$O/tritonserver.log" 2>&1 &
  SPID=$!
  trap 'glm_stop "$SPID" TERM 30' EXIT
  local url="http://127.0.0.1:$port/v2" i out body
  ready() { curl -sf "$url/models/chatglm_decoder/ready" >/dev/null; }
  wait_for() { # predicate, seconds
    for _ in $(seq $(($2 * 10))); do
      if "$1"; then return 0; fi
      kill -0 "$SPID" 2>/dev/null || { tail -20 "$O/tritonserver.log"; exit 1; }
      sleep 0.1
    done
    return 1
  }
  not_ready() { ! ready; }
  wait_for ready 600 || glm_die "server not ready"
  # a prompt of the served model: 3 plain ids + [gMASK] <sop>
  body="{\"input_ids\": $(glm_prompt_ids "$model/config.json" 5 3), \"max_tokens\": 8, \"ignore_eos\": true}"
  gpu_mib() {
    command -v nvidia-smi >/dev/null 2>&1 &&
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1 || echo ""
  }
  field() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$SPID/status"; }
  echo "cycle,rss_kb,threads,gpu_mib" >"$O/reload.csv"
  echo "0,$(field VmRSS),$(field Threads),$(gpu_mib)" >>"$O/reload.csv"
  for i in $(seq "$cycles"); do
    curl -sf -X POST "$url/repository/models/chatglm_decoder/unload" >/dev/null
    wait_for not_ready 120 || glm_die "unload $i did not finish"
    curl -sf -X POST "$url/repository/models/chatglm_decoder/load" >/dev/null
    wait_for ready 600 || glm_die "load $i did not finish"
    out=$(curl -sf -X POST "$url/models/chatglm_decoder/generate" -d "$body") ||
      glm_die "request after load $i failed"
    grep -q '"output_ids"' <<<"$out" || glm_die "bad answer: $out"
    echo "$i,$(field VmRSS),$(field Threads),$(gpu_mib)" >>"$O/reload.csv"
  done
  cat "$O/reload.csv"
  "$VENV/bin/python" -m glmserve.reliability reload-check "$O/reload.csv" \
    --rss-bound-mb "${RSS_BOUND_MB:-64}" --gpu-bound-mb "${GPU_BOUND_MB:-256}"
}

# ---- soak ------------------------------------------------------------------------------------
# `make serve` with random weights, Locust for DURATION at USERS users, the server sampled
# every SAMPLE_S seconds (host RSS and threads from /proc, GPU memory from nvidia-smi,
# generated tokens, KV blocks and active requests from the metrics port); prints failures,
# RSS / GPU memory after the first minute and at the end, tokens/s per minute
# (glmserve.reliability soak-summary); exits 1 on any failed request.
# MODE=decoder (default): chatglm_decoder alone on a config-only ChatGLM-6B checkpoint
# (or MODEL, or CK_CONFIG's shapes), load_tests/soak_decoder.py over gRPC;
# MODE=ensemble: the ensemble on MODEL (default the demo model, whose tokenizer matches)
# through scripts/load_test.sh (make load-test). Knobs: USERS (256), SPAWN_RATE (32),
# DURATION (10m), SAMPLE_S (10), PORT (18300: HTTP; gRPC +1, metrics +2), LOCUST
# ($VENV/bin/locust). Results in $OUT/soak (samples.csv, Locust's CSVs, tritonserver.log).
SOAK_DIR=${SOAK_DIR:-/tmp/glm-soak}
RUN="$SOAK_DIR/soak"

task_soak() {
  local mode=${MODE:-decoder} users=${USERS:-256} spawn=${SPAWN_RATE:-32} duration=${DURATION:-10m}
  local sample_s=${SAMPLE_S:-10} port=${PORT:-18300} model=${MODEL:-} py="$VENV/bin/python"
  local locust=${LOCUST:-$VENV/bin/locust}
  need_venv server clients
  if [ "$mode" = decoder ]; then
    if [ -z "$model" ]; then
      model="$O/ck"
      "$py" -m glmserve.config_only "$model" ${CK_CONFIG:+--config "$CK_CONFIG"} || exit 1
    fi
  else
    model=${model:-models/chatglm-tiny}
  fi
  HTTP_PORT=$port GRPC_PORT=$((port + 1)) METRICS_PORT=$((port + 2)) MODEL="$model" DEVICE="$DEVICE" \
    BUILD="$BUILD" VENV="$VENV" TRITON_ARGS="--backend-config=chatglm,random_weights=true" \
    bash scripts/serve.sh >"$O/tritonserver.log" 2>&1 &
  SPID=$! # serve.sh execs tritonserver: this is the server's pid
  SAMPLER=""
  trap '[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null; glm_stop "$SPID" TERM 60' EXIT
  if ! glm_wait_http "127.0.0.1:$port/v2/health/ready" "$SPID" 1200 0.5; then
    tail -30 "$O/tritonserver.log"
    glm_die "server not ready"
  fi
  metric() { # name -> sum over label sets
    curl -sf "127.0.0.1:$((port + 2))/metrics" |
      awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d", s }'
  }
  sample() {
    echo "t_s,rss_kb,threads,gpu_mib,tokens_total,kv_blocks_used,active_requests"
    local t0 gpu
    t0=$(date +%s)
    while kill -0 "$SPID" 2>/dev/null; do
      gpu=""
      command -v nvidia-smi >/dev/null 2>&1 &&
        gpu=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
      echo "$(($(date +%s) - t0)),$(awk '$1=="VmRSS:"{print $2}' /proc/"$SPID"/status)," \
        "$(awk '$1=="Threads:"{print $2}' /proc/"$SPID"/status),$gpu,$(metric glm_generated_tokens_total)," \
        "$(metric glm_kv_blocks_used),$(metric glm_active_requests)" | tr -d ' '
      sleep "$sample_s"
    done
  }
  sample >"$O/samples.csv" &
  SAMPLER=$!
  local rc
  if [ "$mode" = decoder ]; then
    "$locust" -f load_tests/soak_decoder.py --headless --only-summary \
      -u "$users" -r "$spawn" -t "$duration" --host "127.0.0.1:$((port + 1))" \
      --ids-config "$model/config.json" --csv "$O/locust" >"$O/locust.log" 2>&1
    rc=$?
  else
    USERS=$users SPAWN_RATE=$spawn DURATION=$duration GRPC_PORT=$((port + 1)) \
      RESULTS="$O/load" VENV="$VENV" bash scripts/load_test.sh >"$O/locust.log" 2>&1
    rc=$?
  fi
  kill "$SAMPLER" 2>/dev/null
  SAMPLER=""
  tail -5 "$O/locust.log"
  "$py" -m glmserve.reliability soak-summary "$O"
  glm_log "samples in $O/samples.csv, Locust in $O"
  return "$rc"
}

# The soak across commands that may each run only a few minutes: soak-start launches
# `gpu.sh soak` detached (setsid nohup: its own session, outliving the command that started
# it; the runner's text is read into memory first, so a checkout replaced in the meantime
# does not disturb it), waits until the server is ready and Locust runs, prints progress
# until WAIT_S (480 s after its start) and returns 0 with the soak still running;
# soak-finish, on the same machine, waits up to WAIT_S (540 s) for the soak's done marker
# and copies the results to $OUT/soak-finish; it exits with the soak's exit code (0: no
# failed request), 3 when no soak was started on this machine, 4 when it has not ended
# within WAIT_S, 5 when it was killed. SOAK_DIR (/tmp/glm-soak, wiped by soak-start) holds
# the soak's own files; PROGRESS_S (30) is the progress interval. CPU dry run:
#   DEVICE=cpu VENV=.venv BUILD=build USERS=8 SPAWN_RATE=4 DURATION=40s \
#     CK_CONFIG=models/chatglm-tiny/config.json WAIT_S=45 bash scripts/gpu.sh soak-start
#   bash scripts/gpu.sh soak-finish
soak_running() {
  [ -f "$SOAK_DIR/pid" ] && [ ! -f "$SOAK_DIR/done" ] && kill -0 "$(cat "$SOAK_DIR/pid")" 2>/dev/null
}

soak_progress() { # one line: soak age, the last sample, Locust's running totals
  local age="?" s="" h=""
  [ -f "$SOAK_DIR/t_launch" ] && age=$(($(date +%s) - $(cat "$SOAK_DIR/t_launch")))
  if [ -f "$RUN/samples.csv" ]; then
    s=$(awk -F, 'NR > 1 { if (p != "") { split(p, a, ","); dt = $1 - a[1]; tps = dt > 0 ? ($5 - a[5]) / dt : 0 } p = $0; last = $0 }
      END { if (last != "") { split(last, b, ","); printf "t=%ss rss=%d MiB threads=%s gpu=%s MiB tokens=%s (%.0f/s) kv=%s active=%s",
        b[1], b[2] / 1024, b[3], (b[4] == "" ? "-" : b[4]), b[5], tps, b[6], b[7] } }' "$RUN/samples.csv")
  fi
  if [ -f "$RUN/locust_stats_history.csv" ]; then
    h=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } { last = $0 }
      END { if (last != "") { split(last, a, ","); printf "locust users=%s req=%s fail=%s req/s=%.1f",
        a[c["User Count"]], a[c["Total Request Count"]], a[c["Total Failure Count"]], a[c["Requests/s"]] } }' \
      "$RUN/locust_stats_history.csv")
  fi
  glm_log "soak ${age}s: ${s:-no samples yet}${h:+; $h}"
}

soak_copy_out() { # start | finish: the soak's results (at most 9 flat files) into $O
  local f
  for f in soak_summary.txt samples.csv locust_stats.csv; do
    [ -f "$RUN/$f" ] && cp "$RUN/$f" "$O/"
  done
  if [ -f "$RUN/locust_stats_history.csv" ]; then
    if [ "$(stat -c %s "$RUN/locust_stats_history.csv")" -le $((4 << 20)) ]; then
      cp "$RUN/locust_stats_history.csv" "$O/"
    else # header + every 10th row + the last one
      awk 'NR == 1 || NR % 10 == 0 { print; next } { last = $0 } END { print last }' \
        "$RUN/locust_stats_history.csv" >"$O/locust_stats_history.csv"
    fi
  fi
  [ -f "$RUN/locust.log" ] && tail -n 300 "$RUN/locust.log" >"$O/locust_log_tail.txt"
  [ -f "$RUN/tritonserver.log" ] && tail -n 300 "$RUN/tritonserver.log" >"$O/tritonserver_log_tail.txt"
  [ -f "$SOAK_DIR/soak.log" ] && tail -n 100 "$SOAK_DIR/soak.log" >"$O/soak_log_tail.txt"
  [ "$1" = finish ] && [ -f "$SOAK_DIR/done" ] && cp "$SOAK_DIR/done" "$O/rc"
  glm_log "copied to $O: $(find "$O" -maxdepth 1 -type f -printf '%f ')"
}

soak_crash_check() { # Signal (15) / (2) is the normal stop at the end of the soak
  local re='Signal \(([013-9]|1[0-46-9]|[2-9][0-9])\) received|Segmentation fault|terminate called|core dumped'
  [ -f "$RUN/tritonserver.log" ] || return 0
  if grep -qE "$re" "$RUN/tritonserver.log"; then
    glm_log "WARNING: tritonserver.log shows a crash:"
    grep -nE -A3 "$re" "$RUN/tritonserver.log" | head -20
  fi
}

task_soak_start() {
  local wait_s=${WAIT_S:-480}
  soak_running && glm_die "a soak is already running here (pid $(cat "$SOAK_DIR/pid")): finish or stop it first"
  case "$SOAK_DIR" in /tmp/?*) ;; *) glm_die "SOAK_DIR=$SOAK_DIR: expected a folder under /tmp (it is wiped)" ;; esac
  need_venv server clients
  rm -rf "$SOAK_DIR"
  mkdir -p "$RUN"
  {
    echo "started $(date -u +%FT%TZ) on $(uname -n)"
    echo "DEVICE=$DEVICE USERS=${USERS:-256} SPAWN_RATE=${SPAWN_RATE:-32} DURATION=${DURATION:-10m} SAMPLE_S=${SAMPLE_S:-10} PORT=${PORT:-18300}"
    echo "VENV=$VENV BUILD=$BUILD MODEL=${MODEL:-(config-only ChatGLM-6B)} CK_CONFIG=${CK_CONFIG:-}"
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader
  } >"$SOAK_DIR/env.txt"
  cat "$SOAK_DIR/env.txt"
  # The wrapper writes its pid (= the process group to stop) and, at the end, the exit code
  # to $SOAK_DIR/done; the soak task runs from memory (bash -c "<gpu.sh's text>").
  # shellcheck disable=SC2016  # expanded by the detached shell
  env OUT="$SOAK_DIR" NO_BUILD=1 SETUP=0 DEVICE="$DEVICE" BUILD="$BUILD" \
    VENV="$VENV" WORK="$WORK" SOAK_DIR="$SOAK_DIR" \
    setsid nohup bash -c 'echo $$ >"$SOAK_DIR/pid"; date +%s >"$SOAK_DIR/t_launch"
      s=$(cat scripts/gpu.sh) && bash -c "$s" scripts/gpu.sh soak; rc=$?
      echo "$rc" >"$SOAK_DIR/done.tmp" && mv "$SOAK_DIR/done.tmp" "$SOAK_DIR/done"' \
    >"$SOAK_DIR/soak.log" 2>&1 </dev/null &
  disown
  for _ in $(seq 50); do [ -f "$SOAK_DIR/pid" ] && break; sleep 0.1; done
  [ -f "$SOAK_DIR/pid" ] || glm_die "the detached soak did not start (see $SOAK_DIR/soak.log)"
  glm_log "soak launched (process group $(cat "$SOAK_DIR/pid")), results in $RUN"
  local phase=server next=0 now port=${PORT:-18300}
  while :; do
    now=$(date +%s)
    if [ -f "$SOAK_DIR/done" ]; then
      glm_log "the soak ended early with exit code $(cat "$SOAK_DIR/done")"
      tail -n 20 "$SOAK_DIR/soak.log"
      [ -f "$RUN/tritonserver.log" ] && tail -n 30 "$RUN/tritonserver.log"
      soak_crash_check
      soak_copy_out finish
      exit 1
    fi
    if [ "$phase" = server ] && curl -sf "127.0.0.1:$port/v2/health/ready" >/dev/null; then
      glm_log "server ready"
      grep -E "chatglm_decoder instance" "$RUN/tritonserver.log" | cut -c1-300
      phase=locust
    fi
    if [ "$phase" = locust ] && [ -s "$RUN/locust_stats_history.csv" ]; then
      glm_log "Locust running (${USERS:-256} users, ${DURATION:-10m})"
      phase=running
    fi
    if [ "$phase" = running ] && [ "$now" -ge "$next" ]; then
      soak_progress
      next=$((now + ${PROGRESS_S:-30}))
    fi
    [ $((now - T0)) -ge $((wait_s - 3)) ] && break
    sleep 2
  done
  if [ "$phase" != running ]; then
    glm_log "WARNING: after ${wait_s}s the soak is still in phase '$phase' (not yet load)"
    tail -n 20 "$SOAK_DIR/soak.log"
  fi
  soak_copy_out start
  glm_log "the soak keeps running (detached); collect it with: bash scripts/gpu.sh soak-finish"
}

task_soak_finish() {
  local wait_s=${WAIT_S:-540} next=0 now rc
  if [ ! -f "$SOAK_DIR/pid" ]; then
    glm_log "no soak on this machine: $SOAK_DIR/pid does not exist (run soak-start first;"
    glm_log "a soak does not survive the machine it was started on)"
    exit 3
  fi
  while [ ! -f "$SOAK_DIR/done" ]; do
    now=$(date +%s)
    if ! soak_running; then
      sleep 1 # the wrapper may be writing the marker right now
      [ -f "$SOAK_DIR/done" ] && break
      glm_log "the soak's process group $(cat "$SOAK_DIR/pid") is gone and left no done marker (killed?)"
      tail -n 20 "$SOAK_DIR/soak.log"
      soak_crash_check
      soak_copy_out finish
      exit 5
    fi
    [ "$now" -ge "$next" ] && { soak_progress; next=$((now + ${PROGRESS_S:-30})); }
    if [ $((now - T0)) -ge $((wait_s - 3)) ]; then
      soak_progress
      glm_log "the soak has not ended within ${wait_s}s; partial results copied, it keeps running"
      soak_copy_out finish
      exit 4
    fi
    sleep 2
  done
  rc=$(cat "$SOAK_DIR/done")
  soak_progress
  glm_log "soak ended, exit code $rc; its output:"
  tail -n 12 "$SOAK_DIR/soak.log"
  soak_crash_check
  soak_copy_out finish
  [ -f "$RUN/soak_summary.txt" ] && echo "SUMMARY: $(cat "$RUN/soak_summary.txt")"
  exit "$rc"
}

task_soak_status() {
  [ -f "$SOAK_DIR/pid" ] || { glm_log "no soak in $SOAK_DIR"; exit 3; }
  if [ -f "$SOAK_DIR/done" ]; then
    glm_log "ended, exit code $(cat "$SOAK_DIR/done")"
  elif soak_running; then
    glm_log "running"
  else
    glm_log "not running and no done marker"
  fi
  soak_progress
}

task_soak_stop() {
  [ -f "$SOAK_DIR/pid" ] || { glm_log "no soak in $SOAK_DIR"; exit 0; }
  local pg
  pg=$(cat "$SOAK_DIR/pid")
  kill -TERM -- "-$pg" 2>/dev/null || { glm_log "process group $pg is gone"; exit 0; }
  for _ in $(seq 45); do
    kill -0 -- "-$pg" 2>/dev/null || { glm_log "stopped process group $pg"; exit 0; }
    sleep 1
  done
  kill -KILL -- "-$pg" 2>/dev/null
  glm_log "killed process group $pg"
}

# ================================================================ the runner
usage() { sed -n '2,/^# shellcheck/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

tasks=()
for a in "$@"; do
  case "$a" in
    help | -h | --help) usage; exit 0 ;;
    check) tasks+=(kernels tests bench) ;;
    int8) tasks+=(int8-kernels int8-kbench int8-tests int8-bench) ;;
    *)
      declare -F "task_${a//-/_}" >/dev/null || { echo "gpu.sh: unknown task '$a' (bash scripts/gpu.sh help)" >&2; exit 2; }
      tasks+=("$a")
      ;;
  esac
done
[ ${#tasks[@]} -gt 0 ] || { usage >&2; exit 2; }

mapfile -t targets < <(for t in "${tasks[@]}"; do targets_of "$t"; done | tr ' ' '\n' | grep . | sort -u)
T0=$(date +%s)
if [ ${#targets[@]} -gt 0 ] && [ "${NO_BUILD:-0}" != 1 ]; then
  case " ${tasks[*]} " in *" build "* | *" kernels "* | *" tests "* | *" bench "* | *" diag "* | *" int8-"*) glm_gpu_info ;; esac
  mkdir -p "$WORK"
  GLM_TASK=build glm_build "$OUT/build" "${targets[@]}" || exit 1
fi
status=0
for t in "${tasks[@]}"; do
  (
    GLM_TASK=$t
    T0=$(date +%s)
    O="$OUT/$t"
    WORK="$WORK/$t"
    mkdir -p "$O" "$WORK"
    "task_${t//-/_}"
  )
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "gpu.sh: task $t failed (exit code $rc)" >&2
    status=$rc
  fi
done
exit "$status"

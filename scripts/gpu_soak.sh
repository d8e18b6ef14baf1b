#!/usr/bin/env bash
# Issue 8's soak on the GPU machine (10 minutes of Locust at 256 users against
# chatglm_decoder, ChatGLM-6B's shapes, random fp16 weights: scripts/reliability_soak.sh)
# across two device calls, since one call may run at most 10 minutes:
#
#   bash scripts/gpu_soak.sh start    # venv + backend build, then reliability_soak.sh detached
#                                     # (setsid nohup), waits until the server is ready and
#                                     # Locust runs, prints progress until WAIT_S (480 s after
#                                     # its own start) and returns 0 with the soak still running
#   bash scripts/gpu_soak.sh finish   # on the same, still warm machine (call it right away:
#                                     # the machine goes back ~30 s after a call ends): waits up
#                                     # to WAIT_S (540 s) for the soak's done marker and copies
#                                     # the results to $OUT; exits with the soak's exit code
#                                     # (0: no failed request), 3 when no soak was started on
#                                     # this machine, 4 when it has not ended within WAIT_S
#   bash scripts/gpu_soak.sh status   # one progress line, no waiting
#   bash scripts/gpu_soak.sh stop     # ends a detached soak (its whole process group)
#   bash scripts/gpu_soak.sh setup    # only the venv and the backend build (gpu_multi.sh uses it)
#
# The venv ($VENV, default /tmp/sv): a venv of $BASE_PYTHON (/usr/bin/python3) whose
# site-packages holds pytriton's tritonserver ($CARRY_TAR, untarred as gpu_serving.sh does) and
# the wheels of $SOAK_WHEELS (Locust, tritonclient, gevent, ... unzipped), plus a .pth that adds
# the machine python's site-packages ($MACHINE_PYTHON, default /opt/torch/.venv/bin/python3:
# numpy, grpcio, protobuf, psutil, ...) and the repository root; $VENV/bin/locust is a launcher.
# Skipped when SETUP=0, or when $VENV/bin/locust exists and SETUP is not 1 (e.g. VENV=.venv on a
# machine where `make setup` ran). Only the chatglm_decoder C++ backend is served (no tokenizer
# in the config-only checkpoint), so the Python backend stub never loads the machine's numpy 2.
#
# Environment (defaults): DEVICE (cuda), USERS (256), SPAWN_RATE (32), DURATION (10m),
# SAMPLE_S (10), PORT (18300: HTTP; gRPC +1, metrics +2), SOAK_DIR (/tmp/soak; the soak's own
# results in $SOAK_DIR/run), VENV (/tmp/sv), BUILD (build/e2e), CARRY_TAR
# (.gpucarry/tritonserver.tar.xz), SOAK_WHEELS (.soakcarry), BASE_PYTHON, MACHINE_PYTHON,
# GLM_WITH_CUDA (ON for DEVICE=cuda, else OFF), GLM_CUDA_ARCHS (90a with CUDA), CK_CONFIG (a
# config.json to serve instead of ChatGLM-6B's, e.g. models/chatglm-tiny/config.json for a CPU
# dry run), WAIT_S (start 480, finish 540), PROGRESS_S (30), OUT (where results are copied; at
# most 8 flat files).
#
# CPU dry run (the repo's .venv, tiny shapes):
#   DEVICE=cpu VENV=.venv USERS=8 SPAWN_RATE=4 DURATION=40s CK_CONFIG=models/chatglm-tiny/config.json \
#     WAIT_S=45 OUT=/tmp/soak_start bash scripts/gpu_soak.sh start
#   OUT=/tmp/soak_finish bash scripts/gpu_soak.sh finish
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
ACTION=${1:-}
DEVICE=${DEVICE:-cuda}
USERS=${USERS:-256}
SPAWN_RATE=${SPAWN_RATE:-32}
DURATION=${DURATION:-10m}
SAMPLE_S=${SAMPLE_S:-10}
PORT=${PORT:-18300}
SOAK_DIR=${SOAK_DIR:-/tmp/soak}
RUN="$SOAK_DIR/run"
VENV=${VENV:-/tmp/sv}
BUILD=${BUILD:-build/e2e}
CARRY_TAR=${CARRY_TAR:-.gpucarry/tritonserver.tar.xz}
SOAK_WHEELS=${SOAK_WHEELS:-.soakcarry}
BASE_PYTHON=${BASE_PYTHON:-/usr/bin/python3}
PROGRESS_S=${PROGRESS_S:-30}
DEV_OUT=${OUT:-}
SETUP_LOGS=${SETUP_LOGS:-/tmp/glm_setup}
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac

log() { echo "gpu_soak [$(($(date +%s) - T0))s]: $*"; }
die() { log "error: $*"; exit 1; }

# ---- setup: the venv ------------------------------------------------------------------
pyver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
check_venv() {
  "$VENV/bin/python" - <<'PY' || return 1
import importlib, sys
mods = ["locust.main", "gevent", "grpc", "tritonclient.grpc", "numpy", "psutil",
        "load_tests.streaming", "glmserve.bench"]
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001
        bad.append(f"{m}: {type(e).__name__}: {e}")
if bad:
    print("venv check: cannot import\n  " + "\n  ".join(bad))
    sys.exit(1)
import gevent, grpc, locust, numpy
print(f"venv check: python {sys.version.split()[0]}, locust {locust.__version__}, "
      f"gevent {gevent.__version__}, grpcio {grpc.__version__}, numpy {numpy.__version__}",
      flush=True)
import os
os._exit(0)  # no interpreter teardown under gevent's patched threading (noisy, harmless)
PY
}
setup_venv() {
  local setup=${SETUP:-auto}
  if [ "$setup" = 0 ] || { [ "$setup" != 1 ] && [ -x "$VENV/bin/locust" ]; }; then
    log "venv $VENV: used as it is (SETUP=$setup)"
    check_venv || die "the venv $VENV lacks modules (SETUP=1 rebuilds it)"
    return 0
  fi
  local mpy=${MACHINE_PYTHON:-}
  if [ -z "$mpy" ]; then
    if [ -x /opt/torch/.venv/bin/python3 ]; then mpy=/opt/torch/.venv/bin/python3
    else mpy=$(command -v python3) || die "no python3 on PATH (set MACHINE_PYTHON)"; fi
  fi
  [ -x "$BASE_PYTHON" ] || die "BASE_PYTHON=$BASE_PYTHON is not an executable"
  [ -f "$CARRY_TAR" ] || die "CARRY_TAR=$CARRY_TAR is missing (carry .gpucarry/tritonserver.tar.xz)"
  compgen -G "$SOAK_WHEELS/*.whl" >/dev/null || die "no wheels in SOAK_WHEELS=$SOAK_WHEELS (carry .soakcarry)"
  local bv mv
  bv=$(pyver "$BASE_PYTHON") || die "$BASE_PYTHON does not run"
  mv=$(pyver "$mpy") || die "$mpy does not run"
  [ "$bv" = "$mv" ] || die "Python versions differ: $BASE_PYTHON is $bv, $mpy is $mv (the wheels and the machine's packages must match one minor version; set BASE_PYTHON / MACHINE_PYTHON)"
  log "making the venv $VENV ($BASE_PYTHON $bv; the machine's packages from $mpy)"
  rm -rf "$VENV"
  "$BASE_PYTHON" -m venv --without-pip "$VENV" || die "venv failed"
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  tar xf "$CARRY_TAR" -C "$site" || die "untar $CARRY_TAR failed"
  [ -x "$site/pytriton/tritonserver/bin/tritonserver" ] || die "$CARRY_TAR has no pytriton/tritonserver/bin/tritonserver"
  local w n=0
  for w in "$SOAK_WHEELS"/*.whl; do
    "$VENV/bin/python" -m zipfile -e "$w" "$site" || die "unzip $w failed"
    n=$((n + 1))
  done
  # Some wheels (tritonclient) keep their packages under <name>.data/{purelib,platlib}/.
  local d
  for d in "$site"/*.data/purelib "$site"/*.data/platlib; do
    [ -d "$d" ] && cp -r "$d"/. "$site"/
  done
  # addsitedir (not a bare path): the machine's own .pth files are processed too.
  "$mpy" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"]); print(p["platlib"])' |
    sort -u | while read -r d; do echo "import site; site.addsitedir('$d')"; done >"$site/zz_glm_machine.pth"
  echo "$ROOT" >>"$site/zz_glm_machine.pth"
  printf '#!%s\nimport sys\nfrom locust.main import main\nsys.exit(main())\n' "$VENV/bin/python" \
    >"$VENV/bin/locust.tmp"
  chmod +x "$VENV/bin/locust.tmp"
  log "venv: tritonserver untarred, $n wheels unzipped, .pth: $(tr '\n' ' ' <"$site/zz_glm_machine.pth")"
  check_venv || die "the new venv lacks modules (see above)"
  mv "$VENV/bin/locust.tmp" "$VENV/bin/locust"   # last: its presence marks a finished setup
}

# ---- setup: the backend (gpu_serving.sh's cmake lines, CUDA explicit) --------------------
build_backend() {
  local cuda=${GLM_WITH_CUDA:-}
  [ -n "$cuda" ] || { [ "$DEVICE" = cuda ] && cuda=ON || cuda=OFF; }
  local args=(-S backend_src -B "$BUILD/cmake" -DCMAKE_BUILD_TYPE=Release
    -DGLM_PYMODULE_OUT="$BUILD/pymod" -DGLM_BACKEND_OUT="$BUILD/backends/chatglm"
    -DGLM_WITH_CUDA="$cuda")
  [ "$cuda" = OFF ] || args+=(-DGLM_CUDA_ARCHS="${GLM_CUDA_ARCHS:-90a}")
  mkdir -p "$SETUP_LOGS"
  local t=$(date +%s)
  cmake "${args[@]}" >"$SETUP_LOGS/cmake.log" 2>&1 || { tail -30 "$SETUP_LOGS/cmake.log"; die "cmake failed"; }
  cmake --build "$BUILD/cmake" -j "$(nproc)" --target triton_chatglm >"$SETUP_LOGS/build.log" 2>&1 ||
    { grep -E "error" "$SETUP_LOGS/build.log" | head -30; die "build failed"; }
  [ -f "$BUILD/backends/chatglm/libtriton_chatglm.so" ] || die "no $BUILD/backends/chatglm/libtriton_chatglm.so"
  log "backend built in $(($(date +%s) - t)) s (GLM_WITH_CUDA=$cuda): $BUILD/backends/chatglm/libtriton_chatglm.so"
}

# ---- progress and collection ---------------------------------------------------------
running() { [ -f "$SOAK_DIR/pid" ] && [ ! -f "$SOAK_DIR/done" ] && kill -0 "$(cat "$SOAK_DIR/pid")" 2>/dev/null; }
progress() {  # one line: soak age, the last sample, Locust's running totals
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
  log "soak ${age}s: ${s:-no samples yet}${h:+; $h}"
}
copy_out() {  # $1: start | finish
  [ -n "$DEV_OUT" ] || return 0
  mkdir -p "$DEV_OUT"
  local f
  for f in soak_summary.txt samples.csv locust_stats.csv; do
    [ -f "$RUN/$f" ] && cp "$RUN/$f" "$DEV_OUT/"
  done
  if [ -f "$RUN/locust_stats_history.csv" ]; then
    if [ "$(stat -c %s "$RUN/locust_stats_history.csv")" -le $((4 << 20)) ]; then
      cp "$RUN/locust_stats_history.csv" "$DEV_OUT/"
    else  # header + every 10th row + the last one
      awk 'NR == 1 || NR % 10 == 0 { print; next } { last = $0 } END { print last }' \
        "$RUN/locust_stats_history.csv" >"$DEV_OUT/locust_stats_history.csv"
    fi
  fi
  [ -f "$RUN/locust.log" ] && tail -n 300 "$RUN/locust.log" >"$DEV_OUT/locust_log_tail.txt"
  [ -f "$RUN/tritonserver.log" ] && tail -n 300 "$RUN/tritonserver.log" >"$DEV_OUT/tritonserver_log_tail.txt"
  [ -f "$SOAK_DIR/soak.log" ] && tail -n 100 "$SOAK_DIR/soak.log" >"$DEV_OUT/soak_log_tail.txt"
  [ "$1" = finish ] && [ -f "$SOAK_DIR/done" ] && cp "$SOAK_DIR/done" "$DEV_OUT/rc"
  log "copied to $DEV_OUT: $(cd "$DEV_OUT" && ls | tr '\n' ' ')"
}
crash_check() {  # Signal (15) / (2) is the normal stop at the end of reliability_soak.sh
  local re='Signal \(([013-9]|1[0-46-9]|[2-9][0-9])\) received|Segmentation fault|terminate called|core dumped'
  [ -f "$RUN/tritonserver.log" ] || return 0
  if grep -qE "$re" "$RUN/tritonserver.log"; then
    log "WARNING: tritonserver.log shows a crash:"
    grep -nE -A3 "$re" "$RUN/tritonserver.log" | head -20
  fi
}

# ---- actions -------------------------------------------------------------------------
cmd_setup() {
  setup_venv
  build_backend
}

cmd_start() {
  local wait_s=${WAIT_S:-480}
  running && die "a soak is already running here (pid $(cat "$SOAK_DIR/pid")): finish or stop it first"
  case "$SOAK_DIR" in /tmp/?*) ;; *) die "SOAK_DIR=$SOAK_DIR: expected a folder under /tmp (it is wiped)" ;; esac
  cmd_setup
  rm -rf "$SOAK_DIR"
  mkdir -p "$RUN"
  local model=${MODEL:-}
  if [ -n "${CK_CONFIG:-}" ]; then  # a config-only checkpoint of these shapes (random weights)
    model="$SOAK_DIR/ck"
    mkdir -p "$model"
    cp "$CK_CONFIG" "$model/config.json" || die "CK_CONFIG=$CK_CONFIG"
    printf '\x02\x00\x00\x00\x00\x00\x00\x00{}' >"$model/model.safetensors"
  fi
  {
    echo "started $(date -u +%FT%TZ) on $(uname -n)"
    echo "DEVICE=$DEVICE USERS=$USERS SPAWN_RATE=$SPAWN_RATE DURATION=$DURATION SAMPLE_S=$SAMPLE_S PORT=$PORT"
    echo "VENV=$VENV BUILD=$BUILD MODEL=${model:-(reliability_soak.sh default: \$BUILD/soak-6b, REAL_CONFIG)}"
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader
  } >"$SOAK_DIR/env.txt"
  cat "$SOAK_DIR/env.txt"
  # Detached: a new session (setsid) survives the end of this device call; the wrapper writes
  # its pid (= the process group to stop) and, at the end, the exit code to $SOAK_DIR/done.
  # reliability_soak.sh runs from memory (bash -c "<its text>", $0 = its path): the next
  # device call copies the working tree again, and bash reads a script file as it goes.
  env MODE=decoder DEVICE="$DEVICE" USERS="$USERS" SPAWN_RATE="$SPAWN_RATE" DURATION="$DURATION" \
    SAMPLE_S="$SAMPLE_S" PORT="$PORT" OUT="$RUN" BUILD="$BUILD" VENV="$VENV" MODEL="$model" \
    LOCUST="$VENV/bin/locust" PYTHON="$VENV/bin/python" SOAK_DIR="$SOAK_DIR" \
    setsid nohup bash -c 'echo $$ >"$SOAK_DIR/pid"; date +%s >"$SOAK_DIR/t_launch"
      s=$(cat scripts/reliability_soak.sh) && bash -c "$s" scripts/reliability_soak.sh; rc=$?
      echo "$rc" >"$SOAK_DIR/done.tmp" && mv "$SOAK_DIR/done.tmp" "$SOAK_DIR/done"' \
    >"$SOAK_DIR/soak.log" 2>&1 </dev/null &
  disown
  for _ in $(seq 50); do [ -f "$SOAK_DIR/pid" ] && break; sleep 0.1; done
  [ -f "$SOAK_DIR/pid" ] || die "the detached soak did not start (see $SOAK_DIR/soak.log)"
  log "soak launched (process group $(cat "$SOAK_DIR/pid")), results in $RUN"
  local phase=server next=0 now
  while :; do
    now=$(date +%s)
    if [ -f "$SOAK_DIR/done" ]; then
      log "the soak ended early with exit code $(cat "$SOAK_DIR/done")"
      tail -n 20 "$SOAK_DIR/soak.log"
      [ -f "$RUN/tritonserver.log" ] && tail -n 30 "$RUN/tritonserver.log"
      crash_check
      copy_out finish
      exit 1
    fi
    if [ "$phase" = server ] && curl -sf "127.0.0.1:$PORT/v2/health/ready" >/dev/null; then
      log "server ready"
      grep -E "chatglm_decoder instance" "$RUN/tritonserver.log" | cut -c1-300
      phase=locust
    fi
    if [ "$phase" = locust ] && [ -s "$RUN/locust_stats_history.csv" ]; then
      log "Locust running ($USERS users, $DURATION)"
      phase=running
    fi
    if [ "$phase" = running ] && [ "$now" -ge "$next" ]; then progress; next=$((now + PROGRESS_S)); fi
    [ $((now - T0)) -ge $((wait_s - 3)) ] && break
    sleep 2
  done
  if [ "$phase" != running ]; then
    log "WARNING: after ${wait_s}s the soak is still in phase '$phase' (not yet load)"
    tail -n 20 "$SOAK_DIR/soak.log"
  fi
  copy_out start
  log "the soak keeps running (detached); now run: bash scripts/gpu_soak.sh finish"
  exit 0
}

cmd_finish() {
  local wait_s=${WAIT_S:-540}
  if [ ! -d "$SOAK_DIR" ] || [ ! -f "$SOAK_DIR/pid" ]; then
    log "no soak on this machine: $SOAK_DIR/pid does not exist (a fresh machine? the warm one"
    log "that ran 'start' was given back and its soak is lost: run 'start' again)"
    exit 3
  fi
  local next=0 now
  while [ ! -f "$SOAK_DIR/done" ]; do
    now=$(date +%s)
    if ! running; then
      sleep 1   # the wrapper may be writing the marker right now
      [ -f "$SOAK_DIR/done" ] && break
      log "the soak's process group $(cat "$SOAK_DIR/pid") is gone and left no done marker (killed?)"
      tail -n 20 "$SOAK_DIR/soak.log"
      crash_check
      copy_out finish
      exit 5
    fi
    [ "$now" -ge "$next" ] && { progress; next=$((now + PROGRESS_S)); }
    if [ $((now - T0)) -ge $((wait_s - 3)) ]; then
      progress
      log "the soak has not ended within ${wait_s}s; partial results copied, it keeps running"
      copy_out finish
      exit 4
    fi
    sleep 2
  done
  local rc
  rc=$(cat "$SOAK_DIR/done")
  progress
  log "soak ended, exit code $rc; its output:"
  tail -n 12 "$SOAK_DIR/soak.log"
  crash_check
  copy_out finish
  [ -f "$RUN/soak_summary.txt" ] && echo "SUMMARY: $(cat "$RUN/soak_summary.txt")"
  exit "$rc"
}

cmd_status() {
  [ -f "$SOAK_DIR/pid" ] || { log "no soak in $SOAK_DIR"; exit 3; }
  if [ -f "$SOAK_DIR/done" ]; then log "ended, exit code $(cat "$SOAK_DIR/done")"
  elif running; then log "running"
  else log "not running and no done marker"; fi
  progress
}

cmd_stop() {
  [ -f "$SOAK_DIR/pid" ] || { log "no soak in $SOAK_DIR"; exit 0; }
  local pg
  pg=$(cat "$SOAK_DIR/pid")
  kill -TERM -- "-$pg" 2>/dev/null || { log "process group $pg is gone"; exit 0; }
  for _ in $(seq 45); do kill -0 -- "-$pg" 2>/dev/null || { log "stopped process group $pg"; exit 0; }; sleep 1; done
  kill -KILL -- "-$pg" 2>/dev/null
  log "killed process group $pg"
}

case "$ACTION" in
  setup) cmd_setup ;;
  start) cmd_start ;;
  finish) cmd_finish ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  *) echo "usage: bash scripts/gpu_soak.sh start|finish|status|stop|setup (see the header)" >&2; exit 2 ;;
esac

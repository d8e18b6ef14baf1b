#!/usr/bin/env bash
# GPU end-to-end through Triton, in one device call:
#   1. a Python-backend environment like `make setup`'s, from files carried in
#      $CARRY: a venv of the system python3 (its libpython matches the stub),
#      numpy 1.26.4 + sentencepiece wheels, and nvidia-pytriton's tritonserver
#      and libraries as one tarball (tritonserver.tar.xz);
#   2. the backend built with CUDA (scripts/build.sh's CMake project);
#   3. `make serve`'s script with DEVICE=cuda on the tiny demo model: the whole
#      ensemble (preprocessing -> chatglm_decoder on the GPU -> postprocessing),
#      one streamed request over /generate_stream and one over /generate;
#   4. optionally (E2E_RANDOM=1) the full-size config with random fp16 weights,
#      decoder only, one streamed request of ids.
# Logs under $OUT. Usage: OUT=... CARRY=.gpucarry bash scripts/gpu_triton_e2e.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_e2e}
CARRY=${CARRY:-.gpucarry}
V=${E2E_VENV:-/tmp/e2e-venv}
mkdir -p "$OUT"
log() { echo "e2e: $*" | tee -a "$OUT/e2e.log"; }

PYSYS=${PYSYS:-/usr/bin/python3}
if [ ! -x "$V/bin/python" ]; then
  "$PYSYS" -m venv --without-pip "$V" || { log "venv failed"; exit 1; }
  SITE=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  tar xf "$(ls "$CARRY"/tritonserver.tar* | head -1)" -C "$SITE" || { log "untar failed"; exit 1; }
  for w in "$CARRY"/*.whl; do "$V/bin/python" -m zipfile -e "$w" "$SITE" || exit 1; done
  echo "$ROOT" > "$SITE/glmserve-repo.pth"
fi
"$V/bin/python" -c 'import numpy, sentencepiece, glmserve.tokenizer; print("venv ok: numpy", numpy.__version__)' \
  | tee -a "$OUT/e2e.log" || exit 1

BUILD=${BUILD:-build/e2e}
if [ ! -f "$BUILD/backends/chatglm/libtriton_chatglm.so" ]; then
  PYB=${PYBIND_PY:-python3}
  if ! "$PYB" -c "import pybind11" 2>/dev/null; then
    "$PYB" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/pybind11-*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  fi
  t0=$(date +%s)
  cmake -S backend_src -B "$BUILD/cmake" -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$(command -v "$PYB")" -Dpybind11_DIR="$("$PYB" -m pybind11 --cmakedir)" \
    -DGLM_PYMODULE_OUT="$ROOT/$BUILD/pymod" -DGLM_BACKEND_OUT="$ROOT/$BUILD/backends/chatglm" \
    ${GLM_E2E_CMAKE:-} >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
  cmake --build "$BUILD/cmake" -j "$(nproc)" --target triton_chatglm >"$OUT/build.log" 2>&1 \
    || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
  log "backend built in $(( $(date +%s) - t0 )) s"
fi

wait_ready() {  # port, seconds
  for _ in $(seq "$2"); do
    curl -sf "localhost:$1/v2/health/ready" >/dev/null && return 0
    sleep 1
  done
  return 1
}

# ---- 3. the ensemble on the GPU --------------------------------------------
DEVICE=${E2E_DEVICE:-cuda}
VENV=$V BUILD=$BUILD DEVICE=$DEVICE MODEL=${E2E_MODEL:-models/chatglm-tiny} HTTP_PORT=18000 GRPC_PORT=18001 \
  METRICS_PORT=18002 bash scripts/serve.sh >"$OUT/server_tiny.log" 2>&1 &
spid=$!
status=0
if wait_ready 18000 120; then
  log "server ready (device $DEVICE)"
  body='{"text_input": "你好，请介绍一下你自己。", "max_tokens": 48, "stream": true}'
  curl -sN -X POST localhost:18000/v2/models/chatglm/generate_stream -d "$body" >"$OUT/stream.txt"
  log "generate_stream: $(grep -c '^data:' "$OUT/stream.txt") events"
  head -c 1500 "$OUT/stream.txt" | tee -a "$OUT/e2e.log"; echo
  body='{"text_input": "你好，请介绍一下你自己。", "max_tokens": 48}'
  curl -s -X POST localhost:18000/v2/models/chatglm/generate -d "$body" | tee "$OUT/generate.json" | tee -a "$OUT/e2e.log"; echo
  "$V/bin/python" - "$OUT/stream.txt" "$OUT/generate.json" <<'PY' | tee -a "$OUT/e2e.log" || status=1
import json, sys
pieces = [json.loads(l[5:])["text_output"] for l in open(sys.argv[1], encoding="utf-8") if l.startswith("data:")]
whole = json.load(open(sys.argv[2], encoding="utf-8"))["text_output"]
print("streamed pieces:", len(pieces), "| concatenation == /generate text:", "".join(pieces) == whole)
sys.exit(0 if pieces and "".join(pieces) == whole else 1)
PY
  curl -s localhost:18002/metrics | grep -E '^glm_' | tee "$OUT/metrics_tiny.txt" | head -20 | tee -a "$OUT/e2e.log"
else
  log "server did not become ready"; tail -40 "$OUT/server_tiny.log"; status=1
fi
kill -INT $spid 2>/dev/null; wait $spid; log "server exit code $?"
grep -iE "cuda|gpu|device" "$OUT/server_tiny.log" | head -10 | tee -a "$OUT/e2e.log"
exit $status

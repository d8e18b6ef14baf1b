#!/usr/bin/env bash
# Shared pieces of the GPU task runner scripts/gpu.sh (sourced, not run): logging, the
# CMake build of backend_src/, the Python environment of tritonserver and the load
# clients, and small helpers around a running server. Expects ROOT (the repository
# root, also the working directory), BUILD, VENV, PYTHON, DEVICE, JOBS, OFFLINE_DIR and
# WORK to be set by the caller (scripts/gpu.sh documents them).

glm_log() { echo "${GLM_TASK:-gpu.sh} [$(($(date +%s) - ${T0:-$(date +%s)}))s]: $*"; }
glm_die() { glm_log "error: $*"; exit 1; }

# An absolute path: relative ones are taken from the repository root.
glm_abspath() { case "$1" in /*) echo "$1" ;; *) echo "$ROOT/$1" ;; esac; }

# The site-packages folder of a Python interpreter.
glm_site() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

# Unzips wheels into a folder with <python> (a wheel is a zip; no pip needed). Wheels that
# keep their packages under <name>.data/{purelib,platlib}/ (tritonclient) get those copied up.
glm_unzip_wheels() {  # python, folder, wheel...
  local py=$1 dir=$2 w d
  shift 2
  for w in "$@"; do
    "$py" -m zipfile -e "$w" "$dir" || { glm_log "error: unzip $w failed"; return 1; }
  done
  for d in "$dir"/*.data/purelib "$dir"/*.data/platlib; do
    if [ -d "$d" ]; then cp -r "$d"/. "$dir"/; fi
  done
}

# One line about each GPU: name, memory, clocks, temperature, power.
glm_gpu_info() {
  command -v nvidia-smi >/dev/null 2>&1 || { glm_log "no nvidia-smi"; return 0; }
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
}

# ---- pybind11 for $PYTHON -----------------------------------------------------------
# The pybind11 module glmserve._engine is built for $PYTHON. When $PYTHON has no pybind11,
# the wheel $OFFLINE_DIR/pybind11-*.whl is unzipped into $WORK/pybind11 and put on
# PYTHONPATH. Returns 1 when pybind11 stays unavailable.
glm_pybind11() {
  "$PYTHON" -c "import pybind11" 2>/dev/null && return 0
  local whl
  whl=$(compgen -G "$OFFLINE_DIR/pybind11-*.whl" | head -1)
  [ -n "$whl" ] || return 1
  mkdir -p "$WORK/pybind11"
  glm_unzip_wheels "$PYTHON" "$WORK/pybind11" "$whl" || return 1
  export PYTHONPATH="$WORK/pybind11${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" -c "import pybind11" 2>/dev/null
}

# ---- the build --------------------------------------------------------------------------
# Configures backend_src/ into $BUILD/cmake and builds the given CMake targets
# (_engine, glm_cuda_kernel_test, glm_cuda_int8_test, triton_chatglm, ...). The CUDA
# back-end is on (GLM_WITH_CUDA=ON) unless DEVICE=cpu or GLM_WITH_CUDA says otherwise;
# GLM_CUDA_ARCHS defaults to 90a (Hopper, which the packed int8 kernels need);
# GLM_CMAKE_ARGS adds CMake arguments. glmserve._engine goes into glmserve/, the Triton
# backend into $BUILD/backends/chatglm/. Logs: <log dir>/cmake.log and build.log.
# The build's header/library dependencies (nlohmann/json, GoogleTest) on a machine that
# cannot install them: .deb files in $OFFLINE_DIR (`apt-get download nlohmann-json3-dev
# libgtest-dev googletest` elsewhere) unpacked under $WORK/deps, whose usr/ is printed as a
# CMAKE_PREFIX_PATH; nothing printed when there are none.
glm_build_deps() {
  compgen -G "$OFFLINE_DIR/*.deb" >/dev/null || return 0
  local dest=$WORK/deps
  mkdir -p "$dest"
  local deb
  for deb in "$OFFLINE_DIR"/*.deb; do
    dpkg -x "$deb" "$dest" || { glm_log "error: cannot unpack $deb"; return 1; }
  done
  echo "$dest/usr"
}

glm_build() {  # log dir, target...
  local logs=$1
  shift
  local cuda=${GLM_WITH_CUDA:-}
  if [ -z "$cuda" ]; then
    if [ "$DEVICE" = cpu ]; then cuda=OFF; else cuda=ON; fi
  fi
  local args=(-S backend_src -B "$BUILD/cmake" -DCMAKE_BUILD_TYPE=Release
    -DGLM_WITH_CUDA="$cuda" -DGLM_PYMODULE_OUT="$ROOT/glmserve"
    -DGLM_BACKEND_OUT="$BUILD/backends/chatglm")
  [ "$cuda" = OFF ] || args+=(-DGLM_CUDA_ARCHS="${GLM_CUDA_ARCHS:-90a}")
  if glm_pybind11; then
    args+=(-DPython_EXECUTABLE="$(command -v "$PYTHON")" -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)")
  elif [[ " $* " == *" _engine "* ]]; then
    glm_log "error: $PYTHON has no pybind11 and there is no $OFFLINE_DIR/pybind11-*.whl (needed for _engine)"
    return 1
  fi
  local deps
  deps=$(glm_build_deps) || return 1
  [ -z "$deps" ] || args+=(-DCMAKE_PREFIX_PATH="$deps")
  if [ -n "${GLM_CMAKE_ARGS:-}" ]; then
    local extra
    read -r -a extra <<<"$GLM_CMAKE_ARGS"
    args+=("${extra[@]}")
  fi
  mkdir -p "$logs"
  local t0
  t0=$(date +%s)
  if ! cmake "${args[@]}" >"$logs/cmake.log" 2>&1; then
    tail -40 "$logs/cmake.log"
    glm_log "error: cmake configure failed ($logs/cmake.log)"
    return 1
  fi
  if ! cmake --build "$BUILD/cmake" -j "$JOBS" --target "$@" >"$logs/build.log" 2>&1; then
    grep -E "error|Error" "$logs/build.log" | head -40
    glm_log "error: build failed ($logs/build.log)"
    return 1
  fi
  glm_log "build: $(($(date +%s) - t0)) s (targets $*; GLM_WITH_CUDA=$cuda${GLM_CUDA_ARCHS:+, GLM_CUDA_ARCHS=$GLM_CUDA_ARCHS})"
}

# ---- the Python environment of tritonserver ---------------------------------------------
# $VENV serves two purposes: it is the Triton Python-backend stub's environment (the
# stub takes the first python3 on PATH, and the r24.10 stub needs numpy < 2 and a venv of
# the system interpreter whose libpython it loads) and it runs the load clients (Locust,
# tritonclient, load_tests/). scripts/triton_env.sh finds tritonserver in it.
#
# Used as it is when $VENV/bin/python exists (e.g. VENV=.venv after `make setup`; SETUP=1
# remakes one that this function made). Otherwise made without network access from the
# offline bundle in $OFFLINE_DIR:
#   tritonserver.tar.xz  nvidia-pytriton's pytriton/tritonserver and nvidia_pytriton.libs
#                        folders (docs/gpu_tasks.md says how to make it)
#   *.whl                wheels for the venv's Python version, unzipped into its
#                        site-packages: numpy 1.26.4, sentencepiece (for the ensemble's
#                        Python models), locust, tritonclient, gevent, ... (for the clients)
#   site-*.tar.xz        the same wheels unzipped and packed with xz (about 40% smaller
#                        than the wheels, for a carry limit): untarred into site-packages
# a venv of $BASE_PYTHON (default /usr/bin/python3) with a .pth that adds the repository
# and, unless MACHINE_SITE=0, the site-packages of $MACHINE_PYTHON (default $PYTHON) after
# its own (grpcio, protobuf, psutil, ... of the machine; the venv's own numpy comes first).
glm_venv() {
  local marker="$VENV/.glm-venv"
  if [ -x "$VENV/bin/python" ] && [ "${SETUP:-auto}" != 1 ] &&
     { [ ! -f "$marker" ] || [ "$(cat "$marker")" = complete ]; }; then
    glm_log "venv $VENV: used as it is"
    return 0
  fi
  if [ -e "$VENV" ] && [ ! -f "$marker" ]; then
    glm_log "error: SETUP=1, but $VENV was not made by scripts/gpu.sh: remove it or set another VENV"
    return 1
  fi
  local base=${BASE_PYTHON:-/usr/bin/python3} tar
  tar=$(compgen -G "$OFFLINE_DIR/tritonserver.tar*" | head -1)
  [ -x "$base" ] || { glm_log "error: BASE_PYTHON=$base is not an executable"; return 1; }
  [ -n "$tar" ] || { glm_log "error: no $OFFLINE_DIR/tritonserver.tar.xz and no venv at $VENV (docs/gpu_tasks.md)"; return 1; }
  local bv mpy mv
  bv=$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || return 1
  if [ "${MACHINE_SITE:-1}" = 1 ]; then
    mpy=${MACHINE_PYTHON:-$(command -v "$PYTHON")}
    mv=$("$mpy" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || { glm_log "error: $mpy does not run"; return 1; }
    if [ "$bv" != "$mv" ]; then
      glm_log "error: $base is Python $bv, $mpy is $mv: the machine's packages must match the venv's version (set BASE_PYTHON / MACHINE_PYTHON, or MACHINE_SITE=0)"
      return 1
    fi
  fi
  glm_log "making the venv $VENV (Python $bv from $base; $tar and the wheels of $OFFLINE_DIR)"
  rm -rf "$VENV"
  "$base" -m venv --without-pip "$VENV" || { glm_log "error: venv failed"; return 1; }
  echo incomplete >"$marker"
  local site wheels
  site=$(glm_site "$VENV/bin/python")
  tar xf "$tar" -C "$site" || { glm_log "error: untar $tar failed"; return 1; }
  [ -x "$site/pytriton/tritonserver/bin/tritonserver" ] ||
    { glm_log "error: $tar has no pytriton/tritonserver/bin/tritonserver"; return 1; }
  mapfile -t wheels < <(compgen -G "$OFFLINE_DIR/*.whl")
  glm_unzip_wheels "$VENV/bin/python" "$site" "${wheels[@]}" || return 1
  local st
  for st in "$OFFLINE_DIR"/site-*.tar.xz; do
    [ -f "$st" ] || continue
    tar xf "$st" -C "$site" || { glm_log "error: untar $st failed"; return 1; }
    wheels+=("$st")
  done
  # a wheel's *.data/purelib and platlib (tritonclient's package lives there) belong in site
  local dd
  for dd in "$site"/*.data/purelib "$site"/*.data/platlib; do
    if [ -d "$dd" ]; then cp -r "$dd"/. "$site"/; fi
  done
  # addsitedir (not a bare path) so that the machine's own .pth files are processed too
  if [ "${MACHINE_SITE:-1}" = 1 ]; then
    "$mpy" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"]); print(p["platlib"])' |
      sort -u | while read -r d; do echo "import site; site.addsitedir('$d')"; done >"$site/zz_glm.pth"
  fi
  echo "$ROOT" >>"$site/zz_glm.pth"
  printf '#!%s\nimport sys\nfrom locust.main import main\nsys.exit(main())\n' "$VENV/bin/python" >"$VENV/bin/locust"
  chmod +x "$VENV/bin/locust"
  echo complete >"$marker"
  glm_log "venv: tritonserver untarred, ${#wheels[@]} wheels / site archives unpacked, .pth: $(tr '\n' ' ' <"$site/zz_glm.pth")"
}

# Checks that $VENV has what a task needs (glmserve.venv_check: server, ensemble, clients).
glm_venv_check() {  # need...
  local a=() n
  for n in "$@"; do a+=(--need "$n"); done
  "$VENV/bin/python" -m glmserve.venv_check "${a[@]}"
}

# The demo model (models/chatglm-tiny), made with the venv's Python when it is missing
# (glmserve.tiny needs torch and sentencepiece; `make demo-model` elsewhere).
glm_demo_model() {
  [ -f models/chatglm-tiny/model.safetensors ] && return 0
  glm_log "making the demo model models/chatglm-tiny"
  "$VENV/bin/python" -m glmserve.tiny --out models/chatglm-tiny >/dev/null ||
    { glm_log "error: no models/chatglm-tiny (make demo-model)"; return 1; }
}

# ---- a running server -----------------------------------------------------------------------
# Waits until GET <url> succeeds: at most <tries> polls <interval> s apart; gives up early
# when <pid> has exited. Returns 1 when it never answered.
glm_wait_http() {  # url, pid, tries, interval
  local _
  for _ in $(seq "$3"); do
    curl -sf "$1" >/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep "$4"
  done
  curl -sf "$1" >/dev/null
}

# Sends <signal> to <pid>, waits up to <seconds> for it to end, then SIGKILL; prints
# nothing, returns the process's exit code when it is our child.
glm_stop() {  # pid, signal, seconds
  local _
  kill "-$2" "$1" 2>/dev/null || { wait "$1" 2>/dev/null; return; }
  for _ in $(seq $(($3 * 2))); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$1" 2>/dev/null; then
    glm_log "pid $1 still up $3 s after SIG$2: SIGKILL"
    kill -9 "$1" 2>/dev/null
  fi
  wait "$1" 2>/dev/null
}

# The prompt the GPU tasks send: ids first..first+count-1, then [gMASK] <sop> of the config.
glm_prompt_ids() {  # config.json [first count]
  "$VENV/bin/python" -m glmserve.http_checks prompt-ids "$1" --first "${2:-100}" --count "${3:-16}"
}

# glm_* metric lines of the server's metrics port matching a regex.
glm_metrics() {  # port, regex
  curl -s "127.0.0.1:$1/metrics" | grep -E "$2"
}

# Seconds since an epoch time with a fraction (date +%s.%N), one decimal.
glm_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

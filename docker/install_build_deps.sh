#!/usr/bin/env bash
# Docker step 1: installs what scripts/setup.sh and scripts/build.sh need and the
# Triton image lacks: a C++17 compiler and make, CMake (new enough for
# backend_src/CMakeLists.txt), nlohmann/json and GoogleTest (the engine's JSON
# library and C++ test framework; scripts/setup.sh installs the same), the system
# Python's venv module and shared libpython (the Python-backend stub loads it),
# and the CUDA compiler with the cuBLAS/cudart headers of the image's own CUDA
# version (its runtime libraries are already there). Installs only what is missing.
#
#   bash docker/install_build_deps.sh            install (as root, Debian/Ubuntu)
#   bash docker/install_build_deps.sh --dry-run  print the plan; apt-get simulates
#                                                (CI runs this on its CPU machine)
# Environment:
#   CUDA_HOME          CUDA root to check/complete (default /usr/local/cuda)
#   CUDA_VERSION       the image's CUDA version (NGC images set it, e.g. 12.6.2);
#                      else read from $CUDA_HOME/version.json or nvcc
#   SKIP_CUDA=1        do not install the CUDA compiler (CPU-only image)
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
SKIP_CUDA=${SKIP_CUDA:-0}

log() { echo "install_build_deps: $*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# "a.b.c" >= "x.y.z" ?
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

apt_pkgs=()
pip_pkgs=()

# --- compiler, make -----------------------------------------------------------
# g++ (the project builds with -Werror on GCC; the image build sets CXX=g++)
have g++ || apt_pkgs+=(g++)
have make || apt_pkgs+=(make)

# --- C++ libraries: JSON (header-only) and GoogleTest, as scripts/setup.sh ------
for pkg in nlohmann-json3-dev libgtest-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || apt_pkgs+=("$pkg")
done

# --- CMake --------------------------------------------------------------------
cmake_min=3.18
if [ -f backend_src/CMakeLists.txt ]; then
  req=$(sed -n 's/^[[:space:]]*cmake_minimum_required[[:space:]]*([[:space:]]*VERSION[[:space:]]*\([0-9.]*\).*/\1/Ip' \
    backend_src/CMakeLists.txt | head -n1)
  [ -n "$req" ] && cmake_min=$req
fi
cmake_have=""
if have cmake; then cmake_have=$(cmake --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p'); fi
if [ -z "$cmake_have" ] || ! version_ge "$cmake_have" "$cmake_min"; then
  # the distribution's cmake may be too old (Ubuntu 22.04: 3.22): take PyPI's
  pip_pkgs+=("cmake>=${cmake_min}")
fi
log "cmake: have ${cmake_have:-none}, need >= $cmake_min"

# --- system Python: venv module + shared libpython (see scripts/setup.sh) -----
pybin=/usr/bin/python3
if [ ! -x "$pybin" ]; then
  apt_pkgs+=(python3 python3-venv python3-dev python3-pip)
else
  pyver=$("$pybin" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  "$pybin" -c 'import venv, ensurepip' 2>/dev/null || apt_pkgs+=("python${pyver}-venv")
  libpy=$("$pybin" -c 'import sysconfig,os; print(os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("LDLIBRARY") or ""))')
  [ -e "$libpy" ] || apt_pkgs+=("libpython${pyver}-dev")
  # the stub and pybind11 need Python.h too
  inc=$("$pybin" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  [ -e "$inc/Python.h" ] || apt_pkgs+=("python${pyver}-dev")
  if [ ${#pip_pkgs[@]} -gt 0 ] && ! "$pybin" -m pip --version >/dev/null 2>&1; then apt_pkgs+=(python3-pip); fi
  log "python: $pybin ($pyver), libpython: $libpy"
fi

# --- CUDA compiler + headers of the image's CUDA version ----------------------
cuda_pkgs=()
if [ "$SKIP_CUDA" != 1 ]; then
  cuda_ver=${CUDA_VERSION:-}
  if [ -z "$cuda_ver" ] && [ -f "$CUDA_HOME/version.json" ]; then
    cuda_ver=$(tr -d '\n' <"$CUDA_HOME/version.json" \
      | sed -n 's/.*"cuda"[[:space:]]*:[[:space:]]*{[^}]*"version"[[:space:]]*:[[:space:]]*"\([0-9.]*\)".*/\1/p')
  fi
  if [ -z "$cuda_ver" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    cuda_ver=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
  fi
  if [ -z "$cuda_ver" ]; then
    log "CUDA: no CUDA_VERSION and no $CUDA_HOME/version.json: set CUDA_VERSION or SKIP_CUDA=1" >&2
    exit 1
  fi
  IFS=. read -r cu_major cu_minor _ <<<"$cuda_ver"
  suffix="${cu_major}-${cu_minor}"
  [ -x "$CUDA_HOME/bin/nvcc" ] || cuda_pkgs+=("cuda-nvcc-$suffix")
  { [ -e "$CUDA_HOME/include/cuda_runtime.h" ] && [ -e "$CUDA_HOME/include/cuda_fp16.h" ]; } \
    || cuda_pkgs+=("cuda-cudart-dev-$suffix")
  # CUB/Thrust (CCCL): include/cub up to CUDA 12, include/cccl/cub from CUDA 13
  [ -e "$CUDA_HOME/include/cub/cub.cuh" ] || [ -e "$CUDA_HOME/include/cccl/cub/cub.cuh" ] \
    || cuda_pkgs+=("cuda-cccl-$suffix")
  [ -e "$CUDA_HOME/include/cublas_v2.h" ] || cuda_pkgs+=("libcublas-dev-$suffix")
  log "CUDA $cuda_ver in $CUDA_HOME: missing packages: ${cuda_pkgs[*]:-none}"
fi

log "apt packages to install: ${apt_pkgs[*]:-none} ${cuda_pkgs[*]:-}"
log "pip packages to install: ${pip_pkgs[*]:-none}"

all_apt=("${apt_pkgs[@]}" "${cuda_pkgs[@]}")
if [ "$DRY_RUN" = 1 ]; then
  # Simulate with apt where the package lists are there; CUDA packages come from
  # NVIDIA's repository (configured in the NGC images), which a plain Debian/Ubuntu
  # machine lacks: those are only listed.
  if [ ${#apt_pkgs[@]} -gt 0 ] && have apt-get; then
    apt-get install -s --no-install-recommends "${apt_pkgs[@]}" >/dev/null
    log "apt-get simulation of ${apt_pkgs[*]}: ok"
  fi
  if [ ${#cuda_pkgs[@]} -gt 0 ]; then
    if have apt-cache && apt-cache policy "${cuda_pkgs[0]}" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      apt-get install -s --no-install-recommends "${cuda_pkgs[@]}" >/dev/null
      log "apt-get simulation of ${cuda_pkgs[*]}: ok"
    else
      log "no NVIDIA CUDA apt repository here: would install ${cuda_pkgs[*]}"
    fi
  fi
  log "dry run: nothing installed"
  exit 0
fi

if [ ${#all_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  if [ ${#cuda_pkgs[@]} -gt 0 ] && ! apt-cache policy "${cuda_pkgs[0]}" | grep -q 'Candidate: [0-9]'; then
    echo "install_build_deps: ${cuda_pkgs[0]} is not in the apt sources; this image has no NVIDIA CUDA" \
      "repository configured. Add it (NVIDIA's cuda-keyring package for this Ubuntu release)," \
      "install the CUDA toolkit another way, or build CPU-only with SKIP_CUDA=1." >&2
    exit 1
  fi
  apt-get install -y --no-install-recommends "${all_apt[@]}"
  rm -rf /var/lib/apt/lists/*
fi
if [ ${#pip_pkgs[@]} -gt 0 ]; then
  "$pybin" -m pip install --no-cache-dir "${pip_pkgs[@]}"
  hash -r
fi

# --- verify -------------------------------------------------------------------
fail=0
have g++ || { echo "install_build_deps: no g++" >&2; fail=1; }
cmake_now=$(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')
{ [ -n "$cmake_now" ] && version_ge "$cmake_now" "$cmake_min"; } || { echo "install_build_deps: cmake ${cmake_now:-missing} < $cmake_min" >&2; fail=1; }
if [ "$SKIP_CUDA" != 1 ]; then
  for f in bin/nvcc include/cuda_runtime.h include/cublas_v2.h; do
    [ -e "$CUDA_HOME/$f" ] || { echo "install_build_deps: $CUDA_HOME/$f is missing" >&2; fail=1; }
  done
fi
[ "$fail" = 0 ] || exit 1
log "done (cmake $cmake_now$( [ "$SKIP_CUDA" = 1 ] || echo ", nvcc $("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"))"

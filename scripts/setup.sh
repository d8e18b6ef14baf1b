#!/usr/bin/env bash
# One-time, idempotent set-up: a venv from the system Python (its libpython must
# match the Triton Python-backend stub), pinned requirements, our package.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

pick_python() {
  # The stub for Python 3.X loads the system libpython3.X: use the system interpreter.
  for cand in /usr/bin/python3 /usr/local/bin/python3; do
    if [ -x "$cand" ]; then echo "$cand"; return 0; fi
  done
  return 1
}

PYBIN=$(pick_python) || { echo "setup: no system python3 found; install it (Debian/Ubuntu: apt-get install python3 python3-venv python3-dev)" >&2; exit 1; }
ver=$("$PYBIN" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if ! "$PYBIN" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "setup: $PYBIN has no venv/ensurepip module; install it: apt-get install python${ver}-venv" >&2
  exit 1
fi
libpy=$("$PYBIN" -c 'import sysconfig,os; print(os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("LDLIBRARY") or ""))')
if [ ! -e "$libpy" ]; then
  echo "setup: the shared libpython${ver} ($libpy) is missing; the Triton Python-backend stub needs it: apt-get install libpython${ver}" >&2
  exit 1
fi

# C++ build dependencies from the distribution (Debian/Ubuntu): the JSON library
# the engine parses config.json / safetensors headers / Triton's model config
# with, and GoogleTest for backend_src/tests (CTest runs them in `make test`).
apt_deps=(nlohmann-json3-dev libgtest-dev)
missing=()
for pkg in "${apt_deps[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  as_root=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      as_root=(sudo -n)
    else
      echo "setup: missing packages ${missing[*]}; install them as root:" \
        "apt-get update && apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: missing packages ${missing[*]} and no apt-get here; install them (or their" \
      "equivalents: nlohmann/json 3 and GoogleTest with CMake config files) with your package manager" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]} with apt-get"
  { "${as_root[@]}" apt-get update -qq &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    || { echo "setup: apt-get could not install ${missing[*]}; install them by hand" >&2; exit 1; }
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV from $PYBIN (Python $ver)"
  "$PYBIN" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch: on these machines pip finds the CPU build (2.13.0+cpu) in its local
# wheel store; elsewhere set PIP_EXTRA_INDEX_URL to PyTorch's CPU index first.
"$VENV/bin/python" -m pip install -q -r requirements.txt 2>&1 | grep -v '^WARNING: Location' || true
# nvcc without cuBLAS (CPU machines, CI): cuBLAS from PyPI so that the CUDA code compiles.
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  cuda_root=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
  if [ ! -e "$cuda_root/include/cublas_v2.h" ] && [ ! -e /usr/local/cuda/include/cublas_v2.h ]; then
    "$VENV/bin/python" -m pip install -q -r requirements-cuda-build.txt 2>&1 | grep -v '^WARNING: Location' || true
  fi
fi
"$VENV/bin/python" -m pip install -q --no-deps -e . 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c 'import numpy, torch, tritonclient.grpc, sentencepiece, safetensors, pybind11, glmserve; assert numpy.__version__.startswith("1."), numpy.__version__' \
  || { echo "setup: the venv is incomplete (see pip's output above)" >&2; exit 1; }
touch "$VENV/.setup-done"
echo "setup: done ($VENV, Python $ver)"

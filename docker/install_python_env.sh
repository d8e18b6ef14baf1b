#!/usr/bin/env bash
# Docker step 2: the Python environment's heavy layer. Makes $VENV from the system
# python3 (the interpreter whose libpython the image's Python-backend stub loads,
# as scripts/setup.sh does) and installs requirements.txt into it. It runs before
# the sources are copied so that Docker caches it; scripts/setup.sh runs later on
# top of it (everything is then already there), adds our package and checks.
#
#   bash docker/install_python_env.sh            install
#   bash docker/install_python_env.sh --dry-run  resolve requirements.txt for the
#       image's interpreter and platform without installing (CI runs this): every
#       pin must have a wheel for TARGET_PYTHON on TARGET_GLIBC x86_64, and numpy
#       must stay < 2 (the r24.10 stub corrupts tensors with numpy 2).
# Environment:
#   VENV                 the venv to make (default .venv)
#   PIP_EXTRA_INDEX_URL  e.g. PyTorch's CPU wheel index: the image only converts
#                        checkpoints with torch, on the CPU, and the CPU wheel is GBs smaller
#   TARGET_PYTHON        --dry-run: the image's Python (default 3.10, Ubuntu 22.04)
#   TARGET_GLIBC         --dry-run: the image's glibc (default 2.35, Ubuntu 22.04)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
REQS=${REQS:-requirements.txt}

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
[ -f "$REQS" ] || { echo "install_python_env: $REQS is missing" >&2; exit 1; }

if [ "$DRY_RUN" = 1 ]; then
  TARGET_PYTHON=${TARGET_PYTHON:-3.10}
  TARGET_GLIBC=${TARGET_GLIBC:-2.35}
  pip_py=python3
  [ -x "$VENV/bin/python" ] && pip_py="$VENV/bin/python"
  # pip does not widen --platform to older manylinux tags: list every one the
  # target glibc accepts.
  plats=()
  for ((m = ${TARGET_GLIBC#*.}; m >= 17; m--)); do plats+=(--platform "manylinux_2_${m}_x86_64"); done
  plats+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64
    --platform manylinux1_x86_64 --platform linux_x86_64)
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "install_python_env: resolving $REQS for Python $TARGET_PYTHON, glibc $TARGET_GLIBC x86_64 (dry run)"
  if ! "$pip_py" -m pip install --dry-run --ignore-installed --quiet --only-binary=:all: \
    --python-version "$TARGET_PYTHON" --implementation cp "${plats[@]}" \
    --target "$tmp/target" --report "$tmp/report.json" -r "$REQS" 2>"$tmp/err"; then
    grep -v '^WARNING: Location' "$tmp/err" >&2 || true
    echo "install_python_env: $REQS does not resolve for Python $TARGET_PYTHON (a pin without a wheel for it?)" >&2
    exit 1
  fi
  "$pip_py" - "$tmp/report.json" <<'PYEOF'
import json
import sys

report = json.load(open(sys.argv[1]))
versions = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
numpy = versions.get("numpy")
if numpy is None or int(numpy.split(".")[0]) >= 2:
    sys.exit(f"install_python_env: numpy resolves to {numpy}; the Python-backend stub needs numpy < 2")
print(f"install_python_env: {len(versions)} packages resolve (numpy {numpy}); dry run: nothing installed")
PYEOF
  exit 0
fi

pybin=/usr/bin/python3
[ -x "$pybin" ] || pybin=$(command -v python3)
if [ ! -x "$VENV/bin/python" ]; then
  echo "install_python_env: creating $VENV from $pybin"
  "$pybin" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --no-cache-dir -q --upgrade pip
"$VENV/bin/python" -m pip install --no-cache-dir -q -r "$REQS"
"$VENV/bin/python" -c 'import numpy; assert numpy.__version__.startswith("1."), numpy.__version__'
echo "install_python_env: done ($("$VENV/bin/python" --version))"

#!/usr/bin/env bash
# Validates every Kubernetes manifest under docker/k8s/ strictly (unknown fields
# are errors) against the Kubernetes JSON schemas of several API versions, offline:
# the validator (kubernetes-validate, PyPI) carries the schemas inside its wheel.
# Exit status: 0 when every document of every file is valid, non-zero otherwise.
#
#   bash docker/validate_k8s.sh [FILE_OR_DIR ...]     (default: docker/k8s)
# Environment:
#   K8S_VERSIONS  Kubernetes versions to check against (default "1.29.0 1.33.0 1.37.0")
#   VENV          a venv that already has kubernetes-validate (default .venv); if it
#                 lacks it, a private venv is made in $BUILD/k8s-validate-venv from
#                 docker/requirements-validate.txt
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BUILD=${BUILD:-build}
K8S_VERSIONS=${K8S_VERSIONS:-"1.29.0 1.33.0 1.37.0"}

find_validator() {
  local py
  for py in "$VENV/bin/python" "$BUILD/k8s-validate-venv/bin/python"; do
    if [ -x "$py" ] && "$py" -c 'import kubernetes_validate' 2>/dev/null; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

if ! PY=$(find_validator); then
  pybin=$(command -v python3 || true)
  [ -x /usr/bin/python3 ] && pybin=/usr/bin/python3
  [ -n "$pybin" ] || { echo "validate_k8s: no python3 to install kubernetes-validate with" >&2; exit 2; }
  echo "validate_k8s: installing kubernetes-validate into $BUILD/k8s-validate-venv" >&2
  "$pybin" -m venv "$BUILD/k8s-validate-venv"
  "$BUILD/k8s-validate-venv/bin/python" -m pip install -q -r docker/requirements-validate.txt 2>&1 \
    | grep -v '^WARNING: Location' >&2 || true
  PY=$(find_validator) || { echo "validate_k8s: kubernetes-validate did not install" >&2; exit 2; }
fi

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(docker/k8s)
files=()
for t in "${targets[@]}"; do
  if [ -d "$t" ]; then
    while IFS= read -r f; do files+=("$f"); done < <(find "$t" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
  elif [ -f "$t" ]; then
    files+=("$t")
  else
    echo "validate_k8s: no such file or directory: $t" >&2
    exit 2
  fi
done
[ ${#files[@]} -gt 0 ] || { echo "validate_k8s: no manifests found in ${targets[*]}" >&2; exit 2; }

"$PY" - "$K8S_VERSIONS" "${files[@]}" <<'PYEOF'
# Every document must have apiVersion and kind, a schema must exist for it (a
# kind the validator does not know, e.g. a CRD, is an error, not a skip), and it
# must validate strictly against every requested Kubernetes version.
import sys

import kubernetes_validate
import yaml

versions = sys.argv[1].split()
failures = 0
checked = 0
for path in sys.argv[2:]:
    with open(path, encoding="utf-8") as fh:
        try:
            docs = [d for d in yaml.safe_load_all(fh) if d is not None]
        except yaml.YAMLError as exc:
            print(f"FAIL {path}: not valid YAML: {exc}")
            failures += 1
            continue
    if not docs:
        print(f"FAIL {path}: no Kubernetes object in the file")
        failures += 1
    for i, doc in enumerate(docs):
        where = f"{path}[{i}]"
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            print(f"FAIL {where}: not a Kubernetes object (apiVersion and kind are required)")
            failures += 1
            continue
        name = f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
        errors = []
        for ver in versions:
            try:
                kubernetes_validate.validate(doc, ver, strict=True)
            except kubernetes_validate.ValidationError as exc:
                at = ".".join(map(str, exc.path)) or "<root>"
                errors.append(f"k8s {ver}: {exc.message} (at {at})")
            except (
                kubernetes_validate.SchemaNotFoundError,
                kubernetes_validate.InvalidSchemaError,
                kubernetes_validate.utils.VersionNotSupportedError,
            ) as exc:
                errors.append(f"k8s {ver}: {exc.message}")
            else:
                checked += 1
        for err in errors:
            print(f"FAIL {where} {name}: {err}")
        if not errors:
            print(f"ok   {where} {name}")
        failures += len(errors)
print(f"validate_k8s: {checked} document checks passed, {failures} failed "
      f"(Kubernetes {', '.join(versions)}, strict)")
sys.exit(1 if failures else 0)
PYEOF

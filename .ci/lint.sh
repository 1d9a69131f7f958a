#!/usr/bin/env bash
# Static checks that need no build: ruff, cython-lint, the workflow files
# against GitHub's schema, and the pytest configuration CI relies on.
# (mypy needs numpy installed and runs in .ci/tests.sh.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tools="$(tools_venv)"
export PATH="$tools/bin:$PATH"
cd "$ROOT"

log "ruff check"
ruff check .

log "cython-lint src/"
shopt -s nullglob
cython_files=(src/*.pyx src/*.pxd src/*.pxi)
cython-lint "${cython_files[@]}"
echo "cython-lint: ${#cython_files[@]} files clean"

log "check-jsonschema .github/workflows/*.yml"
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

log "pytest configuration: warnings are errors"
python - <<'PY'
import tomllib
ini = tomllib.load(open("pyproject.toml", "rb"))["tool"]["pytest"]["ini_options"]
assert ini.get("filterwarnings", [None])[0] == "error", ini.get("filterwarnings")
print("filterwarnings =", ini["filterwarnings"])
PY

log "bash -n .ci/*"
for f in .ci/run .ci/*.sh; do bash -n "$f"; done
echo "shell syntax ok"

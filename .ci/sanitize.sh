#!/usr/bin/env bash
# The whole test suite against a build with -fsanitize=address,undefined and the
# debug directives (RNN_EXT_SANITIZE=1 RNN_EXT_DEBUG=1: bounds and wraparound
# checks, -O0 -g).  Fails on any test failure and on any sanitizer report.
#
# The build runs in a clean copy of the sources into its own venv, so the
# checkout's extension module is neither reused nor overwritten.  Python itself
# is not instrumented, so the AddressSanitizer runtime must be the first library
# loaded: it is preloaded (with UBSan's), found from the compiler that builds
# the extension (`gcc -print-file-name=libasan.so`).
#
# Settings, and why:
#   ASAN_OPTIONS detect_leaks=0      CPython does not free everything at exit
#                                    (interned strings, static types, module
#                                    state, NumPy's caches), so LeakSanitizer
#                                    would report thousands of exit-time "leaks"
#                                    that are not rnn_ext's; leaks are covered
#                                    by tests/test_memory.py instead
#   allocator_may_return_null=1      a test asking for terabytes (hostile model
#                                    files) must get MemoryError, as without
#                                    ASan, not an ASan abort
#   log_path=...                     reports from every process, test children
#                                    included, land in files checked at the end
#   UBSAN_OPTIONS halt_on_error=1:print_stacktrace=1
#   PYTHONMALLOC=malloc              Python objects through malloc, so ASan sees
#                                    every allocation, not pymalloc's arenas
#   RNN_EXT_SANITIZED=1              tests/test_memory.py skips: ASan's
#                                    quarantine grows RSS by design
#   RNN_EXT_PROPERTY_EXAMPLES=200    fewer hypothesis examples (the build is
#                                    ~5x slower); scripts/fuzz.py goes further
# Torch is not installed here: its parity tests skip (they test the math, which
# the normal build covers).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CC="${CC:-gcc}"
venv="$CI_DIR/sanitize"
src="$CI_DIR/sanitize-src"
reports="$CI_DIR/sanitize-reports"
new_venv "$venv"
source_copy "$src"
rm -rf "$reports"
mkdir -p "$reports"

asan="$("$CC" -print-file-name=libasan.so)"
ubsan="$("$CC" -print-file-name=libubsan.so)"
[[ -f $asan && -f $ubsan ]] || die "no ASan/UBSan runtime for $CC (got '$asan', '$ubsan')"

log "install a sanitized debug build (RNN_EXT_SANITIZE=1 RNN_EXT_DEBUG=1, CC=$CC)"
CC="$CC" RNN_EXT_SANITIZE=1 RNN_EXT_DEBUG=1 "$venv/bin/python" -m pip install -q "$src[test]"
(export LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0; assert_installed_import "$venv")
# (from outside the checkout, so the import cannot find the checkout's module)
so="$(cd "$(mktemp -d)" && LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0 \
      "$venv/bin/python" -c 'import rnn_ext._kernels as k; print(k.__file__)')"
# (ldd's output is captured first: under pipefail, `ldd | grep -q` fails at
# random when grep exits at the first match and ldd is killed by SIGPIPE)
deps="$(ldd "$so")"
grep -q libasan <<<"$deps" || die "$so is not linked against libasan: not a sanitized build"
(cd "$(mktemp -d)" && LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0 "$venv/bin/python" -c "
import rnn_ext._kernels as k
assert k.DEBUG is True, f'_kernels.DEBUG is {k.DEBUG!r} in a RNN_EXT_DEBUG=1 build'
print('sanitized debug build:', k.__file__)")

log "pytest against the sanitized build"
status=0
(
    cd "$(mktemp -d)"
    export LD_PRELOAD="$asan $ubsan"
    export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:log_path=$reports/asan"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan"
    export PYTHONMALLOC=malloc
    export RNN_EXT_SANITIZED=1
    export RNN_EXT_PROPERTY_EXAMPLES="${RNN_EXT_PROPERTY_EXAMPLES:-200}"
    PYTHONPATH="$ROOT/.ci" "$venv/bin/python" -m pytest -p pytest_installed \
        -p no:cacheprovider "$ROOT/tests"
) || status=$?

# A report is an ASan "ERROR:" or a UBSan "runtime error:".  The log files also
# hold ASan's warnings for allocations it refuses under allocator_may_return_null
# (the tests' terabyte requests, which become MemoryError): those are expected.
shopt -s nullglob
found=()
for f in "$reports"/*; do
    if grep -qE 'ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer' "$f"; then
        found+=("$f")
    fi
done
if (( ${#found[@]} )); then
    for f in "${found[@]}"; do
        printf '\n==== sanitizer report %s ====\n' "$f"
        head -n 80 "$f"
    done
    die "${#found[@]} sanitizer report(s) (pytest exit $status)"
fi
(( status == 0 )) || die "pytest failed under the sanitized build (exit $status)"
log "sanitized build: the whole suite passed, no sanitizer reports"

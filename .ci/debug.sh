#!/usr/bin/env bash
# The same test suite against a build with RNN_EXT_DEBUG=1 (bounds and
# wraparound checks on, -O0 -g).  The build runs in a clean copy of the
# sources, so the checkout's generated C and extension module are neither
# reused nor overwritten; the suite then runs from outside the source tree.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

venv="$CI_DIR/debug"
src="$CI_DIR/debug-src"
new_venv "$venv"
source_copy "$src"

log "install a debug build (RNN_EXT_DEBUG=1)"
RNN_EXT_DEBUG=1 pip_install "$venv/bin/python" "$src[test]"
assert_installed_import "$venv"
cd "$(mktemp -d)"   # from here on, the source tree is not on sys.path
"$venv/bin/python" -c "
import rnn_ext._kernels as k
assert k.DEBUG is True, f'_kernels.DEBUG is {k.DEBUG!r} in a RNN_EXT_DEBUG=1 build'
print('_kernels.DEBUG =', k.DEBUG)"

log "pytest against the debug build"
PATH="$venv/bin:$PATH" PYTHONPATH="$ROOT/.ci" "$venv/bin/python" -m pytest -p pytest_installed \
    -p no:cacheprovider "$ROOT/tests"

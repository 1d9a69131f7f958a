#!/usr/bin/env bash
# The README's test command in a fresh venv, with PyTorch for the parity tests;
# then mypy on rnn_ext/ and stubtest on the compiled module's stub, which
# need the package and numpy installed to see real types.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

venv="$CI_DIR/test"
new_venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
cd "$ROOT"

log "install (editable, with test extras) and $TORCH_SPEC (CPU build)"
pip_install python -e ".[test]"
pip_install python "$TORCH_SPEC"
python -c "import torch; print('torch', torch.__version__)"

log "show_config"
python -c "from rnn_ext._config import show_config; show_config()"

log "pytest (the README's test command; warnings are errors)"
python -m pytest

log "mypy rnn_ext/ and stubtest rnn_ext._kernels"
pip_install python mypy
python -m mypy
python -m mypy.stubtest --mypy-config-file pyproject.toml \
    --allowlist .ci/stubtest-allowlist.txt rnn_ext._kernels

#!/usr/bin/env bash
# The README's test command in a fresh venv, with PyTorch and Dask installed so
# their tests run; then mypy on rnn_ext/ and stubtest on the compiled module's stub,
# which need the package and numpy installed to see real types.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

venv="$CI_DIR/test"
new_venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
cd "$ROOT"

log "install (editable, with the test, plot and examples extras); $TORCH_SPEC (CPU build) and the dask extra"
pip_install python -e ".[test,plot,examples]"
# The optional peers, so their tests run rather than skip: torch pinned to the
# one CPU build tested against, dask as the `dask` extra asks.
mapfile -t dask_reqs < <(python -c 'import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dask"]))')
pip_install python "$TORCH_SPEC" "${dask_reqs[@]}"
python -c "import torch, dask, distributed
print('torch', torch.__version__, ' dask', dask.__version__, ' distributed', distributed.__version__)"
# onnx and onnxruntime as the `onnx` extra asks, so tests/test_onnx.py runs rather than skips
mapfile -t onnx_reqs < <(python -c 'import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["onnx"]))')
pip_install python "${onnx_reqs[@]}"
python -c "import onnx, onnxruntime
print('onnx', onnx.__version__, ' onnxruntime', onnxruntime.__version__)"

log "show_config"
python -c "import rnn_ext; rnn_ext.show_config()"

log "pytest (the README's test command; warnings are errors)"
python -m pytest

log "mypy rnn_ext/ and stubtest rnn_ext._kernels, rnn_ext._flat, rnn_ext._wsr, rnn_ext._sample"
pip_install python mypy
python -m mypy
python -m mypy.stubtest --mypy-config-file pyproject.toml \
    --allowlist .ci/stubtest-allowlist.txt rnn_ext._kernels rnn_ext._flat rnn_ext._wsr \
    rnn_ext._sample

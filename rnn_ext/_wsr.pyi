# Type stub of src/_wsr.pyx, the Python-callable twin of the weight-stationary
# recurrence (src/wsr.h).  Keep in step with it: .ci/tests.sh runs
# `python -m mypy.stubtest rnn_ext._wsr`.
#
# Arrays are C-contiguous float32 (lengths: intp); shapes are in the docstrings.
import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.float32]
_I = npt.NDArray[np.intp]

PATHS: tuple[str, ...]

def pack(W: _F, out: tuple[_F, _F] | None = None) -> tuple[_F, _F]: ...
def packed_size(H: int) -> int: ...
def forward_packed(
    packed_fwd: _F,
    hs: _F,
    reverse: bool = False,
    lengths: _I | None = None,
    relu: bool = False,
    nthreads: int = 1,
) -> None: ...
def backward_packed(
    packed_bwd: _F,
    delta: _F,
    hs: _F,
    reverse: bool = False,
    lengths: _I | None = None,
    relu: bool = False,
    nthreads: int = 1,
) -> None: ...
def forward(
    W: _F,
    hs: _F,
    reverse: bool = False,
    lengths: _I | None = None,
    relu: bool = False,
    nthreads: int = 1,
) -> None: ...
def backward(
    W: _F,
    delta: _F,
    hs: _F,
    reverse: bool = False,
    lengths: _I | None = None,
    relu: bool = False,
    nthreads: int = 1,
) -> None: ...
def gemm_tn(A: _F, B: _F) -> _F | None: ...
def path() -> str: ...
def set_path(name: str) -> None: ...
def available_paths() -> tuple[str, ...]: ...
def blas_forward(W: _F, hs: _F, relu: bool = False) -> None: ...
def blas_backward(W: _F, delta: _F, hs: _F, relu: bool = False) -> None: ...

# Type stub of the compiled core, src/_kernels.pyx.  Keep in step with it:
# .ci/tests.sh runs `python -m mypy.stubtest rnn_ext._kernels`.
#
# The kernels take C-contiguous arrays of one floating dtype (float32 or
# float64, fused) and intp index arrays; rnn_ext/_validation.py makes them so.
# Shapes are in the docstrings of the .pyx.
import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_I = npt.NDArray[np.intp]

DEBUG: bool
SIMD_CLONES: bool

FORWARD: int
LOSS: int
GRAD_V: int
FULL: int

def run_pass(
    hs: _F,
    Z: _F,
    xf: _F | None,
    xi: _I | None,
    yi: _I | None,
    ys: _F | None,
    U: _F,
    UT: _F | None,
    W: _F,
    WT: _F | None,
    b: _F | None,
    V: _F,
    c: _F | None,
    lengths: _I | None,
    relu: bool,
    ignore_index: int,
    scale: float,
    what: int,
    dV: _F | None,
    dc: _F | None,
    delta: _F | None,
    dU: _F | None,
    dUT: _F | None,
    dW: _F | None,
    db: _F | None,
    dh0: _F | None,
    dx: _F | None,
) -> float: ...
def id_range(ids: _I, ignore: int, use_ignore: bool) -> tuple[int, int, int]: ...

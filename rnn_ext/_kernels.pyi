# Type stub of the compiled core, src/_kernels.pyx.  Keep in step with it:
# .ci/tests.sh runs `python -m mypy.stubtest rnn_ext._kernels`.
#
# The kernels take C-contiguous arrays of one floating dtype (float32 or
# float64, fused) and intp index arrays; rnn_ext/_validation.py makes them so.
# Shapes are in the docstrings of the .pyx.
from typing import Any, overload

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

_F = npt.NDArray[np.floating]
_I = npt.NDArray[np.intp]

DEBUG: bool
SIMD_CLONES: bool

FORWARD: int
LOSS: int
GRAD_V: int
FULL: int
SHORT_MAX: int

SOFTMAX: int

def wsr_packed_size(H: int) -> int: ...
def wsr_path() -> str: ...
MSE: int

def layer_forward(
    hs: _F, xf: _F | None, xi: _I | None, flat: _F, offs: _I, D: int, dirs: int,
    masks: _F | None, xin: _F | None, WT: _F | None, UT: _F | None,
    lengths: _I | None, relu: bool, packed: _F | None = ..., nthreads: int = ...,
) -> None: ...
def layer_backward(
    delta: _F, hs: _F, xf: _F | None, xi: _I | None, flat: _F, offs: _I, D: int, dirs: int,
    masks: _F | None, xin: _F | None, d_hn: _F | None, dflat: _F, dx: _F | None, dh0: _F,
    dUT: _F | None, G: _F, dX: _F | None, lengths: _I | None, relu: bool,
    packed: _F | None = ..., nthreads: int = ...,
) -> None: ...
def head_pass(
    Z: _F, F: _F, yi: _I | None, ys: _F | None, V: _F, c: _F | None, lengths: _I | None,
    B: int, loss: int, ignore_index: int, scale: float, what: int, dV: _F | None,
    dc: _F | None, dF: _F | None,
) -> float: ...
@overload
def step_pass(
    h: _F, xf: _F | None, xi: _I | int | None, flat: _F, offs: _I, D: int, relu: bool,
    V: _F, c: _F | None, batched: bool,
) -> tuple[_F, _F]: ...
@overload
def step_pass(
    h: _F, xf: _F | None, xi: _I | int | None, flat: _F, offs: _I, D: int, relu: bool,
    V: None, c: None, batched: bool,
) -> tuple[_F, None]: ...
def model_pass(
    hs: _F, Z: _F, xf: _F | None, xi: _I | None, yi: _I | None, ys: _F | None, flat: _F,
    offs: _I, D: int, dirs: int, V: _F, c: _F | None, masks: _F | None, xin: _F | None,
    WT: _F | None, UT: _F | None, lengths: _I | None, relu: bool, ignore_index: int,
    scale: float, what: int, dflat: _F | None, dV: _F | None, dc: _F | None,
    delta: _F | None, dx: _F | None, dh0: _F | None, dUT: _F | None, G: _F | None,
    dX: _F | None, packed: _F | None = ..., nthreads: int = ...,
) -> float: ...

@disjoint_base
class StepPass:
    def __init__(
        self, flat: _F, offs: _I, D: int, H: int, V: _F | None, c: _F | None, relu: bool,
    ) -> None: ...
    def step(self, x_t: object, h: object) -> tuple[_F, _F] | _F | None: ...

@disjoint_base
class FastPass(StepPass):
    def __init__(
        self, flat: _F, offs: _I, D: int, H: int, V: _F, c: _F | None, relu: bool,
        n_grad: int, off_V: int, off_c: int,
    ) -> None: ...
    def run(
        self, what: int, x: _I, y: _I | None, UT: bool, WT: bool, packed: bool,
        nthreads: int,
    ) -> tuple[float, _F | None, _F | None, _F | None, _F | None, _F | None] | None: ...

def id_range(ids: _I, ignore: int, use_ignore: bool) -> tuple[int, int, int]: ...

def model_step(self: Any, x_t: object, h: object = ...) -> tuple[_F, _F]: ...
def layer_step(self: Any, x_t: object, h: object = ...) -> _F: ...

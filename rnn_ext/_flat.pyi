# Type stub of the compiled optimizer and clipping loops, src/_flat.pyx.  Keep
# in step with it: .ci/tests.sh runs `python -m mypy.stubtest rnn_ext._flat`.
#
# Every array is 1-D, C-contiguous, float32 or float64 (one dtype per call);
# rnn_ext/optim.py and rnn_ext/clip.py make them so.
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_T = TypeVar("_T")

SIMD_CLONES: bool
FUSED_DIVISION: bool

def first_nonfinite(a: _F) -> int: ...
def first_nan(a: _F) -> int: ...
def sumsq(a: _F) -> float: ...
def scale(g: _F, s: float) -> None: ...
def clip_value(g: _F, v: float) -> None: ...
def sgd_step(
    p: _F, g: _F, buf: _F, lr: float, momentum: float, step: int, clip: float = ...
) -> None: ...
def adagrad_step(
    p: _F, g: _F, sums: _F, lr: float, eps: float, step: int, clip: float = ...
) -> None: ...
def adam_step(
    p: _F,
    g: _F,
    m: _F,
    v: _F,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    clip: float = ...,
) -> None: ...
def views(
    flat: _F, spans: tuple[tuple[str, int, tuple[int, ...]], ...]
) -> dict[str, _F]: ...
def record(cls: type[_T], values: tuple[object, ...]) -> _T: ...

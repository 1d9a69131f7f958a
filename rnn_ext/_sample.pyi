# Type stub of the compiled sampling loop, src/_sample.pyx.  Keep in step with
# it: .ci/tests.sh runs `python -m mypy.stubtest rnn_ext._sample`.
#
# h and flat share the model's dtype (float32 or float64); V, c and u are
# float64, offs and out intp, all C-contiguous; rnn_ext/text.py makes them so.
# Shapes are in the docstring of the .pyx.
import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_D = npt.NDArray[np.float64]
_I = npt.NDArray[np.intp]

def generate(
    h: _F, flat: _F, offs: _I, D: int, relu: bool, V: _D, c: _D | None, temperature: float,
    top_k: int, u: _D | None, out: _I, step_last: bool,
) -> int: ...

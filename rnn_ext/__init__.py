"""rnn_ext: a fast, exact Elman RNN for NumPy.

Forward propagation and backpropagation through time run in typed Cython
calling BLAS; :class:`RNN` wraps them; :mod:`rnn_ext.oracle` is the
pure-Python specification every result is checked against.
"""

try:
    from . import _kernels  # noqa: F401  (the compiled core; everything else needs it)
except ImportError as _exc:
    # Python's own message here ("partially initialized module ... circular
    # import") hides the usual cause: running from the source tree, which has
    # no compiled core, instead of the installed package.
    import importlib.machinery as _machinery
    import os as _os

    _here = _os.path.dirname(_os.path.abspath(__file__))
    _build = ('build it in place with the README\'s test command, python -m pip install -e ".[test]" '
              "(or python setup.py build_ext --inplace)")
    if not any(_os.path.exists(_os.path.join(_here, "_kernels" + s))
               for s in _machinery.EXTENSION_SUFFIXES):
        raise ImportError(
            f"rnn_ext's compiled core (_kernels) is not built in {_here}: this is rnn_ext's source "
            "tree, found before the installed package. Run Python from another directory to use "
            f"the installed rnn_ext, or {_build}.") from None
    raise ImportError(f"rnn_ext's compiled core in {_here} failed to import ({_exc}); "
                      f"rebuild it: {_build}.") from _exc

from . import heads, optim, oracle, text
from ._config import show_config
from ._results import (
    ForwardResult,
    Gradients,
    HeadGradients,
    RecurrentForward,
    RecurrentGradients,
)
from ._threads import set_num_threads, threads
from ._version import __version__
from .clip import clip_grad_norm, clip_grad_value
from .gradcheck import gradcheck
from .io import load
from .model import RNN
from .recurrent import Recurrent
from .training import train

__all__ = [
    "RNN",
    "Recurrent",
    "heads",
    "ForwardResult",
    "Gradients",
    "HeadGradients",
    "RecurrentForward",
    "RecurrentGradients",
    "clip_grad_norm",
    "clip_grad_value",
    "gradcheck",
    "load",
    "optim",
    "oracle",
    "set_num_threads",
    "show_config",
    "text",
    "threads",
    "train",
    "__version__",
]

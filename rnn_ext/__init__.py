"""rnn_ext: a fast, exact Elman RNN for NumPy.

Forward propagation and backpropagation through time run in typed Cython
calling BLAS; :class:`RNN` wraps them; :mod:`rnn_ext.oracle` is the
pure-Python specification every result is checked against.
"""

from . import oracle
from ._results import ForwardResult, Gradients
from ._threads import set_num_threads, threads
from ._version import __version__
from .gradcheck import gradcheck
from .model import RNN

__all__ = [
    "RNN",
    "ForwardResult",
    "Gradients",
    "gradcheck",
    "oracle",
    "set_num_threads",
    "threads",
    "__version__",
]

"""rnn_ext: a fast, exact Elman RNN for NumPy.

Forward propagation and backpropagation through time run in typed Cython
calling BLAS; :class:`RNN` wraps them; :mod:`rnn_ext.oracle` is the
pure-Python specification every result is checked against.
"""

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

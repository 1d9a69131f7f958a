"""What the passes return: plain containers of numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ForwardResult", "Gradients", "HeadGradients", "RecurrentForward", "RecurrentGradients"]


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """The forward pass of eqs. (1)-(2).

    Attributes
    ----------
    h : ndarray of shape (T, B, H)
        Hidden states h_t; zero at steps past a sequence's length.
        (B, T, H) with ``batch_first=True``; (T, H) for unbatched input.
    probs : ndarray of shape (T, B, K)
        Output probabilities softmax(z_t), laid out like ``h``.
    h_last : ndarray of shape (B, H)
        The state at each sequence's last valid step (the top layer's forward
        direction); (H,) for unbatched input.
    h_n : ndarray of shape (L*dirs, B, H)
        Every layer-direction's final state, PyTorch's order; (L*dirs, H)
        for unbatched input.
    """

    h: np.ndarray
    probs: np.ndarray
    h_last: np.ndarray
    h_n: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Gradients:
    """Every gradient of the loss (eqs. (4)-(7)), shaped like what it differentiates.

    Attributes
    ----------
    U, W, V : ndarray
        dL/dU (H, D), dL/dW (H, H), dL/dV (K, H).
    b, c : ndarray or None
        dL/db (H,) and dL/dc (K,); None for a model without bias.
    h0 : ndarray
        dL/dh0, shaped like h0: (B, H), or (H,) for unbatched input.
    x : ndarray or None
        dL/dx shaped like x for float input; None for int ids.
    h_last : ndarray
        The final hidden state (as ``ForwardResult.h_last``), to carry into
        the next chunk in truncated BPTT.
    h_n : ndarray or None
        Every layer-direction's final state (as ``ForwardResult.h_n``).
    flat : ndarray or None
        Every parameter's gradient, laid out like the model's ``flat``.
    """

    U: np.ndarray
    W: np.ndarray
    V: np.ndarray
    b: np.ndarray | None
    c: np.ndarray | None
    h0: np.ndarray
    x: np.ndarray | None
    h_last: np.ndarray
    h_n: np.ndarray | None = None
    flat: np.ndarray | None = None
    named: dict | None = field(default=None, repr=False)

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameter gradients present, keyed like ``RNN.parameters()``."""
        if self.named is not None:
            return dict(self.named)
        names = ("U", "W", "V", "b", "c")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The same as :meth:`parameters`: views into ``flat``."""
        return self.parameters()


@dataclass(frozen=True, slots=True)
class RecurrentForward:
    """A :class:`~rnn_ext.Recurrent` layer's forward pass.

    Attributes
    ----------
    output : ndarray of shape (T, B, dirs*H)
        The top layer's states, [forward, reverse] as PyTorch concatenates
        them; zero past each sequence's length.  (B, T, ...) with
        ``batch_first``; (T, dirs*H) for unbatched input.  Read-only where
        it is a view of the states the backward needs.
    h_n : ndarray of shape (L*dirs, B, H)
        Each layer-direction's final state, in PyTorch's order; (L*dirs, H)
        for unbatched input.
    """

    output: np.ndarray
    h_n: np.ndarray
    _layer: Any = field(repr=False)
    _batch: Any = field(repr=False)
    _hs: np.ndarray = field(repr=False)
    _masks: np.ndarray | None = field(repr=False)
    _xin: np.ndarray | None = field(repr=False)
    _version: int = field(repr=False)


@dataclass(frozen=True, slots=True)
class RecurrentGradients:
    """dL/d(everything a :class:`~rnn_ext.Recurrent` forward read).

    Attributes
    ----------
    flat : ndarray
        Every parameter's gradient, laid out like the layer's ``flat``.
    params : dict of str to ndarray
        Named views into ``flat``, keyed like the layer's ``params``.
    x : ndarray or None
        dL/dx shaped like x; None for int ids.
    h0 : ndarray
        dL/dh0 of shape (L*dirs, B, H) (or (L*dirs, H) unbatched).
    """

    flat: np.ndarray
    params: dict
    x: np.ndarray | None
    h0: np.ndarray

    def parameters(self) -> dict[str, np.ndarray]:
        return dict(self.params)


@dataclass(frozen=True, slots=True)
class HeadGradients:
    """dL/d(a head's parameters): ``flat`` and named views ``params`` (V, c)."""

    flat: np.ndarray
    params: dict

    def parameters(self) -> dict[str, np.ndarray]:
        return dict(self.params)

"""What the passes return: plain containers of numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ForwardResult", "Gradients"]


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
        The state at each sequence's last valid step; (H,) for unbatched input.
    """

    h: np.ndarray
    probs: np.ndarray
    h_last: np.ndarray


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
    """

    U: np.ndarray
    W: np.ndarray
    V: np.ndarray
    b: np.ndarray | None
    c: np.ndarray | None
    h0: np.ndarray
    x: np.ndarray | None
    h_last: np.ndarray

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameter gradients present, keyed like ``RNN.parameters()``."""
        names = ("U", "W", "V", "b", "c")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

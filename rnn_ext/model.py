"""The RNN class: parameters, validation, and the calls into the kernels."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _kernels
from ._results import ForwardResult, Gradients
from ._threads import pass_threads
from ._validation import (
    NONLINEARITIES,
    Batch,
    check_batch,
    check_dtype,
    check_flag,
    check_ignore_index,
    check_parameter,
    check_reduction,
    check_seed,
    check_size,
)

__all__ = ["RNN"]

_FORWARD, _LOSS, _GRAD_V, _FULL = _kernels.FORWARD, _kernels.LOSS, _kernels.GRAD_V, _kernels.FULL


class RNN:
    r"""An Elman RNN with a softmax output layer (DESIGN.md §1).

    .. math::

        h_t = f(U x_t + W h_{t-1} + b), \quad
        \hat y_t = \mathrm{softmax}(V h_t + c), \quad
        L = -\sum_t y_t \cdot \log \hat y_t

    with f = tanh (or relu) and h_{-1} = h0 (zeros by default).  Equivalent to::

        h = h0
        for t in range(T):
            h = np.tanh(x[t] @ U.T + h @ W.T + b)     # eq. (1)
            probs[t] = softmax(h @ V.T + c)           # eq. (2)

    Parameters
    ----------
    input_size : int
        D, the size of x_t (or the number of distinct input ids).
    hidden_size : int
        H, the size of h_t.
    output_size : int
        K, the number of classes.
    bias : bool, default True
        With False, b and c are absent and the equations are the book's exactly.
    nonlinearity : {"tanh", "relu"}, default "tanh"
    dtype : float32 or float64, default float32
        The dtype of every parameter and of every array returned.
    seed : int or None
        Seed for ``numpy.random.default_rng``; parameters are drawn, as in
        PyTorch, uniformly from [-1/sqrt(H), 1/sqrt(H)].
    batch_first : bool, default False
        With True, batched x, y, h, probs and dx are (B, T, ...), not (T, B, ...).

    Attributes
    ----------
    U : ndarray of shape (H, D)
    W : ndarray of shape (H, H)
    V : ndarray of shape (K, H)
    b : ndarray of shape (H,) or None
    c : ndarray of shape (K,) or None
    vocab : rnn_ext.text.Vocab or None
        Set when the model was trained on text.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, *,
                 bias: bool = True, nonlinearity: str = "tanh", dtype: Any = np.float32,
                 seed: int | None = None, batch_first: bool = False) -> None:
        # The configuration is fixed at construction (read-only properties):
        # the kernels size every buffer from it.
        self._input_size = check_size("input_size", input_size)
        self._hidden_size = check_size("hidden_size", hidden_size)
        self._output_size = check_size("output_size", output_size)
        self._bias = check_flag("bias", bias)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        self._nonlinearity = nonlinearity
        self._dtype = check_dtype(dtype)
        self.batch_first = batch_first
        self.vocab = None
        D, H, K = self.input_size, self.hidden_size, self.output_size
        rng = np.random.default_rng(check_seed(seed))
        bound = 1.0 / np.sqrt(H)

        def draw(*shape: int) -> np.ndarray:
            return rng.uniform(-bound, bound, size=shape).astype(self.dtype)

        self._U, self._W = draw(H, D), draw(H, H)
        self._b = draw(H) if self.bias else None
        self._V = draw(K, H)
        self._c = draw(K) if self.bias else None

    # -- configuration --------------------------------------------------------

    @property
    def input_size(self) -> int:
        """D: the size of x_t, or the number of distinct input ids."""
        return self._input_size

    @property
    def hidden_size(self) -> int:
        """H: the size of h_t."""
        return self._hidden_size

    @property
    def output_size(self) -> int:
        """K: the number of classes."""
        return self._output_size

    @property
    def bias(self) -> bool:
        """Whether b and c exist."""
        return self._bias

    @property
    def nonlinearity(self) -> str:
        """"tanh" or "relu"."""
        return self._nonlinearity

    @property
    def dtype(self) -> np.dtype:
        """float32 or float64: the dtype of every parameter and result."""
        return self._dtype

    @property
    def batch_first(self) -> bool:
        """With True, batched x, y, h, probs and dx are (B, T, ...)."""
        return self._batch_first

    @batch_first.setter
    def batch_first(self, value: Any) -> None:
        self._batch_first = check_flag("batch_first", value)

    # -- parameters ---------------------------------------------------------

    def _set(self, name: str, value: Any, shape: tuple[int, ...]) -> None:
        setattr(self, "_" + name, check_parameter(name, value, shape, self.dtype))

    def _set_bias(self, name: str, value: Any, shape: tuple[int, ...]) -> None:
        if not self.bias:
            if value is not None:
                raise ValueError(f"this model has bias=False; {name} must stay None")
            return
        if value is None:
            raise ValueError(f"this model has bias=True; {name} must be an array of shape {shape}, got None")
        self._set(name, value, shape)

    @property
    def U(self) -> np.ndarray:
        """Input-to-hidden weights, (H, D) (PyTorch ``weight_ih_l0``)."""
        return self._U

    @U.setter
    def U(self, value: Any) -> None:
        self._set("U", value, (self.hidden_size, self.input_size))

    @property
    def W(self) -> np.ndarray:
        """Hidden-to-hidden weights, (H, H) (PyTorch ``weight_hh_l0``)."""
        return self._W

    @W.setter
    def W(self, value: Any) -> None:
        self._set("W", value, (self.hidden_size, self.hidden_size))

    @property
    def V(self) -> np.ndarray:
        """Hidden-to-output weights, (K, H) (``nn.Linear(H, K).weight``)."""
        return self._V

    @V.setter
    def V(self, value: Any) -> None:
        self._set("V", value, (self.output_size, self.hidden_size))

    @property
    def b(self) -> np.ndarray | None:
        """Hidden bias, (H,), or None (PyTorch ``bias_ih_l0 + bias_hh_l0``)."""
        return self._b

    @b.setter
    def b(self, value: Any) -> None:
        self._set_bias("b", value, (self.hidden_size,))

    @property
    def c(self) -> np.ndarray | None:
        """Output bias, (K,), or None (``nn.Linear.bias``)."""
        return self._c

    @c.setter
    def c(self, value: Any) -> None:
        self._set_bias("c", value, (self.output_size,))

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameters present, by name: the live arrays, not copies."""
        p = {"U": self._U, "W": self._W, "V": self._V, "b": self._b, "c": self._c}
        return {n: a for n, a in p.items() if a is not None}

    def __repr__(self) -> str:
        return (f"RNN(input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"output_size={self.output_size}, bias={self.bias}, "
                f"nonlinearity={self.nonlinearity!r}, dtype={self.dtype.name}, "
                f"batch_first={self.batch_first})")

    # -- passes -------------------------------------------------------------

    def _batch(self, x: Any, y: Any, h0: Any, lengths: Any, ignore_index: int = -100) -> Batch:
        return check_batch(x, y, h0, lengths, D=self.input_size, H=self.hidden_size,
                           K=self.output_size, dtype=self.dtype,
                           batch_first=self.batch_first, ignore_index=ignore_index)

    def _via_UT(self, batch: Batch) -> bool:
        # Gathering ids from U.T's rows (and scatter-adding dU into dU.T's)
        # beats strided column access once the rows outnumber the columns
        # to transpose.
        return batch.xi is not None and batch.T * batch.B >= self.input_size

    def _WT(self, batch: Batch) -> np.ndarray | None:
        # For B > 1 the recurrence reads W.T's rows (see rnn_forward); one
        # H*H copy per pass against T GEMMs of B*H*H.
        return np.ascontiguousarray(self._W.T) if batch.B > 1 else None

    def _threads(self, batch: Batch):
        # the BLAS thread count, chosen once around the whole pass
        return pass_threads(batch.T, batch.B, self.input_size, self.hidden_size,
                            self.output_size)

    def _hidden_buffer(self, batch: Batch) -> np.ndarray:
        # hs is (T+1, B, H) with hs[0] = h0, so H and H_prev are both contiguous
        hs = np.empty((batch.T + 1, batch.B, self.hidden_size), dtype=self.dtype)
        hs[0] = batch.h0
        return hs

    def _h_last(self, hs: np.ndarray, batch: Batch) -> np.ndarray:
        if batch.lengths is None:
            h_last = hs[batch.T].copy()
        else:
            h_last = hs[batch.lengths, np.arange(batch.B)]
        return h_last if batch.batched else h_last[0]

    def _sequence(self, a: np.ndarray, batch: Batch) -> np.ndarray:
        """A (T*B, n) or (T, B, n) kernel array laid out as the user's x was."""
        a = a.reshape(batch.T, batch.B, -1)
        if not batch.batched:
            return a[:, 0]
        return a.swapaxes(0, 1) if self.batch_first else a

    def forward(self, x: Any, h0: Any = None, lengths: Any = None) -> ForwardResult:
        """Hidden states and output probabilities, eqs. (1)-(2).

        Parameters
        ----------
        x : ndarray of shape (T, B) int ids, or (T, B, D) floats
            Unbatched (T,) or (T, D) also accepted; (B, T, ...) with batch_first.
            Id i stands for the one-hot e_i.
        h0 : ndarray of shape (B, H), or (H,) for unbatched x; default zeros
        lengths : ndarray of shape (B,), optional
            Valid steps of each sequence, in [1, T], any order.  Past its
            length a sequence's h is zero and h_last is its last valid state
            (PyTorch's packed-sequence semantics).

        Returns
        -------
        ForwardResult
            ``.h`` (T, B, H), ``.probs`` (T, B, K), ``.h_last`` (B, H).
        """
        batch = self._batch(x, None, h0, lengths)
        _, hs, Z = self._pass(_FORWARD, batch, {})
        return ForwardResult(self._sequence(hs[1:], batch), self._sequence(Z, batch),
                             self._h_last(hs, batch))

    def _pass(self, what: int, batch: Batch, g: dict[str, Any], ignore_index: int = -100,
              scale: float = 1.0) -> tuple[float, np.ndarray, np.ndarray]:
        """One kernel pass: (summed loss, hs, Z), the gradients written into g's arrays."""
        hs = self._hidden_buffer(batch)
        Z = np.empty((batch.T * batch.B, self.output_size), dtype=self.dtype)
        UT = np.ascontiguousarray(self._U.T) if self._via_UT(batch) else None
        with self._threads(batch):
            total = _kernels.run_pass(
                hs, Z, batch.xf, batch.xi, batch.yi, batch.ys, self._U, UT,
                self._W, self._WT(batch), self._b, self._V, self._c, batch.lengths,
                self.nonlinearity == "relu", ignore_index, scale, what, g.get("V"),
                g.get("c"), g.get("delta"), g.get("U"), g.get("UT"), g.get("W"), g.get("b"),
                g.get("h0"), g.get("x"))
        return total, hs, Z

    def _run(self, what: int, x: Any, y: Any, h0: Any, lengths: Any, reduction: str,
             ignore_index: int):
        reduction = check_reduction(reduction)
        ignore_index = check_ignore_index(ignore_index)
        if y is None:
            raise TypeError("y (the targets) is required, got None")
        batch = self._batch(x, y, h0, lengths, ignore_index)
        T, B, D, H, K = batch.T, batch.B, self.input_size, self.hidden_size, self.output_size
        dt = self.dtype
        mean = reduction == "mean"
        scale = 1.0 / batch.count if mean and batch.count else (0.0 if mean else 1.0)
        g: dict[str, Any] = {}
        if what >= _GRAD_V:
            g["V"] = np.empty((K, H), dtype=dt)
            g["c"] = np.empty(K, dtype=dt) if self.bias else None
        if what == _FULL:
            g["delta"] = np.empty((T, B, H), dtype=dt)
            g["U"] = np.empty((H, D), dtype=dt)
            g["UT"] = np.empty((D, H), dtype=dt) if self._via_UT(batch) else None
            g["W"] = np.empty((H, H), dtype=dt)
            g["b"] = np.empty(H, dtype=dt) if self.bias else None
            g["h0"] = np.empty((B, H), dtype=dt)
            g["x"] = np.empty((T * B, D), dtype=dt) if batch.xf is not None else None
        total, hs, _ = self._pass(what, batch, g, ignore_index, scale)
        loss = total * scale if mean else total
        return float(loss), batch, hs, g

    def loss(self, x: Any, y: Any, h0: Any = None, lengths: Any = None,
             reduction: str = "sum", ignore_index: int = -100) -> float:
        """The cross-entropy loss of eq. (3), a Python float.

        Parameters
        ----------
        x, h0, lengths
            As in :meth:`forward`.
        y : ndarray of shape (T, B) int class ids, or (T, B, K) target rows
            Ids equal to ``ignore_index`` count nothing.  Rows are one-hot or
            probability distributions: L_t = -Σ_k y_tk log ŷ_tk.
        reduction : {"sum", "mean"}
            "sum" is the book's L (over time and batch); "mean" divides by the
            number of counted targets (0.0 when none counts).
        ignore_index : int, default -100

        The loss is accumulated in float64 whatever the model's dtype.
        """
        return self._run(_LOSS, x, y, h0, lengths, reduction, ignore_index)[0]

    def grad_V(self, x: Any, y: Any, h0: Any = None, lengths: Any = None,
               reduction: str = "sum", ignore_index: int = -100):
        """The loss and its gradient with respect to the output layer, eq. (4).

        dL/dV = Σ_t (ŷ_t - y_t) ⊗ h_t and dL/dc = Σ_t (ŷ_t - y_t).
        Arguments as in :meth:`loss`.

        Returns
        -------
        loss : float
        dV : ndarray of shape (K, H)
        dc : ndarray of shape (K,), or None without bias
        """
        loss, _, _, g = self._run(_GRAD_V, x, y, h0, lengths, reduction, ignore_index)
        return loss, g["V"], g["c"]

    def loss_and_grad(self, x: Any, y: Any, h0: Any = None, lengths: Any = None,
                      reduction: str = "sum", ignore_index: int = -100):
        """The loss and every gradient by backpropagation through time, eqs. (3)-(7).

        δ_t = f'(a_t) ⊙ (Vᵀ(ŷ_t - y_t) + Wᵀ δ_{t+1});  dW = Σ δ_t ⊗ h_{t-1},
        dU = Σ δ_t ⊗ x_t, db = Σ δ_t, dh0 = Wᵀ δ_0, dx_t = Uᵀ δ_t.
        Arguments as in :meth:`loss`.

        Returns
        -------
        loss : float
        grads : Gradients
            ``.U .W .V .b .c`` like the parameters, ``.h0`` like h0, ``.x``
            like x (None for ids), ``.h_last`` the final state (B, H).
        """
        loss, batch, hs, g = self._run(_FULL, x, y, h0, lengths, reduction, ignore_index)
        dh0 = g["h0"] if batch.batched else g["h0"][0]
        dx = self._sequence(g["x"], batch) if g["x"] is not None else None
        return loss, Gradients(U=g["U"], W=g["W"], V=g["V"], b=g["b"], c=g["c"], h0=dh0,
                               x=dx, h_last=self._h_last(hs, batch))

    # -- interop and files ----------------------------------------------------

    def save(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Write the model to an ``.npz`` file (see :func:`rnn_ext.io.save`)."""
        from .io import save

        save(self, path, **kwargs)

    @classmethod
    def from_torch(cls, rnn: Any, linear: Any, **kwargs: Any) -> RNN:
        """A model holding the weights of ``torch.nn.RNN`` + ``torch.nn.Linear``."""
        from .torch_interop import from_torch

        return from_torch(rnn, linear, **kwargs)

    def to_torch(self):
        """``(torch.nn.RNN, torch.nn.Linear)`` holding this model's weights."""
        from .torch_interop import to_torch

        return to_torch(self)

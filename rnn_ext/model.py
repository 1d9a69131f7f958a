"""The RNN model: a :class:`~rnn_ext.Recurrent` layer and a
:class:`~rnn_ext.heads.Softmax` head in one flat buffer, run as one fused pass."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import numpy as np

from . import _flat, _kernels, torch_interop
from ._layout import Layout, head_layout, init_uniform, layer_offsets, recurrent_layout
from ._results import ForwardResult, Gradients
from ._validation import (
    _INTP,
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
from .heads import Softmax
from .recurrent import (
    _F32,
    Recurrent,
    backward_buffers,
    dropout_masks,
    final_states,
    pass_plan,
    per_layer,
    plan_threads,
    scratch,
    scratch_needs,
    states,
    step_inputs,
    top_output,
    use_packed,
    user_layout,
)

__all__ = ["RNN"]

_FORWARD, _LOSS, _GRAD_V, _FULL = _kernels.FORWARD, _kernels.LOSS, _kernels.GRAD_V, _kernels.FULL

# The seed's letters for a one-layer, one-direction model, and their names in the layer.
_LEGACY = {"U": "U_l0", "W": "W_l0", "b": "b_l0"}
# The short path (RNN._short): passes up to this size, T*B*max(D, H, K), whose
# buffers are a few MB at most.
_LEGACY_ORDER = ("U", "W", "V", "b", "c")

class RNN:
    r"""An Elman RNN with a softmax output layer (DESIGN.md §1), stacked and
    bidirectional if asked.

    .. math::

        h_t = f(U x_t + W h_{t-1} + b), \quad
        \hat y_t = \mathrm{softmax}(V h_t + c), \quad
        L = -\sum_t y_t \cdot \log \hat y_t

    with f = tanh (or relu) and h_{-1} = h0 (zeros by default).  Equivalent to::

        h = h0
        for t in range(T):
            h = np.tanh(x[t] @ U.T + h @ W.T + b)     # eq. (1)
            probs[t] = softmax(h @ V.T + c)           # eq. (2)

    With ``num_layers`` > 1 or ``bidirectional`` the recurrence is
    :class:`~rnn_ext.Recurrent`'s and the head reads its top layer's output
    (dirs*H features).  The model is exactly ``layer`` + ``head``, whose
    parameters share the model's one flat buffer; every pass runs both in one
    GIL-free kernel call.

    Parameters
    ----------
    input_size : int
        D, the size of x_t (or the number of distinct input ids).
    hidden_size : int
        H, the size of h_t.
    output_size : int
        K, the number of classes.
    num_layers : int, default 1
    bidirectional : bool, default False
    dropout : float in [0, 1), default 0
        Between layers, in training passes only (``loss_and_grad(..., train=True)``).
    bias : bool, default True
        With False, b and c are absent and the equations are the book's exactly.
    nonlinearity : {"tanh", "relu"}, default "tanh"
    dtype : float32 or float64, default float32
        The dtype of every parameter and of every array returned.
    seed : int or None
        Seed for ``numpy.random.default_rng``; parameters are drawn, as in
        PyTorch, uniformly from [-1/sqrt(H), 1/sqrt(H)], in the order of ``flat``.
    batch_first : bool, default False
        With True, batched x, y, h, probs and dx are (B, T, ...), not (T, B, ...).

    Attributes
    ----------
    U, W, b : ndarray
        Layer 0's forward direction: (H, D), (H, H), (H,) or None.
    V : ndarray of shape (K, dirs*H);  c : ndarray of shape (K,) or None
    layer : Recurrent;  head : heads.Softmax
    flat : ndarray
        Every parameter: the layer's, then V and c.
    vocab : rnn_ext.text.Vocab or None
        Set when the model was trained on text.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, *,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                 bias: bool = True, nonlinearity: str = "tanh", dtype: Any = np.float32,
                 seed: int | None = None, batch_first: bool = False) -> None:
        self._output_size = check_size("output_size", output_size)
        dtype = check_dtype(dtype)
        rng = np.random.default_rng(check_seed(seed))
        # one buffer, the layer's parameters then the head's; every number is
        # drawn in that order, so one layer without direction gets the numbers
        # it always had (U, W, b, V, c) for the same seed
        D, H = check_size("input_size", input_size), check_size("hidden_size", hidden_size)
        L = check_size("num_layers", num_layers)
        dirs = 2 if check_flag("bidirectional", bidirectional) else 1
        bias = check_flag("bias", bias)
        n_layer = recurrent_layout(D, H, L, dirs, bias).size
        self._head_layout = head_layout(dirs * H, self._output_size, bias)
        flat = np.empty(n_layer + self._head_layout.size, dtype=dtype)
        self.layer = Recurrent(D, H, L, nonlinearity=nonlinearity, bias=bias,
                               bidirectional=bidirectional, dropout=dropout, dtype=dtype,
                               _flat=flat[:n_layer])
        self.head = Softmax(dirs * H, self._output_size, bias=bias, dtype=dtype,
                            _flat=flat[n_layer:])
        init_uniform(flat, 1.0 / np.sqrt(H), rng)
        self._flat = flat
        self._layout: Layout = self.layer._layout + self._head_layout
        self._offs = layer_offsets(self.layer._layout, self.num_layers, dirs)
        self._legacy = self.num_layers == 1 and dirs == 1
        self._version = 0
        # the short path's bound parameters (_kernels.FastPass), made on first use;
        # never copied with the model (__getstate__): a copy binds its own arrays
        self._fast: Any = None
        self._views: dict[str, np.ndarray] = {}
        self._refresh_views()
        self.batch_first = batch_first
        self.vocab = None

    # Pickling and copying: the layer's and the head's buffers are views into
    # _flat, as every entry of _views is.  They travel without them, and are
    # views into the copy's own _flat again once it is restored (pickled views
    # would come back as arrays of their own, and the copy's optimizer steps,
    # made on its flat buffer, would no longer reach its layer and head).
    _PIECES = ("layer", "head")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fast"] = None
        state["_views"] = {}
        for name in self._PIECES:
            piece = state[name]
            part = piece.__getstate__()
            del part["_flat"]
            state[name] = (type(piece), part)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        start = 0
        for name in self._PIECES:
            cls, part = state[name]
            stop = start + part["_layout"].size
            piece = cls.__new__(cls)
            piece.__setstate__({**part, "_flat": self._flat[start:stop]})
            setattr(self, name, piece)
            start = stop
        self._refresh_views()

    # -- configuration --------------------------------------------------------

    @property
    def input_size(self) -> int:
        """D: the size of x_t, or the number of distinct input ids."""
        return self.layer.input_size

    @property
    def hidden_size(self) -> int:
        """H: the size of h_t."""
        return self.layer.hidden_size

    @property
    def output_size(self) -> int:
        """K: the number of classes."""
        return self._output_size

    @property
    def num_layers(self) -> int:
        return self.layer.num_layers

    @property
    def bidirectional(self) -> bool:
        return self.layer.bidirectional

    @property
    def num_directions(self) -> int:
        return self.layer.num_directions

    @property
    def dropout(self) -> float:
        return self.layer.dropout

    @property
    def bias(self) -> bool:
        """Whether b and c exist."""
        return self.layer.bias

    @property
    def nonlinearity(self) -> str:
        """"tanh" or "relu"."""
        return self.layer.nonlinearity

    @property
    def dtype(self) -> np.dtype:
        """float32 or float64: the dtype of every parameter and result."""
        return self.layer.dtype

    @property
    def batch_first(self) -> bool:
        """With True, batched x, y, h, probs and dx are (B, T, ...)."""
        return self._batch_first

    @batch_first.setter
    def batch_first(self, value: Any) -> None:
        self._batch_first = check_flag("batch_first", value)

    # -- parameters -----------------------------------------------------------

    def _names(self) -> list[str]:
        """Parameter names: the seed's letters for one layer and direction,
        the layer's names (U_l0, ..., W_l1_reverse) and V, c otherwise."""
        if self._legacy:
            return [n for n in _LEGACY_ORDER if n in ("U", "W", "V") or self.bias]
        return [n for n in self._layout.names]

    @cached_property
    def _grad_keys(self) -> tuple[tuple[str, str], ...]:
        """(name, layout name) of every parameter, computed once (both are fixed)."""
        return tuple((n, _LEGACY.get(n, n) if self._legacy else n) for n in self._names())

    @cached_property
    def _grad_spans(self) -> tuple[tuple[str, int, tuple[int, ...]], ...]:
        """(name, offset in the gradient buffer, shape) of every parameter, in
        ``parameters()`` order, computed once (see _grad_views)."""
        layout_spans = {key: (at, shape) for key, at, shape in self._layout._spans}
        return tuple((n, *layout_spans[key]) for n, key in self._grad_keys)

    @cached_property
    def _grad_fields(self) -> tuple[str, str, str, str | None, str | None]:
        """The names of Gradients' U, W, V, b, c among ``parameters()`` (None: absent)."""
        name_of = {key: n for n, key in self._grad_keys}
        return (name_of["U_l0"], name_of["W_l0"], name_of["V"], name_of.get("b_l0"),
                name_of.get("c"))

    def _grad_views(self, dflat: np.ndarray) -> dict[str, np.ndarray]:
        """{name: view of the gradient buffer} in ``parameters()`` order."""
        return _flat.views(dflat, self._grad_spans)

    def _refresh_views(self, only: str | None = None) -> None:
        flat_views = self._layout.views(self._flat)
        for name in self._names():
            if only is None or name == only:
                self._views[name] = flat_views[_LEGACY.get(name, name) if self._legacy else name]

    def _get(self, name: str) -> np.ndarray | None:
        if name in self._views:
            return self._views[name]
        key = {"U": "U_l0", "W": "W_l0", "b": "b_l0"}.get(name, name)
        return self._layout.views(self._flat).get(key) if key in self._layout.names else None

    def _set(self, name: str, value: Any) -> None:
        key = _LEGACY.get(name, name) if (self._legacy or name in _LEGACY) else name
        if key not in self._layout.names:
            if name in ("b", "c"):
                if value is not None:
                    raise ValueError(f"this model has bias=False; {name} must stay None")
                return
            raise AttributeError(name)
        shape = self._layout.shape(key)
        if value is None and name in ("b", "c"):
            raise ValueError(f"this model has bias=True; {name} must be an array of shape {shape}, got None")
        a = check_parameter(name, value, shape, self.dtype)
        # a pass that overlaps this write sees the count change and runs again
        self._version += 1
        self._layout.views(self._flat)[key][...] = a
        self._version += 1
        # a new array object over the same memory: earlier references stay
        # live views, and `m.W is p["W"]` tells an assignment happened
        self._refresh_views(name if name in self._views else None)

    U = property(lambda self: self._get("U"), lambda self, v: self._set("U", v),
                 doc="Input-to-hidden weights of layer 0 (forward), (H, D) (``weight_ih_l0``).")
    W = property(lambda self: self._get("W"), lambda self, v: self._set("W", v),
                 doc="Hidden-to-hidden weights of layer 0 (forward), (H, H) (``weight_hh_l0``).")
    V = property(lambda self: self._get("V"), lambda self, v: self._set("V", v),
                 doc="Hidden-to-output weights, (K, dirs*H) (``nn.Linear.weight``).")
    b = property(lambda self: self._get("b"), lambda self, v: self._set("b", v),
                 doc="Hidden bias of layer 0 (forward), (H,), or None (``bias_ih_l0 + bias_hh_l0``).")
    c = property(lambda self: self._get("c"), lambda self, v: self._set("c", v),
                 doc="Output bias, (K,), or None (``nn.Linear.bias``).")

    @property
    def flat(self) -> np.ndarray:
        """Every parameter in one contiguous array: the layer's, then V and c."""
        return self._flat

    @property
    def params(self) -> dict[str, np.ndarray]:
        """{name: live view into flat}; see :meth:`parameters`."""
        return self.parameters()

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameters present, by name: live views into ``flat``, not copies.

        One layer and one direction: U, W, V, b, c.  Otherwise the layer's
        names (``U_l0``, ``W_l0``, ``b_l0``, ..., ``U_l1_reverse``) and V, c.
        """
        return {n: self._views[n] for n in self._names()}

    def set_params(self, values: dict[str, Any]) -> None:
        """Copy arrays into the named parameters (validated as assignment is)."""
        for name, value in values.items():
            if name not in self._views:
                raise ValueError(f"unknown parameter {name!r}; this model has {self._names()}")
            self._set(name, value)

    def __getattr__(self, name: str) -> Any:
        # U_l1, W_l0_reverse, ...: the layer's names as attributes, like nn.RNN's
        views = self.__dict__.get("_views")
        if views is not None and name in views:
            return views[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        extra = ""
        if self.num_layers != 1:
            extra += f"num_layers={self.num_layers}, "
        if self.bidirectional:
            extra += "bidirectional=True, "
        if self.dropout:
            extra += f"dropout={self.dropout}, "
        return (f"RNN(input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"output_size={self.output_size}, {extra}bias={self.bias}, "
                f"nonlinearity={self.nonlinearity!r}, dtype={self.dtype.name}, "
                f"batch_first={self.batch_first})")

    # -- passes -------------------------------------------------------------

    def _batch(self, x: Any, y: Any, h0: Any, lengths: Any, ignore_index: int = -100) -> Batch:
        return check_batch(x, y, h0, lengths, D=self.input_size, H=self.hidden_size,
                           K=self.output_size, dtype=self.dtype,
                           batch_first=self.batch_first, ignore_index=ignore_index,
                           Ld=self.num_layers * self.num_directions)

    def _sequence(self, a: np.ndarray, batch: Batch) -> np.ndarray:
        """A (T*B, n) or (T, B, n) kernel array laid out as the user's x was."""
        return user_layout(a, batch, self.batch_first)

    def _h_last(self, h_n: np.ndarray, batch: Batch) -> np.ndarray:
        # the top layer's forward direction at each sequence's last valid step
        h_last = h_n[(self.num_layers - 1) * self.num_directions]
        return h_last if batch.batched else h_last[0]

    def _h_n(self, h_n: np.ndarray, batch: Batch) -> np.ndarray:
        return per_layer(h_n, batch)

    def _dh0(self, dh0: np.ndarray, batch: Batch, h0: Any) -> np.ndarray:
        # shaped like the h0 given: (B, H) / (H,) for one layer and direction
        # unless the caller passed the full (1, B, H)
        Ld = self.num_layers * self.num_directions
        full = h0 is not None and np.ndim(h0) == (3 if batch.batched else 2)
        if Ld == 1 and not full:
            return dh0[0] if batch.batched else dh0[0, 0]
        return per_layer(dh0, batch)

    def forward(self, x: Any, h0: Any = None, lengths: Any = None) -> ForwardResult:
        """Hidden states and output probabilities, eqs. (1)-(2).

        Parameters
        ----------
        x : ndarray of shape (T, B) int ids, or (T, B, D) floats
            Unbatched (T,) or (T, D) also accepted; (B, T, ...) with batch_first.
            Id i stands for the one-hot e_i.
        h0 : ndarray of shape (L*dirs, B, H), optional
            (B, H) (or (H,) unbatched) also accepted with one layer and one
            direction; default zeros.
        lengths : ndarray of shape (B,), optional
            Valid steps of each sequence, in [1, T], any order.  Past its
            length a sequence's h is zero and h_last is its last valid state
            (PyTorch's packed-sequence semantics).

        Returns
        -------
        ForwardResult
            ``.h`` (T, B, dirs*H), ``.probs`` (T, B, K), ``.h_last`` (B, H) the
            top layer's forward final state, ``.h_n`` (L*dirs, B, H).
        """
        if h0 is None and lengths is None:
            short = self._short(_FORWARD, x, None)
            if short is not None:
                _, hs, Z, _, _, h_n = short
                T, B = x.shape
                return _flat.record(ForwardResult, (hs[-1, 1:], Z.reshape(T, B, -1), h_n[-1],
                                                    h_n))
        batch = self._batch(x, None, h0, lengths)
        hs, Z, _ = self._pass(_FORWARD, batch, None)
        h_n = final_states(self.layer._stack, hs, batch)
        return ForwardResult(self._sequence(top_output(self.layer._stack, hs, batch), batch),
                             self._sequence(Z, batch), self._h_last(h_n, batch),
                             self._h_n(h_n, batch))

    def _pass(self, what: int, batch: Batch, g: dict[str, Any] | None,
              ignore_index: int = -100, scale: float = 1.0, masks: Any = None,
              xin: Any = None) -> tuple[np.ndarray, np.ndarray, float]:
        """One fused kernel pass: (hs, Z, summed loss), gradients written into g.

        Every parameter is read once per pass: a pass that overlapped an
        assignment (``m.W = ...`` from another thread) is run again, so a
        result always comes from one coherent set of parameters.
        """
        s = self.layer._stack
        flat = self.layer._flat
        V, c = self.head._params["V"], self.head._params.get("c")
        ctx, packed, n = pass_plan(s, batch.T, batch.B, self.output_size)
        WT, UT = scratch(s, batch.T, batch.B, batch.xi is not None, packed is not None)
        g = g or {}
        dV, dc = g.get("V"), g.get("c")
        for attempt in range(2):
            version = self._version
            if attempt == 1:
                # the first attempt overlapped an assignment: run on a copy
                version, copy = self._coherent_copy()
                n_layer = self.layer._layout.size
                flat = copy[:n_layer]
                hv = self._head_layout.views(copy[n_layer:])
                V, c = hv["V"], hv.get("c")
            hs = states(s, batch)
            Z = np.empty((batch.T * batch.B, self.output_size), dtype=self.dtype)
            with ctx:
                total = _kernels.model_pass(
                    hs, Z, batch.xf, batch.xi, batch.yi, batch.ys, flat, self._offs,
                    s.D, s.dirs, V, c, masks, xin, WT, UT, batch.lengths, s.relu,
                    ignore_index, scale, what, g.get("flat"), dV, dc, g.get("delta"),
                    g.get("x"), g.get("h0"), g.get("UT"), g.get("G"), g.get("X"), packed, n)
            if attempt == 1 or (version % 2 == 0 and self._version == version):
                break
        return hs, Z, total

    # step(x_t, h=None): _kernels.model_step (src/_kernels.pyx), which hands the
    # common call (an int id and the state the last step returned) to the
    # bound FastPass without running a Python frame, and any other to _step
    step = _kernels.model_step

    def _step(self, x_t: Any, h: Any) -> tuple[np.ndarray, np.ndarray]:
        """step's general path: any x_t and h, checked and converted."""
        s = self.layer._stack
        xf, xi, h0, batched = step_inputs(s, x_t, h)
        params = self.head._params
        return _kernels.step_pass(h0, xf, xi, self.layer._flat, self._offs, s.D, s.relu,
                                  params["V"], params.get("c"), batched)

    def _coherent_copy(self) -> tuple[int, np.ndarray]:
        """(version, a copy of flat) taken while no assignment is in progress
        (copies hold the GIL, assignments too), so no half-done one is in it."""
        while True:
            version = self._version
            copy = self._flat.copy()
            if version % 2 == 0 and self._version == version:
                return version, copy

    def _generation_params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(flat, offs, V, c) for a generation loop that runs for long without the
        GIL (rnn_ext.text.sample): the layer's parameters and their offsets as
        step takes them, then V (K, H) and c (K,) widened to float64 (the logits
        are computed in float64), all copies taken while no assignment is in
        progress, so the loop never sees one half done."""
        _, copy = self._coherent_copy()
        n_layer = self.layer._layout.size
        head = self._head_layout.views(copy[n_layer:])
        c = head.get("c")
        return (copy[:n_layer], self._offs, np.ascontiguousarray(head["V"], dtype=np.float64),
                None if c is None else c.astype(np.float64))

    def _run(self, what: int, x: Any, y: Any, h0: Any, lengths: Any, reduction: str,
             ignore_index: int, train: bool = False, seed: int | None = None):
        reduction = check_reduction(reduction)
        ignore_index = check_ignore_index(ignore_index)
        check_flag("train", train)
        if y is None:
            raise TypeError("y (the targets) is required, got None")
        batch = self._batch(x, y, h0, lengths, ignore_index)
        s = self.layer._stack
        mean = reduction == "mean"
        scale = 1.0 / batch.count if mean and batch.count else (0.0 if mean else 1.0)
        masks, xin = (dropout_masks(s, batch, self.dropout, check_seed(seed))
                      if train else (None, None))
        g: dict[str, Any] = {}
        if what >= _GRAD_V:
            dflat = np.empty(self._layout.size, dtype=self.dtype)
            named = self._layout.views(dflat)
            g["V"], g["c"] = named["V"], named.get("c")
            g["dflat"], g["named"] = dflat, named
        if what == _FULL:
            g.update(backward_buffers(s, batch, masks, self.layer._layout.size,
                                      dflat[:self.layer._layout.size]))
        hs, _, total = self._pass(what, batch, g, ignore_index, scale, masks, xin)
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
        if (h0 is None and lengths is None and reduction == "sum"
                and type(ignore_index) is int and ignore_index == -100):
            short = self._short(_LOSS, x, y)
            if short is not None:
                return float(short[0])
        return self._run(_LOSS, x, y, h0, lengths, reduction, ignore_index)[0]

    def grad_V(self, x: Any, y: Any, h0: Any = None, lengths: Any = None,
               reduction: str = "sum", ignore_index: int = -100):
        """The loss and its gradient with respect to the output layer, eq. (4).

        dL/dV = Σ_t (ŷ_t - y_t) ⊗ h_t and dL/dc = Σ_t (ŷ_t - y_t).
        Arguments as in :meth:`loss`.

        Returns
        -------
        loss : float
        dV : ndarray of shape (K, dirs*H)
        dc : ndarray of shape (K,), or None without bias
        """
        loss, _, _, g = self._run(_GRAD_V, x, y, h0, lengths, reduction, ignore_index)
        return loss, g["V"], g["c"]

    def loss_and_grad(self, x: Any, y: Any, h0: Any = None, lengths: Any = None,
                      reduction: str = "sum", ignore_index: int = -100, *,
                      train: bool = False, seed: int | None = None):
        """The loss and every gradient by backpropagation through time, eqs. (3)-(7).

        δ_t = f'(a_t) ⊙ (Vᵀ(ŷ_t - y_t) + Wᵀ δ_{t+1});  dW = Σ δ_t ⊗ h_{t-1},
        dU = Σ δ_t ⊗ x_t, db = Σ δ_t, dh0 = Wᵀ δ_0, dx_t = Uᵀ δ_t.
        Arguments as in :meth:`loss`; ``train=True`` applies dropout between
        layers with masks drawn from ``seed``.

        Returns
        -------
        loss : float
        grads : Gradients
            ``.U .W .V .b .c`` like the parameters, ``.h0`` like h0, ``.x``
            like x (None for ids), ``.h_last`` the final state (B, H),
            ``.h_n`` every layer's final state, ``.flat`` every parameter's
            gradient laid out like ``flat`` and ``.parameters()`` by name.
        """
        if (h0 is None and lengths is None and train is False and reduction == "sum"
                and type(ignore_index) is int and ignore_index == -100):
            short = self._short(_FULL, x, y)
            if short is not None:
                total, _, _, dflat, dh0, h_n = short
                L = h_n.shape[0]
                return total, self._gradients(dflat, self._grad_views(dflat),
                                              dh0[0] if L == 1 else dh0, None, h_n[L - 1], h_n)
        loss, batch, hs, g = self._run(_FULL, x, y, h0, lengths, reduction, ignore_index,
                                       train, seed)
        dx = self._sequence(g["x"], batch) if g["x"] is not None else None
        h_n = final_states(self.layer._stack, hs, batch)
        named = {n: g["named"][key] for n, key in self._grad_keys}
        return loss, self._gradients(g["dflat"], named, self._dh0(g["h0"], batch, h0), dx,
                                     self._h_last(h_n, batch), self._h_n(h_n, batch))

    def _gradients(self, dflat: np.ndarray, named: dict[str, np.ndarray], dh0: np.ndarray,
                   dx: np.ndarray | None, h_last: np.ndarray, h_n: np.ndarray) -> Gradients:
        """loss_and_grad's result from the gradient buffer and its views, named
        and ordered as ``parameters()``."""
        kU, kW, kV, kb, kc = self._grad_fields
        # Gradients(...) by _flat.record: the frozen dataclass's __init__ costs 1.7 us
        return _flat.record(Gradients, (named[kU], named[kW], named[kV],
                                        None if kb is None else named[kb],
                                        None if kc is None else named[kc], dh0, dx, h_last,
                                        h_n, dflat, named))

    def _bound(self) -> Any:
        """The short paths' bound parameters (``_kernels.FastPass``), made once;
        None for a model they do not serve (float64, or bidirectional)."""
        s = self.layer._stack
        if s.dtype != _F32 or s.dirs != 1:
            return None
        layout = self._layout
        self._fast = _kernels.FastPass(
            self.layer._flat, self._offs, s.D, s.H, self.head._params["V"],
            self.head._params.get("c"), s.relu, layout.size, layout.offset("V"),
            layout.offset("c") if "c" in layout.names else -1)
        return self._fast

    def _short(self, what: int, x: Any, y: Any) -> tuple | None:
        """One pass by the short path, or None to take the general one.

        The common call of a training loop and of inference: float32, one
        direction, (T, B) C-contiguous intp ids in (and class ids out),
        time-major, no h0, lengths, dropout or ignored targets beyond -100,
        reduction "sum", and small enough that its buffers need no memory
        check.  Its validation is a handful of comparisons and range scans,
        and the kernel is entered through the bound parameters
        (``_kernels.FastPass``).  Anything else, bad input included, returns
        None and goes the general way, which gives the same results (bit for
        bit: the same kernel on the same buffers) and the errors.

        Returns ``_kernels.FastPass.run``'s (total, hs, Z, dflat, dh0): dflat
        and dh0 only with _FULL.
        """
        s = self.layer._stack
        if (type(x) is not np.ndarray or x.ndim != 2 or x.dtype != _INTP
                or not x.flags.c_contiguous or s.dtype != _F32 or s.dirs != 1
                or self._batch_first):
            return None
        if what != _FORWARD and (type(y) is not np.ndarray or y.shape != x.shape
                                 or y.dtype != _INTP or not y.flags.c_contiguous):
            return None
        T, B = x.shape
        K = self._output_size
        if T == 0 or B == 0 or T * B * max(s.D, s.H, K) > _kernels.SHORT_MAX:
            return None
        version = self._version
        if version % 2:
            return None  # an assignment is in progress
        fast = self._fast if self._fast is not None else self._bound()
        packed = use_packed(s, T, B)
        ctx, n = plan_threads(s, T, B, K, packed)
        need_WT, need_UT = scratch_needs(s, T, B, True, packed)
        with ctx:
            short = fast.run(what, x, y, need_UT, need_WT, packed, n)
        if short is None or self._version != version:
            # an id out of range (the general path reports it), or the pass
            # overlapped an assignment (the general path runs on a coherent copy)
            return None
        return short

    # -- interop and files ----------------------------------------------------

    def save(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Write the model to an ``.npz`` file (see :func:`rnn_ext.io.save`)."""
        from .io import save

        save(self, path, **kwargs)

    @classmethod
    def from_torch(cls, rnn: Any, linear: Any, *, dtype: Any = None) -> RNN:
        """A model holding the weights of ``torch.nn.RNN`` + ``torch.nn.Linear``.

        ``rnn`` may have any number of layers and directions; ``linear`` reads
        its output (in_features = hidden_size * num_directions) and has a bias
        exactly when ``rnn`` has.  dtype defaults to the torch weights' (float32
        or float64).  b = bias_ih + bias_hh is summed in float64.
        """
        config, values = torch_interop.recurrent_state(rnn, dtype=dtype)
        head = torch_interop.linear_state(rnn, linear, dtype)
        config.pop("input_size"), config.pop("hidden_size")
        model = cls(rnn.input_size, rnn.hidden_size, head["V"].shape[0], **config)
        model.layer.set_params(values)
        model.head.set_params(head)
        return model

    def to_torch(self):
        """``(torch.nn.RNN, torch.nn.Linear)`` holding this model's weights
        (each b in bias_ih, bias_hh zero), with its dtype and batch_first."""
        config = self.layer.config()
        config["batch_first"] = self.batch_first
        return (torch_interop.make_rnn(config, self.layer.params),
                torch_interop.make_linear(self.V, self.c, self.dtype))

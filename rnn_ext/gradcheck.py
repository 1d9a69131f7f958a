"""Check analytic gradients against central finite differences: of a model,
a recurrent layer on its own, or a head."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .heads import _Head
from .model import RNN
from .recurrent import Recurrent

__all__ = ["gradcheck"]

# The seed's letters: a one-layer model's gradients are read from these
# attributes of its Gradients (so a subclass that replaces one is checked).
_LETTERS = ("U", "W", "V", "b", "c")


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps must be a positive finite float, got {type(eps).__name__} {eps!r}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}")
    return eps


def _check_max_entries(max_entries: Any) -> int | None:
    if max_entries is None:
        return None
    if isinstance(max_entries, bool) or not isinstance(max_entries, (int, np.integer)):
        raise TypeError(f"max_entries must be a positive int or None, got {type(max_entries).__name__} {max_entries!r}")
    if max_entries < 1:
        raise ValueError(f"max_entries must be a positive int or None, got {max_entries}")
    return int(max_entries)


def _check_params(params: Any, available: tuple[str, ...], why: dict[str, str]) -> tuple[str, ...]:
    if params is None:
        return available
    if isinstance(params, str):
        params = (params,)
    if not isinstance(params, Iterable):
        raise TypeError(f"params must be an iterable of names from {available}, got {type(params).__name__}")
    names = list(params)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"params must hold names (str) from {available}, got {type(name).__name__} {name!r}")
        if name not in available:
            if name in why:
                raise ValueError(f"params names {name!r}, which this call does not have ({why[name]}); "
                                 f"available: {available}")
            raise ValueError(f"params must hold names from {available}, got {name!r}")
    if not names:
        raise ValueError(f"params must name at least one of {available}, got an empty collection")
    return tuple(n for n in available if n in names)


def _missing(bias: bool, what: str, ids: bool, names: Iterable[str]) -> dict[str, str]:
    """Why a name a user might expect is not checked: {name: reason}."""
    why = {}
    if not bias:
        for name in ("b", "c", *(n.replace("U_", "b_", 1) for n in names if n.startswith("U_"))):
            why[name] = f"the {what} has bias=False"
    if ids:
        why["x"] = "x holds int ids, which have no gradient"
    return why


class _Case:
    """One checked call: the float64 arrays to perturb, their analytic
    gradients, and the loss as a function of the arrays."""

    arrays: dict[str, np.ndarray]
    analytic: dict[str, np.ndarray | None]
    why: dict[str, str]

    def loss(self) -> float:
        raise NotImplementedError


class _ModelCase(_Case):
    """An RNN: L = model.loss(x, y, h0, ...); arrays: its parameters, h0, x."""

    def __init__(self, model: RNN, x: Any, y: Any, h0: Any, kw: dict[str, Any]) -> None:
        # the same model in float64, sharing nothing with `model`, built by its own class
        m = type(model)(model.input_size, model.hidden_size, model.output_size,
                        num_layers=model.num_layers, bidirectional=model.bidirectional,
                        dropout=model.dropout, bias=model.bias, nonlinearity=model.nonlinearity,
                        dtype=np.float64, seed=0, batch_first=model.batch_first)
        m.set_params(model.parameters())  # validated, cast and copied
        # the model validates x, y, h0, lengths, reduction and ignore_index
        # here, with its own messages, before anything is perturbed
        _, g = m.loss_and_grad(x, y, h0=h0, **kw)
        named = g.parameters()
        self.analytic = {n: getattr(g, n) if n in _LETTERS else named[n] for n in m.parameters()}
        self.analytic["h0"] = g.h0
        self.analytic["x"] = g.x
        self.arrays = dict(m.parameters())
        self.arrays["h0"] = (np.zeros_like(g.h0) if h0 is None
                             else np.array(h0, dtype=np.float64, copy=True))
        if g.x is not None:
            self.arrays["x"] = np.array(x, dtype=np.float64, copy=True)
        self.why = _missing(model.bias, "model", g.x is None, m.parameters())
        self._m, self._x, self._y, self._kw = m, x, y, kw

    def loss(self) -> float:
        a = self.arrays
        return self._m.loss(a.get("x", self._x), self._y, h0=a["h0"], **self._kw)


class _LayerCase(_Case):
    """A Recurrent layer: L = sum(d_output * output) + sum(d_h_n * h_n) for
    fixed random upstream arrays; arrays: its parameters, h0, x."""

    def __init__(self, layer: Recurrent, x: Any, h0: Any, lengths: Any,
                 rng: np.random.Generator) -> None:
        m = type(layer)(**{**layer.config(), "dtype": np.float64, "seed": 0})
        m.set_params(layer.params)
        fwd = m.forward(x, h0=h0, lengths=lengths)  # validates x, h0, lengths
        # non-zero everywhere, padded steps too: the backward must ignore those
        self._d_out = rng.standard_normal(fwd.output.shape)
        self._d_hn = rng.standard_normal(fwd.h_n.shape)
        g = m.backward(fwd, self._d_out, self._d_hn)
        self.analytic = {**g.params, "h0": g.h0, "x": g.x}
        self.arrays = dict(m.params)
        self.arrays["h0"] = (np.zeros_like(g.h0) if h0 is None
                             else np.array(h0, dtype=np.float64, copy=True))
        if g.x is not None:
            self.arrays["x"] = np.array(x, dtype=np.float64, copy=True)
        self.why = _missing(layer.bias, "layer", g.x is None, m.params)
        self._m, self._x, self._lengths = m, x, lengths

    def loss(self) -> float:
        a = self.arrays
        fwd = self._m.forward(a.get("x", self._x), h0=a["h0"], lengths=self._lengths)
        return float(np.sum(self._d_out * fwd.output) + np.sum(self._d_hn * fwd.h_n))


class _HeadCase(_Case):
    """A head: L = head.loss_and_grad(features, y, ...)[0]; arrays: V, c, features."""

    def __init__(self, head: _Head, features: Any, y: Any, kw: dict[str, Any]) -> None:
        m = type(head)(head.in_features, head.out_features, bias=head.bias, dtype=np.float64,
                       batch_first=head.batch_first)
        m.set_params(head.params)
        _, d_features, g = m.loss_and_grad(features, y, **kw)  # validates
        self.analytic = {**g.params, "features": d_features}
        self.arrays = dict(m.params)
        self.arrays["features"] = np.array(features, dtype=np.float64, copy=True)
        self.why = _missing(head.bias, "head", False, ())
        self._m, self._y, self._kw = m, y, kw

    def loss(self) -> float:
        return self._m.loss_and_grad(self.arrays["features"], self._y, **self._kw)[0]


def gradcheck(model: RNN | Recurrent | _Head, x: Any, y: Any = None, *, h0: Any = None,
              lengths: Any = None, reduction: str = "sum", ignore_index: int = -100,
              eps: float = 1e-6, params: Iterable[str] | None = None,
              max_entries: int | None = None, seed: int | None = 0) -> dict[str, float]:
    r"""Max relative error between the analytic and finite-difference gradients.

    Three kinds of piece are checked, each on its own loss L:

    - an :class:`~rnn_ext.RNN`: L = ``model.loss(x, y, h0, lengths, ...)``,
      gradients from ``loss_and_grad``; arrays: its parameters (U, W, V, b, c
      for one layer and direction; U_l0, W_l0, b_l0, ..., V, c otherwise),
      ``h0`` and, for float input, ``x``;
    - a :class:`~rnn_ext.Recurrent` layer: L = Σ d_output ⊙ output +
      Σ d_h_n ⊙ h_n for fixed random upstream arrays (standard normal, drawn
      from ``seed``, non-zero on padded steps too), gradients from
      ``backward``; arrays: its parameters, ``h0`` and, for float input, ``x``;
      ``y`` must be None;
    - a head (:class:`~rnn_ext.heads.Softmax`, :class:`~rnn_ext.heads.Linear`):
      ``x`` is the features and L = ``head.loss_and_grad(x, y, lengths, ...)``'s
      loss; arrays: V, c and ``features``.

    For each array p and each checked entry i, the analytic gradient a is
    compared with the central difference

    .. math::

        n_i = \frac{L(p + \epsilon e_i) - L(p - \epsilon e_i)}{2 \epsilon}

    and the error reported for p is

    .. math::

        \mathrm{err}(p) = \frac{\max_i |a_i - n_i|}
                               {\max(\max_i |a_i|, \max_i |n_i|, \mathrm{tiny})}

    over the checked entries i (tiny is the smallest normal float64, so an
    array whose analytic and numeric gradients are both all zero reports 0.0).  Scaling
    by the largest entry, not entry by entry, keeps tiny gradients from
    turning rounding noise into large errors.  Equivalent to::

        m = float64 copy of model
        a = analytic gradients of L at m's parameters and the given arrays
        for name, p in arrays:                    # p is m's parameter, or h0 / x / features
            for i in entries(p):
                p[i] += eps; Lp = L(); p[i] -= 2 * eps; Lm = L()
                p[i] += eps
                n[i] = (Lp - Lm) / (2 * eps)
            err[name] = max|a[name] - n| / max(max|a[name]|, max|n|, tiny)

    Everything runs in float64 on a copy of the piece, built with
    ``type(piece)(...)`` from its sizes and options and given its parameters
    through ``set_params``, so a float32 piece is checked at its float64
    rounding and a subclass's own gradient method is what is checked.  The
    user's piece and arrays are never modified.  With float64, the default
    ``eps`` and well-scaled inputs, a correct gradient gives errors around
    1e-9 to 1e-7; a wrong one gives errors of order 1e-2 to 1.  For relu, a
    pre-activation within ``eps`` of 0 puts a kink inside the difference and
    can inflate that array's error.  Dropout is not applied (no training
    passes).

    Parameters
    ----------
    model : RNN, Recurrent, heads.Softmax or heads.Linear
        The piece to check (a subclass's constructor must take its class's
        arguments).  It is not modified.
    x : ndarray
        An RNN's or a layer's input: (T, B) int ids or (T, B, D) floats, as in
        :meth:`RNN.loss`, unbatched and ``batch_first`` forms included.  A
        head's features: (T, B, F) per step or (B, F) per sequence.
    y : ndarray, optional
        Targets of an RNN or a head (required for them); None for a layer.
    h0 : ndarray, optional
        An RNN's or a layer's initial state, (L*dirs, B, H) (or (B, H) /
        (H,) for one layer and direction); default zeros, and the gradient
        with respect to it is checked either way.  None for a head.
    lengths : ndarray of shape (B,), optional
    reduction : {"sum", "mean"}
    ignore_index : int, default -100
        As in :meth:`RNN.loss` (an RNN and a head; a layer has no loss of its own).
    eps : float, default 1e-6
        The finite-difference step, added to one entry at a time.
    params : iterable of str, optional
        The arrays to check, by the names above; default all present
        (``b``, ``c`` only with bias, ``x`` only for float input).
    max_entries : int, optional
        Check at most this many entries per array, drawn at random without
        replacement (each entry costs two evaluations of the loss); default
        every entry.
    seed : int or None, default 0
        Seed of ``numpy.random.default_rng`` for a layer's upstream arrays
        (drawn first) and for the entries drawn when ``max_entries`` is
        smaller than an array.

    Returns
    -------
    dict of str to float
        Array name -> err(p): the parameters in the piece's order, then
        h0 and x (or features).  NaN means the analytic gradient or the loss
        was not finite.

    Raises
    ------
    TypeError
        If ``model`` is none of the pieces above, or an argument has the wrong type.
    ValueError
        If an argument has a wrong value, or x, y, h0, lengths are rejected
        by the piece (with the piece's own messages).

    Examples
    --------
    >>> import numpy as np, rnn_ext
    >>> model = rnn_ext.RNN(input_size=5, hidden_size=8, output_size=5, seed=0)
    >>> x = np.array([0, 3, 1, 4, 2])          # unbatched ids (T,)
    >>> y = np.array([3, 1, 4, 2, 0])
    >>> errors = rnn_ext.gradcheck(model, x, y)
    >>> list(errors)
    ['U', 'W', 'V', 'b', 'c', 'h0']
    >>> max(errors.values()) < 1e-6
    True
    >>> layer = rnn_ext.Recurrent(3, 4, num_layers=2, bidirectional=True, seed=0)
    >>> errors = rnn_ext.gradcheck(layer, np.random.default_rng(0).normal(size=(6, 2, 3)))
    >>> max(errors.values()) < 1e-6
    True
    """
    if not isinstance(model, (RNN, Recurrent, _Head)):
        raise TypeError(f"model must be an rnn_ext.RNN, a Recurrent layer or a head "
                        f"(heads.Softmax, heads.Linear), got {type(model).__name__}")
    eps = _check_eps(eps)
    max_entries = _check_max_entries(max_entries)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")

    rng = np.random.default_rng(seed)
    case: _Case
    if isinstance(model, Recurrent):
        if y is not None:
            raise ValueError("a Recurrent layer has no targets: pass y=None (its loss is "
                             "sum(d_output * output) + sum(d_h_n * h_n) for random upstream arrays)")
        case = _LayerCase(model, x, h0, lengths, rng)
    elif isinstance(model, _Head):
        if h0 is not None:
            raise ValueError(f"a head has no initial state: pass h0=None, got {type(h0).__name__}")
        if y is None:
            raise TypeError("y (the targets) is required, got None")
        case = _HeadCase(model, x, y, dict(lengths=lengths, reduction=reduction,
                                            ignore_index=ignore_index))
    else:
        case = _ModelCase(model, x, y, h0, dict(lengths=lengths, reduction=reduction,
                                                ignore_index=ignore_index))
    available = tuple(n for n, a in case.analytic.items() if a is not None)
    names = _check_params(params, available, case.why)

    errors: dict[str, float] = {}
    for name in names:
        p = case.arrays[name]
        analytic = np.asarray(case.analytic[name], dtype=np.float64).reshape(-1)
        if max_entries is None or p.size <= max_entries:
            entries = np.arange(p.size)
        else:
            entries = np.sort(rng.choice(p.size, size=max_entries, replace=False))
        numeric = np.empty(entries.size)
        for j, i in enumerate(entries):
            old = p.flat[i]
            p.flat[i] = hi = old + eps
            up = case.loss()
            p.flat[i] = lo = old - eps
            down = case.loss()
            p.flat[i] = old
            # hi - lo is the step actually taken, not exactly 2 eps in floating point
            numeric[j] = (up - down) / (hi - lo)
        a = analytic[entries]
        if not (np.isfinite(a).all() and np.isfinite(numeric).all()):
            errors[name] = math.nan
            continue
        scale = max(np.abs(a).max(), np.abs(numeric).max(), np.finfo(np.float64).tiny)
        errors[name] = float(np.abs(a - numeric).max() / scale)
    return errors

"""Check a model's analytic gradients against central finite differences."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .model import RNN

__all__ = ["gradcheck"]

# In the order gradcheck reports them.
_NAMES = ("U", "W", "V", "b", "c", "h0", "x")


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


def _check_params(params: Any, available: tuple[str, ...]) -> tuple[str, ...]:
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
            if name in _NAMES:
                why = ("the model has bias=False" if name in ("b", "c")
                       else "x holds int ids, which have no gradient")
                raise ValueError(f"params names {name!r}, which this call does not have ({why}); available: {available}")
            raise ValueError(f"params must hold names from {available}, got {name!r}")
    if not names:
        raise ValueError(f"params must name at least one of {available}, got an empty collection")
    return tuple(n for n in available if n in names)


def _float64_copy(model: RNN) -> RNN:
    """The same model in float64, sharing nothing with ``model``."""
    m = type(model)(model.input_size, model.hidden_size, model.output_size,
                    bias=model.bias, nonlinearity=model.nonlinearity, dtype=np.float64,
                    seed=0, batch_first=model.batch_first)
    for name, value in model.parameters().items():
        setattr(m, name, value)  # validated, cast and copied by the setter
    return m


def gradcheck(model: RNN, x: Any, y: Any, *, h0: Any = None, lengths: Any = None,
              reduction: str = "sum", ignore_index: int = -100, eps: float = 1e-6,
              params: Iterable[str] | None = None, max_entries: int | None = None,
              seed: int | None = 0) -> dict[str, float]:
    r"""Max relative error between the analytic and finite-difference gradients.

    For each array p (the parameters ``U W V b c``, the initial state ``h0``
    and, for float input, ``x``) and each checked entry i, the analytic
    gradient a = ``model.loss_and_grad(...)`` is compared with the central
    difference of ``model.loss``

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
        loss, g = m.loss_and_grad(x, y, h0, lengths, reduction, ignore_index)
        for name, p in arrays:                    # p is m's parameter, or h0 / x
            for i in entries(p):
                p[i] += eps; Lp = m.loss(...); p[i] -= 2 * eps; Lm = m.loss(...)
                p[i] += eps
                n[i] = (Lp - Lm) / (2 * eps)
            err[name] = max|g.name - n| / max(max|g.name|, max|n|, tiny)

    Everything runs in float64 on a copy of the model, built with
    ``type(model)(...)`` from the model's sizes and options and given its
    parameters by assignment, so a float32 model is checked at its float64
    rounding and a subclass's own ``loss_and_grad`` is what is checked.  The
    user's model and arrays are never modified.  With float64, the default
    ``eps`` and well-scaled inputs, a correct gradient gives errors around
    1e-9 to 1e-7; a wrong one gives errors of order 1e-2 to 1.  For a relu
    model, a pre-activation within ``eps`` of 0 puts a kink inside the
    difference and can inflate that array's error.

    Parameters
    ----------
    model : RNN
        The model to check (any subclass whose constructor takes RNN's
        arguments).  It is not modified.
    x : ndarray of shape (T, B) int ids, or (T, B, D) floats
        As in :meth:`RNN.loss`, including unbatched and ``batch_first`` forms.
    y : ndarray of shape (T, B) int class ids, or (T, B, K) target rows
    h0 : ndarray of shape (B, H) or (H,), optional
        Default zeros; the gradient with respect to it is checked either way.
    lengths : ndarray of shape (B,), optional
    reduction : {"sum", "mean"}
    ignore_index : int, default -100
        As in :meth:`RNN.loss`.
    eps : float, default 1e-6
        The finite-difference step, added to one entry at a time.
    params : iterable of str, optional
        The arrays to check, from ``U W V b c h0 x``; default all present
        (``b``, ``c`` only with bias, ``x`` only for float input).
    max_entries : int, optional
        Check at most this many entries per array, drawn at random without
        replacement (each entry costs two evaluations of the loss); default
        every entry.
    seed : int or None, default 0
        Seed of ``numpy.random.default_rng`` for the entries drawn when
        ``max_entries`` is smaller than an array.

    Returns
    -------
    dict of str to float
        Array name -> err(p), in the order U, W, V, b, c, h0, x.  NaN means
        the analytic gradient or the loss was not finite.

    Raises
    ------
    TypeError
        If ``model`` is not an :class:`RNN`, or an argument has the wrong type.
    ValueError
        If an argument has a wrong value, or x, y, h0, lengths are rejected
        by the model (same messages as :meth:`RNN.loss`).

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
    """
    if not isinstance(model, RNN):
        raise TypeError(f"model must be an rnn_ext.RNN, got {type(model).__name__}")
    eps = _check_eps(eps)
    max_entries = _check_max_entries(max_entries)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")

    m = _float64_copy(model)
    # The model validates x, y, h0, lengths, reduction and ignore_index here,
    # with its own messages, before anything is perturbed.
    _, g = m.loss_and_grad(x, y, h0=h0, lengths=lengths, reduction=reduction,
                           ignore_index=ignore_index)
    available = tuple(n for n in _NAMES if getattr(g, n) is not None)
    names = _check_params(params, available)

    # Private float64 arrays to perturb: the copy's live parameters, and
    # copies of h0 and x (validated above, so the conversions cannot fail).
    arrays: dict[str, np.ndarray] = dict(m.parameters())
    arrays["h0"] = (np.zeros_like(g.h0) if h0 is None
                    else np.array(h0, dtype=np.float64, copy=True))
    if g.x is not None:
        arrays["x"] = np.array(x, dtype=np.float64, copy=True)

    def loss() -> float:
        return m.loss(arrays.get("x", x), y, h0=arrays["h0"], lengths=lengths,
                      reduction=reduction, ignore_index=ignore_index)

    rng = np.random.default_rng(seed)
    errors: dict[str, float] = {}
    for name in names:
        p = arrays[name]
        analytic = np.asarray(getattr(g, name), dtype=np.float64).reshape(-1)
        if max_entries is None or p.size <= max_entries:
            entries = np.arange(p.size)
        else:
            entries = np.sort(rng.choice(p.size, size=max_entries, replace=False))
        numeric = np.empty(entries.size)
        for j, i in enumerate(entries):
            old = p.flat[i]
            p.flat[i] = hi = old + eps
            up = loss()
            p.flat[i] = lo = old - eps
            down = loss()
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

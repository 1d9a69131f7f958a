"""Gradient clipping, in place, as ``torch.nn.utils.clip_grad_value_`` / ``clip_grad_norm_``.

Both functions take a gradient object with ``.flat`` (from ``loss_and_grad``
or a layer's ``backward``: one compiled pass over the whole buffer), a list
of them (clipped together: one norm over all), or, as earlier versions did,
a Gradients object without ``.flat`` or a dict of name -> ndarray (its
parameter gradients are clipped; ``h0``, ``x`` and ``h_last`` are left alone).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import _flat
from .optim import _grad_arrays, _grad_flat

__all__ = ["clip_grad_value", "clip_grad_norm"]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_threshold(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _writable(name: str, g: Any) -> np.ndarray:
    if not isinstance(g, np.ndarray):
        raise TypeError(f"gradient {name} must be a numpy array to clip in place, got {type(g).__name__}")
    if not g.flags.writeable:
        raise ValueError(f"gradient {name} is read-only")
    return g


def _buffers(grads: Any) -> list[np.ndarray]:
    """The arrays to clip in place: each object's ``.flat``, else its named arrays."""
    out: list[np.ndarray] = []
    for g in grads if isinstance(grads, list | tuple) else (grads,):
        flat = _grad_flat(g)
        if flat is not None:
            out.append(_writable(".flat", flat))
        else:
            out.extend(_writable(repr(name), a) for name, a in _grad_arrays(g).items())
    return out


def _compiled(a: np.ndarray) -> np.ndarray | None:
    """a as a 1-D view the compiled loops can take, or None (then NumPy does it)."""
    if a.dtype in _DTYPES and a.flags.c_contiguous:
        return a.reshape(-1)
    return None


def clip_grad_value(grads: Any, clip_value: float) -> None:
    """Clamp every gradient entry to ``[-clip_value, clip_value]``, in place.

    Equivalent to ``for g in grads: np.clip(g, -clip_value, clip_value, out=g)``
    (min-char-rnn's ``np.clip(dparam, -5, 5, out=dparam)``); NaN stays NaN.
    One compiled pass per buffer.

    Parameters
    ----------
    grads : gradient object (``.flat``), list of them, Gradients, or dict of str -> ndarray
    clip_value : float > 0
    """
    v = _check_threshold("clip_value", clip_value)
    for a in _buffers(grads):
        flat = _compiled(a)
        if flat is not None:
            _flat.clip_value(flat, v)
        else:
            np.clip(a, -v, v, out=a)


def clip_grad_norm(grads: Any, max_norm: float, error_if_nonfinite: bool = False) -> float:
    """Scale all gradients together so their joint L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``::

        total = sqrt(sum(np.sum(g * g) for g in grads))     # accumulated in float64
        coef  = min(max_norm / (total + 1e-6), 1.0)
        for g in grads: g *= coef

    One compiled pass per buffer for the norm and, when it scales, one more.

    Parameters
    ----------
    grads : gradient object (``.flat``), list of them, Gradients, or dict of str -> ndarray
    max_norm : float > 0
    error_if_nonfinite : bool
        If True, a NaN or infinite total norm raises ValueError.  Otherwise
        such gradients are returned unscaled (scaling cannot repair them).

    Returns
    -------
    float
        The total norm before clipping (computed in float64).
    """
    max_norm = _check_threshold("max_norm", max_norm)
    arrays = _buffers(grads)
    sq = 0.0
    for a in arrays:
        flat = _compiled(a)
        if flat is not None:
            sq += _flat.sumsq(flat)
        else:
            x = a.astype(np.float64).ravel()
            sq += float(np.dot(x, x))
    total = math.sqrt(sq)
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise ValueError(f"the total norm of the gradients is {total}, not finite")
        return total
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for a in arrays:
            flat = _compiled(a)
            if flat is not None:
                _flat.scale(flat, coef)
            else:
                a *= coef
    return total

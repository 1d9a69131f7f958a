"""Gradient clipping, in place, as ``torch.nn.utils.clip_grad_value_`` / ``clip_grad_norm_``.

Both functions take the Gradients object returned by ``loss_and_grad`` (its
parameter gradients U, W, V, b, c are clipped; ``h0``, ``x`` and ``h_last``
are left alone) or a dict of name -> ndarray.
"""

import math
import numbers

import numpy as np

from .optim import _grad_arrays

__all__ = ["clip_grad_value", "clip_grad_norm"]


def _check_threshold(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _writable_arrays(grads):
    arrays = _grad_arrays(grads)
    for name, g in arrays.items():
        if not isinstance(g, np.ndarray):
            raise TypeError(f"gradient {name!r} must be a numpy array to clip in place, got {type(g).__name__}")
        if not g.flags.writeable:
            raise ValueError(f"gradient {name!r} is read-only")
    return arrays


def clip_grad_value(grads, clip_value):
    """Clamp every gradient entry to ``[-clip_value, clip_value]``, in place.

    Equivalent to ``for g in grads: np.clip(g, -clip_value, clip_value, out=g)``
    (min-char-rnn's ``np.clip(dparam, -5, 5, out=dparam)``).

    Parameters
    ----------
    grads : Gradients or dict of str -> ndarray
    clip_value : float > 0
    """
    v = _check_threshold("clip_value", clip_value)
    for g in _writable_arrays(grads).values():
        np.clip(g, -v, v, out=g)


def clip_grad_norm(grads, max_norm, error_if_nonfinite=False):
    """Scale all gradients together so their joint L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``::

        total = sqrt(sum(np.sum(g * g) for g in grads))
        coef  = min(max_norm / (total + 1e-6), 1.0)
        for g in grads: g *= coef

    Parameters
    ----------
    grads : Gradients or dict of str -> ndarray
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
    arrays = _writable_arrays(grads)
    # Per-array norms, then the norm of those: the same order as torch.
    norms = [np.linalg.norm(g.ravel().astype(np.float64, copy=False)) for g in arrays.values()]
    total = float(np.linalg.norm(np.array(norms))) if norms else 0.0
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise ValueError(f"the total norm of the gradients is {total}, not finite")
        return total
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in arrays.values():
            g *= coef
    return total

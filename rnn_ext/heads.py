"""Heads: an output layer and its loss on top of any features (DESIGN.md §6).

``Softmax`` is eqs. (2)-(4): z = V f + c, ŷ = softmax(z), cross-entropy, fused
into one row-wise pass.  ``Linear`` is z = V f + c with ``torch.nn.MSELoss``.
Features are per step, (T, B, F), or per sequence, (B, F) (many-to-one, e.g.
a layer's ``h_n[-1]``); ``loss_and_grad`` returns dL/dfeatures to send back
into the layer (as ``d_output`` or ``d_h_n``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _kernels
from ._layout import FlatParameters, head_layout, init_uniform
from ._results import HeadGradients
from ._validation import (
    _as_array,
    _as_ids,
    _check_lengths,
    _finite_cast,
    check_dtype,
    check_flag,
    check_ignore_index,
    check_parameter,
    check_reduction,
    check_seed,
    check_size,
)

__all__ = ["Softmax", "Linear"]


class _Head(FlatParameters):
    """z = V f + c over the rows of f; the subclass names the loss."""

    _loss: int
    _what = "outputs"

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 dtype: Any = np.float32, seed: int | None = None, batch_first: bool = False,
                 _flat: np.ndarray | None = None, _bound: float | None = None,
                 _rng: np.random.Generator | None = None) -> None:
        self._in = check_size("in_features", in_features)
        self._out = check_size(self._what, out_features)
        self._bias = check_flag("bias", bias)
        self._dtype = check_dtype(dtype)
        self.batch_first = check_flag("batch_first", batch_first)
        self._layout = head_layout(self._in, self._out, self._bias)
        if _flat is None:
            _flat = np.empty(self._layout.size, dtype=self._dtype)
            rng = _rng if _rng is not None else np.random.default_rng(check_seed(seed))
            # nn.Linear's default: uniform in ±1/sqrt(in_features)
            init_uniform(_flat, _bound or 1.0 / np.sqrt(self._in), rng)
        self._bind(_flat)

    in_features = property(lambda self: self._in)
    out_features = property(lambda self: self._out)
    bias = property(lambda self: self._bias)
    dtype = property(lambda self: self._dtype)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """{"V": (out, in_features), "c": (out,)}: views into ``flat``."""
        return dict(self._params)

    @property
    def flat(self) -> np.ndarray:
        return self._flat

    def parameters(self) -> dict[str, np.ndarray]:
        return self.params

    def set_params(self, values: dict[str, Any]) -> None:
        """Copy arrays into the named parameters (validated: shape, finite)."""
        for name, value in values.items():
            if name not in self._params:
                raise ValueError(f"unknown parameter {name!r}; this head has {list(self._params)}")
            self._params[name][...] = check_parameter(name, value, self._params[name].shape,
                                                      self._dtype)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(in_features={self._in}, {self._what}={self._out}, "
                f"bias={self._bias}, dtype={self._dtype.name})")

    # -- validation -----------------------------------------------------------

    def _features(self, features: Any) -> tuple[np.ndarray, int, int, bool]:
        """(F as (N, in_features) rows t*B + b, T, B, per_step)."""
        a = _as_array(features, "features")
        if a.ndim not in (2, 3) or a.shape[-1] != self._in:
            raise ValueError(f"features must be (T, B, {self._in}) per step or (B, {self._in}) "
                             f"per sequence, got shape {a.shape}")
        if a.dtype.kind != "f":
            a = a.astype(self._dtype)
        per_step = a.ndim == 3
        if per_step and self.batch_first:
            a = a.swapaxes(0, 1)
        F = _finite_cast(a, "features", self._dtype)
        T, B = (F.shape[0], F.shape[1]) if per_step else (1, F.shape[0])
        if T == 0 or B == 0:
            raise ValueError(f"features must hold at least one row, got shape {a.shape}")
        return F.reshape(T * B, self._in), T, B, per_step

    def _targets(self, y: Any, T: int, B: int, per_step: bool, ignore_index: int,
                 lens: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None, int]:
        """(yi, ys, count): the kernel's targets and how many terms "mean" divides by."""
        raise NotImplementedError

    def _rows(self, a: np.ndarray, T: int, B: int, per_step: bool) -> np.ndarray:
        """(N, n) kernel rows back in the caller's layout."""
        if not per_step:
            return a.reshape(B, -1)
        a = a.reshape(T, B, -1)
        return a.swapaxes(0, 1) if self.batch_first else a

    # -- passes ---------------------------------------------------------------

    def forward(self, features: Any) -> np.ndarray:
        """The head's output for each row of features: (T, B, out) or (B, out)."""
        F, T, B, per_step = self._features(features)
        Z = np.empty((T * B, self._out), dtype=self._dtype)
        _kernels.head_pass(Z, F, None, None, self._params["V"], self._params.get("c"), None,
                           B, self._loss, -100, 1.0, _kernels.FORWARD, None, None, None)
        return self._rows(Z, T, B, per_step)

    def loss_and_grad(self, features: Any, y: Any, lengths: Any = None, reduction: str = "sum",
                      ignore_index: int = -100):
        """The loss, dL/dfeatures and dL/d(V, c).

        Parameters
        ----------
        features : ndarray of shape (T, B, in_features) or (B, in_features)
        y : targets, see the class docstring
        lengths : ndarray of shape (B,), optional
            Per-step features only: steps t >= lengths[b] count nothing.
        reduction : {"sum", "mean"}
        ignore_index : int, default -100 (Softmax with class ids only)

        Returns
        -------
        loss : float
        d_features : ndarray shaped like features
        grads : HeadGradients
            ``.flat`` and ``.params`` (V, c).
        """
        reduction = check_reduction(reduction)
        ignore_index = check_ignore_index(ignore_index)
        F, T, B, per_step = self._features(features)
        if lengths is not None and not per_step:
            raise ValueError("lengths applies to per-step features (T, B, F); got per-sequence features (B, F)")
        lens = _check_lengths(lengths, T, B, True)
        yi, ys, count = self._targets(y, T, B, per_step, ignore_index, lens)
        mean = reduction == "mean"
        scale = (1.0 / count if count else 0.0) if mean else 1.0
        Z = np.empty((T * B, self._out), dtype=self._dtype)
        dflat = np.empty(self._layout.size, dtype=self._dtype)
        g = self._layout.views(dflat)
        dF = np.empty_like(F)
        total = _kernels.head_pass(Z, F, yi, ys, self._params["V"], self._params.get("c"), lens,
                                   B, self._loss, ignore_index, scale, _kernels.FULL, g["V"],
                                   g.get("c"), dF)
        loss = total * scale if mean else total
        return float(loss), self._rows(dF, T, B, per_step), HeadGradients(flat=dflat, params=g)


def _counted(T: int, B: int, lens: np.ndarray | None) -> np.ndarray | None:
    return None if lens is None else (np.arange(T)[:, None] < lens[None, :]).reshape(-1)


class Softmax(_Head):
    """Eqs. (2)-(4): ŷ = softmax(V f + c) with cross-entropy, fused.

    y : int class ids (T, B) / (B,), or target rows (T, B, K) / (B, K)
    (one-hot or probabilities); ids equal to ``ignore_index`` count nothing.
    "mean" divides by the number of counted targets.

    Parameters
    ----------
    in_features : int
    classes : int
        K.
    bias : bool, default True
    dtype : float32 or float64
    seed : int or None
    batch_first : bool, default False
        Per-step features and targets are (B, T, ...).
    """

    _loss = _kernels.SOFTMAX
    _what = "classes"

    def __init__(self, in_features: int, classes: int, **kwargs: Any) -> None:
        super().__init__(in_features, classes, **kwargs)

    @property
    def classes(self) -> int:
        return self._out

    def _targets(self, y, T, B, per_step, ignore_index, lens):
        a = _as_array(y, "y")
        K = self._out
        tb = ((B, T) if self.batch_first else (T, B)) if per_step else (B,)
        if a.dtype.kind in "iu":
            if a.shape != tb:
                raise ValueError(f"y of class ids must have shape {tb} to match features, got {a.shape}")
            if per_step and self.batch_first:
                a = a.T
            yi = _as_ids(a).reshape(-1)
            lo, hi, _ = _kernels.id_range(yi, ignore_index, True)
            if lo < 0 or hi >= K:
                raise ValueError(f"y class ids must be in [0, {K}) (classes) or ignore_index={ignore_index}, got {lo if lo < 0 else hi}")
            valid = _counted(T, B, lens)
            keep = yi != ignore_index
            count = int(np.count_nonzero(keep if valid is None else keep & valid))
            return yi, None, count
        if a.shape != tb + (K,):
            raise ValueError(f"y of target rows must have shape {tb + (K,)}, got {a.shape}")
        if per_step and self.batch_first:
            a = a.swapaxes(0, 1)
        ys = _finite_cast(a, "y", self._dtype)
        if (ys < 0).any():
            raise ValueError("y target rows must be non-negative (probabilities), got negative entries")
        valid = _counted(T, B, lens)
        return None, ys.reshape(T * B, K), (T * B if valid is None else int(valid.sum()))


class Linear(_Head):
    """z = V f + c with ``torch.nn.MSELoss``: L = Σ (z - y)² over counted steps
    and outputs; "mean" divides by their number.

    y : floats shaped like the predictions, (T, B, out) or (B, out).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    dtype : float32 or float64
    seed : int or None
    batch_first : bool, default False
    """

    _loss = _kernels.MSE
    _what = "out_features"

    def _targets(self, y, T, B, per_step, ignore_index, lens):
        a = _as_array(y, "y")
        want = (((B, T) if self.batch_first else (T, B)) if per_step else (B,)) + (self._out,)
        if a.shape != want:
            raise ValueError(f"y must have shape {want} like the predictions, got {a.shape}")
        if per_step and self.batch_first:
            a = a.swapaxes(0, 1)
        ys = _finite_cast(a, "y", self._dtype).reshape(T * B, self._out)
        valid = _counted(T, B, lens)
        rows = T * B if valid is None else int(valid.sum())
        return None, ys, rows * self._out

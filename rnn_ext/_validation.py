"""Input validation: everything the kernels trust is checked here first.

Each checker takes what a user passed, raises ``TypeError`` (wrong kind of
thing) or ``ValueError`` (right kind, wrong shape or value) naming what was
expected and what was given, and returns C-contiguous, time-major arrays of
the dtype the kernel wants.  Inputs are never modified: whatever needs a
different dtype, order or layout is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._kernels import id_range

__all__ = [
    "Batch",
    "check_batch",
    "check_dtype",
    "check_flag",
    "check_parameter",
    "check_seed",
    "check_size",
]

_BLAS_INT_MAX = 2**31 - 1
REDUCTIONS = ("sum", "mean")
_INTP = np.dtype(np.intp)
NONLINEARITIES = ("tanh", "relu")


def _describe(a: np.ndarray) -> str:
    return f"an array of shape {a.shape} and dtype {a.dtype}"


def _as_array(value: Any, name: str) -> np.ndarray:
    """np.asarray with the errors a user can read."""
    if type(value) is np.ndarray and value.dtype.kind in "iuf":
        return value  # the common case, checked first
    if value is None:
        raise TypeError(f"{name} must be a numeric array, got None")
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__} {value!r:.40}")
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular numeric array, got {type(value).__name__}: {exc}") from None
    if a.dtype.kind not in "iuf":
        if a.dtype.kind == "b":
            raise TypeError(f"{name} must hold integers or floats, got booleans ({_describe(a)})")
        if a.dtype.kind == "c":
            raise TypeError(f"{name} must be real, got complex values ({_describe(a)})")
        raise TypeError(f"{name} must be a numeric array of integers or floats, got {_describe(a)}")
    return a


def _finite_cast(a: np.ndarray, name: str, dtype: np.dtype) -> np.ndarray:
    """a as an owned C-contiguous array of dtype, refusing NaN, infinity and
    values that overflow dtype (checked after the cast, which is what counts)."""
    with np.errstate(over="ignore"):
        out = np.array(a, dtype=dtype, order="C", copy=True)
    if not np.isfinite(out).all():
        if a.dtype.kind == "f" and np.isfinite(a).all():
            raise ValueError(f"{name} must be finite in {dtype.name}, got values beyond "
                             f"±{np.finfo(dtype).max:.3g}")
        raise ValueError(f"{name} must be finite, got NaN or infinity")
    return out


def check_size(name: str, value: Any) -> int:
    """A positive int size (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    if value > _BLAS_INT_MAX:
        raise ValueError(f"{name} must be at most {_BLAS_INT_MAX}, got {value}")
    return int(value)


def check_dtype(dtype: Any) -> np.dtype:
    if dtype is None:
        raise TypeError("dtype must be float32 or float64, got None")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_parameter(name: str, value: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A finite real array of exactly ``shape``, returned as an owned C-contiguous copy."""
    a = _as_array(value, name)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return _finite_cast(a, name, dtype)


@dataclass(slots=True)
class Batch:
    """One validated call's inputs, in the kernel's layout.

    xf is (T*B, D) floats or None; xi (T*B,) intp ids or None; yi (T*B,) ids or
    None; ys (T*B, K) target rows or None; h0 is (L*dirs, B, H); lengths (B,)
    or None.
    """

    T: int
    B: int
    batched: bool
    xf: np.ndarray | None
    xi: np.ndarray | None
    yi: np.ndarray | None
    ys: np.ndarray | None
    h0: np.ndarray
    lengths: np.ndarray | None
    count: int  # targets counted by the loss (for reduction="mean")


def _as_ids(a: np.ndarray) -> np.ndarray:
    """Integer ids as a C-contiguous intp array (a copy when needed)."""
    if a.dtype == _INTP and a.flags.c_contiguous:
        return a
    if a.dtype.kind == "u" and a.dtype.itemsize >= np.dtype(np.intp).itemsize and a.size:
        top = a.max()
        if top > np.iinfo(np.intp).max:  # would wrap in the cast
            raise ValueError(f"ids must fit in {np.dtype(np.intp).name}, got {top}")
    return np.ascontiguousarray(a, dtype=np.intp)


def _time_major(a: np.ndarray, batched: bool, batch_first: bool) -> np.ndarray:
    return a.swapaxes(0, 1) if batched and batch_first else a


def _check_x(x: Any, D: int, dtype: np.dtype, batch_first: bool):
    a = _as_array(x, "x")
    layout = "(B, T)" if batch_first else "(T, B)"
    if a.dtype.kind in "iu":
        if a.ndim not in (1, 2):
            raise ValueError(f"x of int ids must be {layout} or unbatched (T,), got shape {a.shape}")
        batched = a.ndim == 2
        ids = _as_ids(_time_major(a, batched, batch_first))
        lo, hi, _ = id_range(ids.reshape(-1), 0, False)
        if lo < 0 or hi >= D:
            raise ValueError(f"x ids must be in [0, {D}) (input_size), got values in [{lo}, {hi}]")
        return ids, None, batched, ids.shape[0], (ids.shape[1] if batched else 1)
    if a.ndim not in (2, 3):
        raise ValueError(f"x of floats must be {layout[:-1]}, D) or unbatched (T, D), got shape {a.shape}")
    if a.shape[-1] != D:
        raise ValueError(f"x's last axis must be input_size={D}, got shape {a.shape}")
    batched = a.ndim == 3
    xf = _finite_cast(_time_major(a, batched, batch_first), "x", dtype)
    return None, xf, batched, xf.shape[0], (xf.shape[1] if batched else 1)


def _check_lengths(lengths: Any, T: int, B: int, batched: bool) -> np.ndarray | None:
    if lengths is None:
        return None
    if not batched:
        raise ValueError("lengths needs batched input (T, B, ...); got unbatched x")
    if isinstance(lengths, (bool, np.bool_)) or np.asarray(lengths).dtype.kind == "b":
        raise TypeError("lengths must be integers, got booleans")
    a = _as_array(lengths, "lengths")
    if a.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got {_describe(a)}")
    if a.shape != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got {a.shape}")
    if a.min() < 1 or a.max() > T:
        raise ValueError(f"lengths must be in [1, T] = [1, {T}], got values in [{a.min()}, {a.max()}]")
    return np.ascontiguousarray(a, dtype=np.intp)


def _check_h0(h0: Any, B: int, H: int, batched: bool, dtype: np.dtype, Ld: int) -> np.ndarray:
    """h0 as (Ld, B, H): one state per layer and direction, PyTorch's order.
    With one layer and one direction the leading axis may be left out."""
    if h0 is None:
        return np.zeros((Ld, B, H), dtype=dtype)
    a = _as_array(h0, "h0")
    full = (Ld, B, H) if batched else (Ld, H)
    short = (B, H) if batched else (H,)
    if a.shape != full and not (Ld == 1 and a.shape == short):
        if Ld == 1:
            raise ValueError(f"h0 must have shape {short} for this x, got {a.shape} "
                             f"({full}, one state per layer and direction, is also accepted)")
        raise ValueError(f"h0 must have shape {full} for this x "
                         f"(num_layers * num_directions, batch, hidden_size), got {a.shape}")
    return _finite_cast(a, "h0", dtype).reshape(Ld, B, H)


def _check_y(y: Any, T: int, B: int, K: int, batched: bool, batch_first: bool,
             ignore_index: int, dtype: np.dtype):
    a = _as_array(y, "y")
    tb = ((B, T) if batch_first else (T, B)) if batched else (T,)
    if a.dtype.kind in "iu":
        if a.shape != tb:
            raise ValueError(f"y of class ids must have shape {tb} to match x, got {a.shape}")
        yi = _as_ids(_time_major(a, batched, batch_first)).reshape(-1)
        lo, hi, _ = id_range(yi, ignore_index, True)
        if lo < 0 or hi >= K:
            v = lo if lo < 0 else hi
            raise ValueError(f"y class ids must be in [0, {K}) (output_size) or ignore_index={ignore_index}, got {v}")
        return yi, None
    want = tb + (K,)
    if a.shape != want:
        hint = " (float y is read as target rows; pass class ids as an int array)" if a.shape == tb else ""
        raise ValueError(f"y of target rows must have shape {want} to match x and output_size, got {a.shape}{hint}")
    ys = _finite_cast(_time_major(a, batched, batch_first), "y", dtype)
    if (ys < 0).any():
        raise ValueError("y target rows must be non-negative (probabilities), got negative entries")
    return None, ys.reshape(T * B, K)


def check_reduction(reduction: Any) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_ignore_index(ignore_index: Any) -> int:
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if not -(2**63) <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in int64, got {ignore_index}")
    return int(ignore_index)


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative int or None, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed}")
    return int(seed)


def check_batch(x: Any, y: Any, h0: Any, lengths: Any, *, D: int, H: int, K: int,
                dtype: np.dtype, batch_first: bool, ignore_index: int = -100,
                Ld: int = 1) -> Batch:
    """Validate one call's x (and y, h0, lengths) and lay them out for the kernel."""
    xi, xf, batched, T, B = _check_x(x, D, dtype, batch_first)
    if T == 0 or B == 0:
        raise ValueError(f"x must hold at least one time step and one sequence, got T={T}, B={B}")
    if T * B * max(D, H, K) > _BLAS_INT_MAX:
        raise ValueError(f"x is too large: T*B*max(D, H, K) = {T * B * max(D, H, K)} exceeds {_BLAS_INT_MAX}")
    lens = _check_lengths(lengths, T, B, batched)
    h0a = _check_h0(h0, B, H, batched, dtype, Ld)
    yi = ys = None
    count = 0
    if y is not None:
        yi, ys = _check_y(y, T, B, K, batched, batch_first, ignore_index, dtype)
        valid = None if lens is None else (np.arange(T)[:, None] < lens[None, :]).reshape(-1)
        if yi is not None and valid is None:
            count = id_range(yi, ignore_index, True)[2]
        elif yi is not None:
            count = int(np.count_nonzero((yi != ignore_index) & valid))
        else:
            count = T * B if valid is None else int(np.count_nonzero(valid))
    if xi is not None:
        xi = xi.reshape(-1)
    else:
        xf = xf.reshape(T * B, D)
    return Batch(T, B, batched, xf, xi, yi, ys, h0a, lens, count)

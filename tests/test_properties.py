"""Property tests: every public call either matches a NumPy reference or refuses.

Hypothesis draws a model, a batch and a few hostile twists of it: other int
widths, float16, bool, complex, object and string dtypes; C, Fortran,
strided, reversed, unaligned, byte-swapped and read-only layouts; Python
lists and scalars; out-of-range ids and targets; lengths that are zero,
negative, too large or mis-shaped; NaN, ±Inf and float32-overflowing values
in x, h0, soft targets and parameters; mismatched batch sizes; 0-d and 4-d
arrays.  Each case carries a label per argument, worked out when the twist is
applied:

``ok``      the call must return, and its results must match the reference;
``error``   the call must raise ValueError or TypeError with a message;
``either``  the contract leaves it open (a bool or object array, a huge
            ignore_index): refusing is fine, and so is returning results
            that match the reference's reading of the input.

Whatever the label, no other exception escapes, arguments are never
modified, and a refused parameter assignment leaves the parameter as it was.

The reference is a float64 NumPy transcription of DESIGN.md §1 (forward and
BPTT, with lengths, ignore_index, soft targets, relu and mean), itself held
against :mod:`rnn_ext.oracle` below.  ``scripts/fuzz.py`` runs the same cases
by the hundred thousand in child processes; this file keeps the example
counts small and the run derandomized, so it is fast and repeatable.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import rnn_ext
from rnn_ext import oracle

# RNN_EXT_PROPERTY_EXAMPLES scales the example counts (e.g. for a long local run).
EXAMPLES = int(os.environ.get("RNN_EXT_PROPERTY_EXAMPLES", "600"))
PROFILE = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same examples on every run: CI never flakes on a new draw
    database=None,
    deadline=None,
    # no "explain" phase: it writes .hypothesis/patches, whose imports warn (and
    # warnings are errors here), turning a failure report into an internal error
    phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],  # a shared, noisy 2-core machine; speed is benchmarked elsewhere
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)

INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
FLOAT_DTYPES = [np.float16, np.float32, np.float64]
LAYOUTS = ["C", "F", "strided", "reversed", "unaligned", "byteswapped", "readonly", "list"]
# relative tolerance per model dtype; the absolute tolerance is this times the
# array's scale (see close())
RTOL = {np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-9}
PASSES = ("forward", "loss", "grad_V", "loss_and_grad")
PARAMS = ("U", "W", "V", "b", "c")


# ---------------------------------------------------------------------------
# the NumPy reference (float64, time-major, batched)

def reference(p: dict, relu: bool, x: np.ndarray, y: np.ndarray | None, h0: np.ndarray,
              lengths: np.ndarray | None, reduction: str = "sum",
              ignore_index: Any = -100, precision: np.dtype | None = None) -> dict:
    """Eqs. (1)-(7) in float64 NumPy.

    p : {"U" (H, D), "W" (H, H), "V" (K, H), "b" (H,) or None, "c" (K,) or None}
    x : (T, B) int ids or (T, B, D) floats;  y : None, (T, B) ids or (T, B, K) rows
    h0 : (B, H);  lengths : (B,) in [1, T] or None
    ignore_index : any value ids are compared with (None ignores nothing)
    precision : the dtype the result is compared with.  A relu unit whose
        pre-activation is within that dtype's rounding (or underflow) of zero
        may be on in one precision and off in the other; then ``out["relu_tie"]``
        is True and the gradients below the relu are not comparable.
    """
    U, W, V, b, c = (p[n] for n in PARAMS)
    T, B = x.shape[:2]
    H, K = W.shape[0], V.shape[0]
    ids = x.dtype.kind in "iu"
    # the contract, checked strictly, so that an input the model wrongly accepts
    # is caught here instead of being read with NumPy's wraparound
    if ids and (x.min() < 0 or x.max() >= U.shape[1]):
        raise ValueError("x ids out of range")
    if not ids and (x.shape[2] != U.shape[1] or not np.isfinite(x).all()):
        raise ValueError("bad float x")
    if h0.shape != (B, H) or not np.isfinite(h0).all():
        raise ValueError("bad h0")
    if lengths is not None and (lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T):
        raise ValueError("bad lengths")
    if y is not None and y.dtype.kind in "iu":
        if y.shape != (T, B):
            raise ValueError("bad y shape")
        bad = (y < 0) | (y >= K)
        if ignore_index is not None:
            bad &= ~(y == ignore_index)
        if bad.any():
            raise ValueError("y ids out of range")
    elif y is not None and (y.shape != (T, B, K) or not np.isfinite(y).all() or (y < 0).any()):
        raise ValueError("bad target rows")
    A = U.T[x] if ids else x @ U.T                             # (T, B, H): U x_t
    if b is not None:
        A = A + b
    L = np.full(B, T) if lengths is None else lengths
    valid = np.arange(T)[:, None] < L[None, :]                 # (T, B)
    hs = np.zeros((T + 1, B, H))
    hs[0] = h0
    tie = False
    if relu and precision is not None:
        rel, tiny = (1e-5, 1e-30) if np.dtype(precision) == np.float32 else (1e-12, 1e-280)
        absA = (np.abs(U.T)[x] if ids else np.abs(x) @ np.abs(U).T) + (0 if b is None else np.abs(b))
    for t in range(T):
        a = A[t] + hs[t] @ W.T                                 # eq. (1)
        hs[t + 1] = np.where(valid[t][:, None], np.maximum(a, 0) if relu else np.tanh(a), 0)
        if relu and precision is not None:
            mag = absA[t] + np.abs(hs[t]) @ np.abs(W).T
            tie |= bool((valid[t][:, None] & (np.abs(a) <= rel * mag + tiny)).any())
    h = hs[1:]
    Z = h @ V.T + (0 if c is None else c)                      # eq. (2)
    m = Z.max(-1, keepdims=True)
    e = np.exp(Z - m)
    s = e.sum(-1, keepdims=True)
    logp = (Z - m) - np.log(s)      # not Z - lse: lse may absorb log(s) when |Z| is huge
    out = {"h": h, "probs": e / s, "h_last": hs[L, np.arange(B)], "relu_tie": tie}
    if y is None:
        return out
    if y.ndim == 2:
        keep = valid & ~(y == ignore_index) if ignore_index is not None else valid
        Y = np.zeros((T, B, K))
        tt, bb = np.nonzero(keep)
        Y[tt, bb, y[tt, bb]] = 1
    else:
        keep = valid
        Y = np.where(valid[..., None], y, 0.0)
    count = int(keep.sum())
    scale = 1.0 if reduction == "sum" else (1.0 / count if count else 0.0)
    out["loss"] = -float((Y * logp).sum()) * scale              # eq. (3)
    # what the loss's rounding error is relative to: each row's loss is a
    # difference of a logit and a log-sum-exp
    rows = (np.abs(Z).max(-1) + np.abs(m[..., 0]) + np.log(s[..., 0])) * Y.sum(-1)
    out["loss_scale"] = float(rows.sum()) * scale
    dZ = (out["probs"] * Y.sum(-1, keepdims=True) - Y) * scale
    out["dV"] = np.einsum("tbk,tbh->kh", dZ, h)                # eq. (4)
    out["dc"] = dZ.sum((0, 1)) if c is not None else None
    dH = dZ @ V
    delta = np.zeros((T, B, H))
    nxt = np.zeros((B, H))
    for t in range(T - 1, -1, -1):                             # eq. (5)
        fprime = (hs[t + 1] > 0) if relu else 1 - hs[t + 1] ** 2
        nxt = delta[t] = (dH[t] + nxt @ W) * fprime
    out["dW"] = np.einsum("tbi,tbj->ij", delta, hs[:-1])       # eq. (6)
    out["db"] = delta.sum((0, 1)) if b is not None else None
    if ids:
        dUT = np.zeros((U.shape[1], H))
        np.add.at(dUT, x.reshape(-1), delta.reshape(-1, H))
        out["dU"] = dUT.T
        out["dx"] = None
    else:
        out["dU"] = np.einsum("tbh,tbd->hd", delta, x)
        out["dx"] = delta @ U                                  # eq. (7)
    out["dh0"] = delta[0] @ W                                  # eq. (7)
    return out


def _plain(v: Any) -> np.ndarray:
    """How the reference reads a value the model accepted: object and bool arrays as numbers."""
    a = np.asarray(v)
    if a.dtype == object:
        a = np.asarray(a.tolist())
    if a.dtype == bool:
        a = a.astype(np.int64)
    return a


def _floats(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float input as the model sees it: cast to its dtype (float16 and rounding included)."""
    with np.errstate(over="ignore"):
        return a.astype(dtype).astype(np.float64)


def reference_call(model: rnn_ext.RNN, args: dict) -> dict:
    """The reference for one call of ``model`` with keyword ``args``, laid out as the model's.

    Returns the reference's arrays in the user's layout (batch_first, unbatched).
    """
    dt = model.dtype
    x = _plain(args["x"])
    ids = x.dtype.kind in "iu"
    batched = x.ndim == (2 if ids else 3)
    bf = model.batch_first and batched
    if not ids:
        x = _floats(x, dt)
    if not batched:
        x = x[:, None]
    elif bf:
        x = x.swapaxes(0, 1)
    T, B = x.shape[:2]
    H = model.hidden_size
    h0 = args.get("h0")
    h0 = np.zeros((B, H)) if h0 is None else np.broadcast_to(_floats(_plain(h0), dt), (B, H))
    lengths = args.get("lengths")
    lengths = None if lengths is None else _plain(lengths).astype(np.int64).reshape(B)
    y = args.get("y")
    if y is not None:
        y = _plain(y)
        if y.dtype.kind not in "iu":
            y = _floats(y, dt)
        if not batched:
            y = y[:, None]
        elif bf:
            y = y.swapaxes(0, 1)
    ignore_index = args.get("ignore_index", -100)
    if isinstance(ignore_index, (bool, np.bool_)):
        ignore_index = int(ignore_index)
    p = {n: None if a is None else a.astype(np.float64) for n, a in
         ((n, getattr(model, n)) for n in PARAMS)}
    ref = reference(p, model.nonlinearity == "relu", x, y, h0, lengths,
                    args.get("reduction", "sum"), ignore_index, precision=dt)

    def layout(a):
        if a is None:
            return None
        if not batched:
            return a[:, 0] if a.ndim == 3 else a[0]
        return a.swapaxes(0, 1) if bf and a.ndim == 3 else a

    return {k: (v if k in ("loss", "loss_scale", "relu_tie", "dV", "dc", "dW", "db", "dU")
                else layout(v))
            for k, v in ref.items()}


# ---------------------------------------------------------------------------
# comparing results

def close(name: str, got: Any, want: np.ndarray | None, dtype: np.dtype,
          values: bool = True) -> str | None:
    """None when ``got`` matches ``want`` in shape, dtype and (if ``values``) value."""
    if want is None:
        return None if got is None else f"{name}: expected None, got {type(got).__name__}"
    if not isinstance(got, np.ndarray):
        return f"{name}: expected an ndarray, got {type(got).__name__}"
    if got.dtype != dtype:
        return f"{name}: dtype {got.dtype}, expected the model's {dtype}"
    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, expected {want.shape}"
    if not values or not np.isfinite(want).all():
        return None  # e.g. the reference itself overflowed: only shape and dtype are defined
    rtol = RTOL[dtype]
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    g = got.astype(np.float64)
    bad = ~(np.abs(g - want) <= rtol * np.abs(want) + rtol * scale)
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        return (f"{name}: {int(bad.sum())} of {bad.size} entries differ, e.g. at {i}: "
                f"got {g[i]!r}, reference {want[i]!r} (rtol {rtol}, scale {scale:.3g})")
    return None


def close_loss(got: Any, want: float, ref: dict, dtype: np.dtype) -> str | None:
    if type(got) is not float:
        return f"loss: expected a Python float, got {type(got).__name__}"
    if not math.isfinite(want):
        return None
    scale = max(abs(want), ref["loss_scale"])
    if not abs(got - want) <= RTOL[dtype] * scale:
        return f"loss: got {got!r}, reference {want!r} (scale {scale:.3g})"
    return None


def compare(fn: str, result: Any, ref: dict, dtype: np.dtype) -> list[str]:
    """Problems with one pass's result against the reference."""
    if fn == "forward":
        if not isinstance(result, rnn_ext.ForwardResult):
            return [f"forward returned {type(result).__name__}, not ForwardResult"]
        checks = [("h", result.h, ref["h"]), ("probs", result.probs, ref["probs"]),
                  ("h_last", result.h_last, ref["h_last"])]
        return [m for n, g, w in checks if (m := close(n, g, w, dtype))]
    if fn == "loss":
        m = close_loss(result, ref["loss"], ref, dtype)
        return [m] if m else []
    if fn == "grad_V":
        if not (isinstance(result, tuple) and len(result) == 3):
            return [f"grad_V returned {type(result).__name__}, not a 3-tuple"]
        loss, dV, dc = result
        out = [close_loss(loss, ref["loss"], ref, dtype), close("dV", dV, ref["dV"], dtype),
               close("dc", dc, ref["dc"], dtype)]
        return [m for m in out if m]
    if not (isinstance(result, tuple) and len(result) == 2):
        return [f"loss_and_grad returned {type(result).__name__}, not a 2-tuple"]
    loss, g = result
    if not isinstance(g, rnn_ext.Gradients):
        return [f"loss_and_grad returned {type(g).__name__}, not Gradients"]
    out = [close_loss(loss, ref["loss"], ref, dtype)]
    # below a relu unit at its kink, only shapes and dtypes are comparable
    below = {"U", "W", "b", "h0", "x"} if ref["relu_tie"] else set()
    for n in PARAMS:
        out.append(close(f"g.{n}", getattr(g, n), ref["d" + n], dtype, values=n not in below))
    out += [close("g.h0", g.h0, ref["dh0"], dtype, values="h0" not in below),
            close("g.x", g.x, ref["dx"], dtype, values="x" not in below),
            close("g.h_last", g.h_last, ref["h_last"], dtype)]
    present = {n for n in PARAMS if ref["d" + n] is not None}
    if set(g.parameters()) != present:
        out.append(f"g.parameters() keys {sorted(g.parameters())}, expected {sorted(present)}")
    return [m for m in out if m]


# ---------------------------------------------------------------------------
# drawing cases

def relayout(a: np.ndarray, how: str) -> Any:
    """The same values in another memory layout (or as a Python list)."""
    if how == "list":
        return a.tolist()
    if how == "F":
        return np.asfortranarray(a)
    if how == "strided" and a.ndim:
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if how == "reversed" and a.ndim:
        return np.flip(np.flip(a).copy())
    if how == "unaligned" and a.dtype.itemsize > 1 and a.size:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        view = buf[1:].view(a.dtype).reshape(a.shape)
        view[...] = a
        return view
    if how == "byteswapped" and a.dtype.itemsize > 1:
        return a.astype(a.dtype.newbyteorder())
    if how == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    return np.ascontiguousarray(a)


def int_dtype_for(draw, a: np.ndarray):
    """An int dtype, any width, that holds every value of ``a``."""
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    fits = [d for d in INT_DTYPES if np.iinfo(d).min <= lo and hi <= np.iinfo(d).max]
    return draw(st.sampled_from(fits))


def values(draw, shape, lo=-3.0, hi=3.0) -> np.ndarray:
    """Float64 values exactly representable in float32 (and often in float16)."""
    n = int(np.prod(shape))
    special = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, -2.0])
    el = st.floats(lo, hi, allow_nan=False, width=32) | special
    return np.array(draw(st.lists(el, min_size=n, max_size=n)), dtype=np.float64).reshape(shape)


def ids(draw, shape, n) -> np.ndarray:
    k = int(np.prod(shape))
    return np.array(draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k)),
                    dtype=np.int64).reshape(shape)


def present(draw, a: np.ndarray, kind: str) -> tuple[Any, list[str]]:
    """``a`` (valid) in a drawn dtype and layout that keeps its meaning."""
    if kind == "int":
        a = a.astype(int_dtype_for(draw, a))
    else:
        a = a.astype(draw(st.sampled_from(FLOAT_DTYPES)))
    how = draw(st.sampled_from(LAYOUTS))
    return relayout(a, how), [f"{a.dtype}/{how}"]


def inject(a: np.ndarray, value) -> np.ndarray:
    a = a.astype(np.float64).copy()
    a.flat[len(a.flat) // 2] = value
    return a


NONFINITE = [np.nan, np.inf, -np.inf]


def twist_float(draw, a: np.ndarray, name: str, dtype: np.dtype, *, can_ndim: bool = True):
    """A hostile version of a valid float array: (value, label, note)."""
    kinds = ["nonfinite", "complex", "object", "string", "scalar"]
    if dtype == np.float32:
        kinds.append("overflow32")
    if can_ndim:
        kinds.append("ndim4")
    kind = draw(st.sampled_from(kinds))
    if kind == "nonfinite":
        v = draw(st.sampled_from(NONFINITE))
        return inject(a, v), "error", f"{name} holds {v}"
    if kind == "overflow32":
        # finite as given, infinite once cast to the model's float32
        v = draw(st.sampled_from([1e39, -1e300, 3.5e38]))
        return inject(a, v), "error", f"{name} holds {v:g} (overflows float32)"
    if kind == "complex":
        return a.astype(np.complex128), "error", f"{name} complex"
    if kind == "object":
        return a.astype(object), "either", f"{name} object dtype"
    if kind == "string":
        return a.astype(str), "error", f"{name} strings"
    if kind == "scalar":
        return draw(st.sampled_from([1.0, np.float64(0.5), np.array(2.0)])), "error", f"{name} 0-d"
    return a[None, ..., None] if a.ndim < 3 else a[None], "error", f"{name} 4-d/extra axes"


def twist_ids(draw, a: np.ndarray, name: str, n: int, ignore_index: Any = None):
    """A hostile version of valid id/target array ``a`` with values in [0, n)."""
    kind = draw(st.sampled_from(["high", "negative", "extreme", "bool", "complex", "object",
                                 "string", "scalar", "ndim", "float-ids"]))
    a = a.copy()
    i = len(a.flat) // 2
    if kind == "high":
        v = n + draw(st.integers(0, 3))
        a.flat[i] = v + 1 if v == ignore_index else v
        return a, "error", f"{name} id {a.flat[i]} >= {n}"
    if kind == "negative":
        v = -1 if ignore_index != -1 else -2
        a.flat[i] = v
        return a, "error", f"{name} id {v} < 0"
    if kind == "extreme":
        d = draw(st.sampled_from(INT_DTYPES))
        v = draw(st.sampled_from([np.iinfo(d).max, np.iinfo(d).min]))
        if v == 0 or v == ignore_index:
            v = np.iinfo(d).max
        a = a.astype(d)
        a.flat[i] = v
        return a, "error", f"{name} {d.__name__} id {v}"
    if kind == "bool":
        return a.astype(bool), "either", f"{name} bool"
    if kind == "complex":
        return a.astype(np.complex64), "error", f"{name} complex"
    if kind == "object":
        return a.astype(object), "either", f"{name} object dtype"
    if kind == "string":
        return a.astype(str), "error", f"{name} strings"
    if kind == "scalar":
        return draw(st.sampled_from([0, np.int32(0), np.array(1)])), "error", f"{name} 0-d"
    if kind == "ndim":
        return a[None, ..., None] if a.ndim < 3 else a[None], "error", f"{name} extra axes"
    # ids written as floats: a float x is read as (T, D) / (T, B, D) rows, a float
    # y as target rows; either way the shapes no longer fit ...
    if a.ndim == 1 or a.shape[-1] == n:
        # ... unless the last axis happens to fit: then make it 4-d
        return a.reshape((1,) * (4 - a.ndim) + a.shape).astype(np.float64), "error", \
            f"{name} float 4-d"
    return a.astype(np.float64), "error", f"{name} ids as floats"


@st.composite
def cases(draw) -> dict:
    """One model, a few parameter assignments and one batch of call arguments."""
    D, H, K = (draw(st.integers(1, 5)) for _ in range(3))
    bias = draw(st.booleans())
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    cfg = {"input_size": D, "hidden_size": H, "output_size": K, "bias": bias,
           "nonlinearity": draw(st.sampled_from(["tanh", "relu"])), "dtype": dtype,
           "seed": draw(st.integers(0, 2**32 - 1)), "batch_first": draw(st.booleans())}
    notes: list[str] = []
    # hostile twists: how many and where
    n_twists = draw(st.sampled_from([0, 0, 1, 1, 1, 2]))
    where = [draw(st.sampled_from(["x", "y", "h0", "lengths", "reduction", "ignore_index",
                                   "setter", "batch"])) for _ in range(n_twists)]

    # parameter assignments
    setters = []
    shapes = {"U": (H, D), "W": (H, H), "V": (K, H), "b": (H,), "c": (K,)}
    for _ in range(draw(st.integers(0, 2)) + where.count("setter")):
        name = draw(st.sampled_from(PARAMS))
        hostile = "setter" in where and not any(s[2] != "ok" for s in setters)
        if name in "bc" and not bias:
            # a bias-free model keeps b and c None
            if draw(st.booleans()):
                setters.append((name, None, "ok", f"{name}=None"))
            else:
                setters.append((name, np.zeros(shapes[name]), "error", f"{name} on bias=False"))
            continue
        v = values(draw, shapes[name], -2.0, 2.0)
        if not hostile:
            if draw(st.booleans()):
                v = np.round(v)  # small ints, as an int array
                val, how = present(draw, v.astype(np.int64), "int")
            else:
                val, how = present(draw, v, "float")
            setters.append((name, val, "ok", f"{name}={how}"))
            continue
        kind = draw(st.sampled_from(["float", "shape", "none"]))
        if kind == "float":
            val, label, note = twist_float(draw, v, name, dtype)
        elif kind == "shape":
            s = shapes[name]
            bad = draw(st.sampled_from([s[::-1] if len(s) == 2 and s[0] != s[1] else s + (1,),
                                        (s[0] + 1,) + s[1:], s[:-1] or (0,)]))
            val, label, note = np.zeros(bad), "error", f"{name} shape {bad}"
        else:
            val, label, note = None, "error", f"{name}=None with bias"
        setters.append((name, val, label, note))

    # a valid batch
    T, B = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    batched = draw(st.booleans()) or "lengths" in where
    use_ids = draw(st.booleans())
    xs = ids(draw, (T, B), D) if use_ids else values(draw, (T, B, D))
    soft = draw(st.booleans())
    ignore_index = draw(st.sampled_from([-100, -100, -1, 0, K - 1, K + 1, np.int16(2)]))
    if soft:
        ys = np.abs(values(draw, (T, B, K), 0.0, 2.0))
    else:
        ys = ids(draw, (T, B), K)
        if draw(st.booleans()):
            ys[0, 0] = ignore_index
    # y then holds an id that is valid only as long as it is the ignore_index
    y_needs_ignore = not soft and ys[0, 0] == ignore_index and not 0 <= ignore_index < K
    h0 = values(draw, (B, H)) if draw(st.booleans()) else None
    lengths = (np.array(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
               if batched and draw(st.booleans()) else None)
    xs_tm, ys_tm = xs, ys
    if not batched:
        xs, ys = xs[:, 0], ys[:, 0]
        h0 = None if h0 is None else h0[0]
    elif cfg["batch_first"]:
        xs, ys = xs.swapaxes(0, 1), ys.swapaxes(0, 1)

    args: dict[str, Any] = {}
    labels = {}
    args["x"], n = present(draw, xs, "int" if use_ids else "float")
    notes += ["x " + n[0]]
    args["y"], n = present(draw, ys, "float" if soft else "int")
    notes += ["y " + n[0]]
    if h0 is not None:
        args["h0"], n = present(draw, h0, "float")
        notes += ["h0 " + n[0]]
    if lengths is not None:
        args["lengths"], n = present(draw, lengths, "int")
        notes += ["lengths " + n[0]]
    if ignore_index != -100 or draw(st.booleans()):
        args["ignore_index"] = ignore_index
    if draw(st.booleans()):
        args["reduction"] = draw(st.sampled_from(["sum", "mean", np.str_("mean")]))

    # the twists
    for w in where:
        if w == "setter":
            continue
        if w == "x":
            if use_ids:
                v, lab, note = twist_ids(draw, xs, "x", D)
            else:
                v, lab, note = twist_float(draw, xs, "x", dtype)
                if draw(st.booleans()):
                    v, lab = (xs[..., :-1] if D > 1 else xs[..., :0]), "error"
                    note = "x last axis != D"
            args["x"] = v
        elif w == "y":
            if soft:
                kind = draw(st.sampled_from(["float", "negative", "width"]))
                if kind == "float":
                    v, lab, note = twist_float(draw, ys, "y", dtype)
                elif kind == "negative":
                    v, lab, note = inject(ys, -0.5), "error", "y negative entry"
                else:
                    v, lab, note = np.concatenate([ys, ys[..., :1]], -1), "error", "y width K+1"
            else:
                v, lab, note = twist_ids(draw, ys, "y", K, ignore_index)
            args["y"] = v
        elif w == "h0":
            base = values(draw, (B, H)) if batched else values(draw, (H,))
            kind = draw(st.sampled_from(["float", "shape", "unbatched-shape"]))
            if kind == "float":
                v, lab, note = twist_float(draw, base, "h0", dtype, can_ndim=False)
            elif kind == "shape":
                v = values(draw, (B + 1, H) if batched else (H + 1,))
                lab, note = "error", f"h0 shape {v.shape}"
            elif batched:
                # (H,) for a batch: one shared state, broadcast; the contract leaves it open
                v, lab, note = base[0], "either", "h0 (H,) for a batch"
            else:
                v, lab, note = base[None], "either", "h0 (1, H) for unbatched x"
            args["h0"] = v
        elif w == "lengths":
            good = np.full(B, T)
            kind = draw(st.sampled_from(["zero", "negative", "long", "shape", "2d", "scalar",
                                         "float", "fraction", "bool", "unbatched"]))
            if kind == "zero":
                v, lab = good.copy(), "error"
                v[-1] = 0
            elif kind == "negative":
                v, lab = good.copy(), "error"
                v[0] = -draw(st.integers(1, 2**62))
            elif kind == "long":
                v, lab = good.copy(), "error"
                v[0] = T + draw(st.sampled_from([1, 2**40]))
            elif kind == "shape":
                v, lab = np.full(B + 1, T), "error"
            elif kind == "2d":
                v, lab = good[None], "error"
            elif kind == "scalar":
                v, lab = np.int64(T), ("either" if B == 1 else "error")
            elif kind == "float":
                v, lab = good.astype(np.float64), "either"
            elif kind == "fraction":
                v, lab = good - 0.5, "error"
            elif kind == "bool":
                v, lab = np.ones(B, bool), "either"
            else:
                # lengths with unbatched x: x, y and h0 lose their batch axis
                args["x"], args["y"] = xs_tm[:, 0], ys_tm[:, 0]
                args.pop("h0", None)
                v, lab = np.array([T]), "error"
            note = f"lengths {kind} {v!r}"
            args["lengths"] = v
        elif w == "reduction":
            v = draw(st.sampled_from(["none", "SUM", "Mean", None, 0, b"sum", ["sum"], ("mean",)]))
            args["reduction"], lab, note = v, "error", f"reduction={v!r}"
        elif w == "ignore_index":
            v, lab = draw(st.sampled_from([
                (2**70, "either"), (-2**70, "either"), (2**63, "either"), (np.uint64(2**64 - 1), "either"),
                (True, "either"), (1.0, "either"), (1.5, "error"), ("-100", "error"),
                (None, "either"), (np.int8(-100), "ok")]))
            args["ignore_index"] = v
            note = f"ignore_index={v!r}"
            if lab == "ok" and y_needs_ignore and v != ignore_index:
                lab, note = "error", note + f" (y holds {ignore_index}, no longer ignored)"
        else:  # batch: y, h0 or lengths for another batch size
            if not batched:
                continue
            which = draw(st.sampled_from(["y", "h0", "lengths"]))
            if which == "y":
                bad = np.concatenate([ys, ys[:1] if cfg["batch_first"] else ys[:, :1]],
                                     0 if cfg["batch_first"] else 1)
                args["y"] = bad
            elif which == "h0":
                args["h0"] = values(draw, (B + 1, H))
            else:
                args["lengths"] = np.full(B + 1, T)
            w, lab, note = which, "error", f"{which} for batch {B + 1}, x has {B}"
        labels[w] = worst(labels.get(w, "ok"), lab)
        notes.append(note)
    return {"config": cfg, "setters": setters, "args": args, "labels": labels, "notes": notes,
            "positional": draw(st.booleans())}


def worst(*labels: str) -> str:
    for lab in ("error", "either"):
        if lab in labels:
            return lab
    return "ok"


FORWARD_ARGS = ("x", "h0", "lengths")


def label_of(fn: str, labels: dict) -> str:
    names = FORWARD_ARGS if fn == "forward" else labels.keys()
    return worst(*(labels[n] for n in names if n in labels))


# ---------------------------------------------------------------------------
# running a case

def snapshot(v: Any) -> Any:
    """A deep, exact copy of an argument, to prove the call left it alone."""
    if isinstance(v, np.ndarray):
        return (v.copy(), v.dtype, v.shape, v.strides, v.flags.writeable)
    return pickle.dumps(v)


def unchanged(before: Any, v: Any) -> bool:
    if isinstance(v, np.ndarray):
        a, dt, shape, strides, writeable = before
        if (v.dtype, v.shape, v.strides, v.flags.writeable) != (dt, shape, strides, writeable):
            return False
        if v.dtype.kind in "fc":
            return bool(np.array_equal(a, v, equal_nan=True))
        return bool(np.array_equal(a, v)) if v.dtype != object else a.tolist() == v.tolist()
    return before == pickle.dumps(v)


class Stats:
    """Counts for the fuzz script: calls made, refused, returned."""

    def __init__(self) -> None:
        self.calls = self.refused = self.returned = 0


def call(fn, *a, **kw):
    """fn(*a, **kw) -> ("ok", result) | ("refused", exc) | ("crashed", exc).

    Warnings are errors here as they are in the test suite: a RuntimeWarning
    from an overflowing cast is as much an escape as an exception.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return "ok", fn(*a, **kw)
        except (ValueError, TypeError) as exc:
            return "refused", exc
        except Exception as exc:  # noqa: BLE001 (the point is to catch anything else)
            return "crashed", exc


def check_case(case: dict, stats: Stats | None = None) -> list[str]:
    """Run every call of one case; return the problems found (empty when all is well)."""
    stats = stats or Stats()
    problems: list[str] = []
    cfg = case["config"]

    def record(fn, label, outcome, value, context=""):
        stats.calls += 1
        if outcome == "ok":
            stats.returned += 1
            if label == "error":
                problems.append(f"{fn}{context}: accepted input that must be refused")
                return False
            return True
        if outcome == "crashed":
            problems.append(f"{fn}{context}: raised {type(value).__name__}: {value}")
            return False
        stats.refused += 1
        if not str(value).strip():
            problems.append(f"{fn}{context}: {type(value).__name__} with an empty message")
        if label == "ok":
            problems.append(f"{fn}{context}: refused valid input: {type(value).__name__}: {value}")
        return False

    outcome, model = call(rnn_ext.RNN, **cfg)
    record("RNN", "ok", outcome, model)
    if outcome != "ok":
        return problems

    for name, value, label, note in case["setters"]:
        before_param = getattr(model, name)
        before_param = None if before_param is None else before_param.copy()
        before_value = snapshot(value)
        outcome, exc = call(setattr, model, name, value)
        if record(f"{name} =", label, outcome, exc, f" ({note})"):
            stored = getattr(model, name)
            if value is None:
                if stored is not None:
                    problems.append(f"{name} = None stored {type(stored).__name__}")
            elif not (isinstance(stored, np.ndarray) and stored.dtype == model.dtype
                      and stored.flags.c_contiguous and stored.flags.writeable
                      and np.array_equal(stored, _plain(value).astype(model.dtype))):
                problems.append(f"{name} = ({note}) stored {stored!r}")
            elif isinstance(value, np.ndarray) and np.shares_memory(stored, value):
                problems.append(f"{name} = ({note}) kept the caller's array, not a copy")
        elif outcome == "refused":
            now = getattr(model, name)
            if not (now is None and before_param is None) and not (
                    now is not None and before_param is not None
                    and np.array_equal(now, before_param)):
                problems.append(f"{name} = ({note}) was refused but changed the parameter")
        if not unchanged(before_value, value):
            problems.append(f"{name} = ({note}) modified the assigned value")

    args = case["args"]
    before = {k: snapshot(v) for k, v in args.items()}
    params_before = {n: a.copy() for n, a in model.parameters().items()}
    refs: dict[bool, dict] = {}
    ref_errors: dict[bool, str] = {}
    for fn in PASSES:
        kw = {k: v for k, v in args.items() if fn != "forward" or k in FORWARD_ARGS}
        label = label_of(fn, case["labels"])
        if case["positional"]:
            order = ["x", "h0", "lengths"] if fn == "forward" else [
                "x", "y", "h0", "lengths", "reduction", "ignore_index"]
            pos = [kw.get(k) for k in order]
            defaults = {"h0": None, "lengths": None, "reduction": "sum", "ignore_index": -100}
            for i, k in enumerate(order):
                if k not in kw:
                    pos[i] = defaults[k]
            outcome, result = call(getattr(model, fn), *pos)
        else:
            outcome, result = call(getattr(model, fn), **kw)
        if not record(fn, label, outcome, result):
            continue
        fwd = fn == "forward"
        if fwd not in refs and fwd not in ref_errors:
            try:
                with np.errstate(all="ignore"):
                    refs[fwd] = reference_call(model, kw)
            except Exception as exc:  # noqa: BLE001
                ref_errors[fwd] = f"{type(exc).__name__}: {exc}"
        ref = refs.get(fwd)
        if ref is None:
            problems.append(f"{fn}: accepted input the reference cannot read ({ref_errors[fwd]})")
            continue
        problems += [f"{fn}: {m}" for m in compare(fn, result, ref, model.dtype)]
    for k, v in args.items():
        if not unchanged(before[k], v):
            problems.append(f"argument {k} was modified by a call")
    for n, a in model.parameters().items():
        if not np.array_equal(a, params_before[n], equal_nan=True):
            problems.append(f"parameter {n} was modified by a pass")
    return problems


def describe(case: dict) -> str:
    """A readable summary of a case, for failure messages."""
    cfg = dict(case["config"], dtype=np.dtype(case["config"]["dtype"]).name)
    lines = [f"RNN(**{cfg})", "twists: " + "; ".join(case["notes"]),
             "labels: " + repr(case["labels"])]
    for name, value, label, note in case["setters"]:
        lines.append(f"  model.{name} = {value!r}   # {label}: {note}")
    with np.printoptions(threshold=10**6, precision=17):
        for k, v in case["args"].items():
            lines.append(f"  {k} = {v!r}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# the tests

@PROFILE
@given(case=cases())
def test_every_call_matches_reference_or_refuses(case):
    problems = check_case(case)
    assert not problems, describe(case) + "\n" + "\n".join(problems)


CONSTRUCTOR_VALUES = {
    "size": [(3, "ok"), (np.int64(2), "ok"), (np.uint8(1), "ok"), (0, "error"), (-1, "error"),
             (2.0, "error"), (True, "error"), (None, "error"), ("3", "error"), ([3], "error"),
             (np.array(3), "either"), (2**31, "error"), (2**64, "error"), (complex(2), "error")],
    "bias": [(True, "ok"), (False, "ok"), (1, "either"), (np.bool_(True), "either"),
             (None, "either"), ("yes", "error")],
    "nonlinearity": [("tanh", "ok"), ("relu", "ok"), ("Tanh", "either"), ("sigmoid", "error"),
                     (None, "error"), (["tanh"], "error"), (np.array(["tanh", "relu"]), "error"),
                     (1, "error")],
    "dtype": [(np.float32, "ok"), ("float64", "ok"), (np.dtype("f4"), "ok"),
              (np.float16, "error"), (int, "error"), ("f8,f8", "error"), (np.complex64, "error"),
              (object, "error"), ("nonsense", "error"), (None, "either")],
    "seed": [(None, "ok"), (0, "ok"), (2**100, "ok"), (np.int32(5), "ok"), ([1, 2], "either"),
             (-1, "error"), (1.5, "error"), ("seed", "error"), (float("nan"), "error")],
    "batch_first": [(False, "ok"), (True, "ok"), (0, "either"), (None, "either"), ("no", "error")],
}


@st.composite
def constructor_args(draw) -> tuple[dict, str]:
    """Arguments for RNN(...), some hostile, and the label they earn."""
    kw, labels = {}, []
    for key in ("input_size", "hidden_size", "output_size"):
        v, lab = draw(st.sampled_from(CONSTRUCTOR_VALUES["size"]), label=key)
        kw[key] = v
        labels.append(lab)
    for key in ("bias", "nonlinearity", "dtype", "seed", "batch_first"):
        if draw(st.booleans(), label=f"pass {key}"):
            v, lab = draw(st.sampled_from(CONSTRUCTOR_VALUES[key]), label=key)
            kw[key] = v
            labels.append(lab)
    return kw, worst(*labels)


def check_constructor(kw: dict, label: str, stats: Stats | None = None) -> list[str]:
    """RNN(**kw) refuses with a message or builds a valid, working model."""
    stats = stats or Stats()
    sizes = [kw[k] for k in ("input_size", "hidden_size", "output_size")]
    rest = {k: v for k, v in kw.items() if not k.endswith("_size")}
    outcome, m = call(rnn_ext.RNN, *sizes, **rest)
    stats.calls += 1
    if outcome == "crashed":
        return [f"RNN(**{kw!r}) raised {type(m).__name__}: {m}"]
    if outcome == "refused":
        stats.refused += 1
        if not str(m).strip():
            return [f"RNN(**{kw!r}) raised {type(m).__name__} with no message"]
        return [f"RNN(**{kw!r}) refused valid arguments: {m}"] if label == "ok" else []
    stats.returned += 1
    if label == "error":
        return [f"RNN(**{kw!r}) accepted bad arguments: {m!r}"]
    problems = []
    D, H, K = m.input_size, m.hidden_size, m.output_size
    if (D, H, K) != tuple(int(v) for v in sizes) or m.dtype not in (np.float32, np.float64):
        problems.append(f"RNN(**{kw!r}) built {m!r}")
    for n, shape in {"U": (H, D), "W": (H, H), "V": (K, H), "b": (H,), "c": (K,)}.items():
        a = getattr(m, n)
        if a is None:
            if m.bias or n not in "bc":
                problems.append(f"RNN(**{kw!r}).{n} is None")
        elif not (a.shape == shape and a.dtype == m.dtype and a.flags.c_contiguous
                  and np.isfinite(a).all() and (np.abs(a) <= (1 + 1e-6) / np.sqrt(H)).all()):
            problems.append(f"RNN(**{kw!r}).{n} = {a!r}")
    # and it runs
    outcome, r = call(m.loss_and_grad, np.zeros(2, np.int64), np.zeros(2, np.int64))
    stats.calls += 1
    if outcome != "ok" or not math.isfinite(r[0]):
        problems.append(f"RNN(**{kw!r}).loss_and_grad on zeros gave {r!r}")
    return problems


@PROFILE
@given(args=constructor_args())
def test_constructor_refuses_or_builds_a_valid_model(args):
    kw, label = args
    problems = check_constructor(kw, label)
    assert not problems, "\n".join(problems)


@settings(PROFILE, max_examples=max(10, EXAMPLES // 5))
@given(data=st.data())
def test_reference_agrees_with_the_oracle(data):
    """The NumPy reference of this file is itself checked against rnn_ext.oracle."""
    T, B, D, H, K = (data.draw(st.integers(1, 4)) for _ in range(5))
    relu = data.draw(st.booleans())
    bias = data.draw(st.booleans())
    p = {"U": values(data.draw, (H, D)), "W": values(data.draw, (H, H)),
         "V": values(data.draw, (K, H)),
         "b": values(data.draw, (H,)) if bias else None,
         "c": values(data.draw, (K,)) if bias else None}
    x = ids(data.draw, (T, B), D) if data.draw(st.booleans()) else values(data.draw, (T, B, D))
    soft = data.draw(st.booleans())
    y = np.abs(values(data.draw, (T, B, K))) if soft else ids(data.draw, (T, B), K)
    ignore_index = data.draw(st.integers(-1, K))
    h0 = values(data.draw, (B, H))
    lengths = np.array(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    reduction = data.draw(st.sampled_from(["sum", "mean"]))
    ref = reference(p, relu, x, y, h0, lengths, reduction, ignore_index)
    nl = "relu" if relu else "tanh"
    loss, g = oracle.loss_and_grad(p["U"].tolist(), p["W"].tolist(), p["V"].tolist(),
                                   None if p["b"] is None else p["b"].tolist(),
                                   None if p["c"] is None else p["c"].tolist(),
                                   x.tolist(), y.tolist(), h0.tolist(), lengths.tolist(), nl,
                                   reduction, ignore_index)
    fwd = oracle.forward(p["U"].tolist(), p["W"].tolist(), p["V"].tolist(),
                         None if p["b"] is None else p["b"].tolist(),
                         None if p["c"] is None else p["c"].tolist(),
                         x.tolist(), h0.tolist(), lengths.tolist(), nl)
    np.testing.assert_allclose(ref["loss"], loss, rtol=1e-10, atol=1e-12)
    for k in ("h", "probs", "h_last"):
        np.testing.assert_allclose(ref[k], np.array(fwd[k]), rtol=1e-10, atol=1e-12, err_msg=k)
    for n in ("U", "W", "V", "b", "c", "h0", "x"):
        want = ref["d" + n]
        if want is None:
            assert g[n] is None, n
        else:
            np.testing.assert_allclose(want, np.array(g[n]), rtol=1e-9, atol=1e-10, err_msg=n)


# ---------------------------------------------------------------------------
# live parameters and public attributes: changed behind the model's back, a
# pass must refuse or compute, never read or write out of bounds

TAMPER = {
    "V.shape": "m.V.shape = (m.V.size, 1)",
    "U.shape": "m.U.shape = (1, m.U.size)",
    "W.shape": "m.W.shape = (1, m.W.size)",
    "U.dtype": "m.U.dtype = np.float64 if m.dtype == np.float32 else np.float32",
    "output_size": "m.output_size = 1",
    "input_size": "m.input_size = 64",
    "hidden_size": "m.hidden_size = 1",
    "dtype": "m.dtype = np.dtype(np.float64)",
    "bias": "m.bias = False",
}

TAMPER_SCRIPT = """
import sys, numpy as np, rnn_ext
m = rnn_ext.RNN(4, 4, 2, seed=0)
try:
    {tamper}
except (AttributeError, ValueError, TypeError) as exc:  # a read-only attribute: refused
    print("survived: the change itself was refused:", exc)
    sys.exit(0)
calls = [lambda: m.forward(np.zeros((40, 3), dtype=int)),
         lambda: m.loss_and_grad(np.zeros((40, 3), dtype=int), np.zeros((40, 3), dtype=int)),
         lambda: m.loss_and_grad(np.zeros((40, 3, 4)), np.zeros((40, 3), dtype=int))]
for i in range(200):
    for c in calls:
        try:
            c()
        except (ValueError, TypeError):
            pass
print("survived")
"""


@pytest.mark.parametrize("what", sorted(TAMPER))
def test_tampered_model_never_corrupts_memory(what):
    """Parameters are live arrays, so a user can reshape them in place, and size
    attributes might be reassigned; either change is refused, or the next pass
    refuses (or computes correctly), never writes past the end of a buffer.  Run in a child process, so a heap overflow
    shows as a crash of the child, not of the test run."""
    code = textwrap.dedent(TAMPER_SCRIPT).format(tamper=TAMPER[what])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=child_env())
    assert proc.returncode == 0 and "survived" in proc.stdout, (
        f"after `{TAMPER[what]}` the passes crashed the process (exit {proc.returncode}):\n"
        f"{proc.stderr[-2000:]}")


def child_env() -> dict:
    """The environment for a child Python that must import this same rnn_ext."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(rnn_ext.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env

"""First-order optimizers that update parameters in place, one compiled loop per buffer.

Each optimizer follows PyTorch's update rule for the same name and defaults
(``torch.optim.SGD``, ``Adagrad`` and ``Adam``, single-tensor implementation,
no weight decay), so parameters trained here and with ``torch.optim`` from
the same start agree to rounding.

An optimizer updates one *piece* or a list of them.  A piece is anything that
keeps its parameters in one flat buffer: ``.flat`` (a 1-D contiguous float32
or float64 array) and ``.params`` (a dict of name -> view into ``.flat``) --
a model, a recurrent layer, a head.  The optimizer's slots (momentum buffer,
Adagrad sums, Adam moments) are flat arrays laid out like ``.flat``, so a step
with a gradient that has ``.flat`` is one compiled, GIL-free loop over the
whole buffer (src/_flat.pyx).  Objects that only have ``.parameters()`` (a
dict of name -> array) work too, one loop per array.

State is exported by :meth:`Optimizer.state_dict` per parameter name
(``"U.step"``, ``"U.exp_avg"``, ...) as plain numbers and arrays, so it can be
stored in an ``.npz`` file without pickling, and files written by earlier
versions load.

Examples
--------
>>> opt = rnn_ext.optim.Adam(model, lr=2e-3)
>>> loss, g = model.loss_and_grad(x, y)
>>> rnn_ext.clip_grad_value(g, 5.0)
>>> opt.step(g)                              # model.flat changes in place
>>> opt = rnn_ext.optim.Adam([layer, head])  # several pieces, one optimizer
>>> opt.step([g_layer, g_head])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import _flat

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "from_state_dict"]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# -- gradients ----------------------------------------------------------------


def _grad_arrays(grads: Any) -> dict[str, Any]:
    """Return ``{name: gradient array}`` for a Gradients object or a dict.

    For a Gradients object the arrays are its attributes (``grads.U`` ...),
    so in-place edits (clipping) are seen by whoever reads the object next.
    Entries that are ``None`` (no gradient for that parameter) are dropped.
    """
    items: Iterable[tuple[str, Any]]
    if isinstance(grads, Mapping):
        items = grads.items()
    elif callable(getattr(grads, "parameters", None)):
        items = ((name, getattr(grads, name, g)) for name, g in grads.parameters().items())
    elif isinstance(getattr(grads, "params", None), Mapping):
        items = grads.params.items()
    else:
        raise TypeError(
            "expected a Gradients object (from loss_and_grad or backward), a dict of "
            f"name -> array, or a list of those, got {type(grads).__name__}"
        )
    return {name: g for name, g in items if g is not None}


def _grad_flat(grads: Any) -> np.ndarray | None:
    """A gradient object's ``.flat`` buffer, or None when it has none."""
    flat = getattr(grads, "flat", None)
    if not isinstance(flat, np.ndarray):
        return None
    return None if isinstance(grads, Mapping) else flat


def _as_grad(name: str, g: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """g checked against its parameter and made a 1-D contiguous array of dtype."""
    g = np.asarray(g)
    if g.shape != shape:
        raise ValueError(f"gradient {name!r} has shape {g.shape}, expected {shape} like the parameter")
    if g.dtype != dtype:
        if g.dtype.kind != "f":
            raise TypeError(f"gradient {name!r} has dtype {g.dtype}, expected {dtype}")
        g = _cast(g, dtype)
    return np.ascontiguousarray(g).reshape(-1)


def _cast(g: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # a value too large for dtype becomes inf, which the finiteness check reports
    with np.errstate(over="ignore"):
        return g.astype(dtype)


# -- hyperparameters ----------------------------------------------------------


def _check_positive(name: str, value: Any) -> float:
    if type(value) is float and 0 < value < math.inf:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _check_unit_interval(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def _plain(v: Any) -> Any:
    """A 0-d array or numpy scalar as the matching Python value."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    elif isinstance(v, np.generic):
        v = v.item()
    return v


# -- pieces -------------------------------------------------------------------


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


class _Piece:
    """One piece an optimizer updates, and the optimizer's state for it.

    ``names`` are in the order of the parameters in the flat buffer;
    ``spans[name]`` is the parameter's ``(lo, hi)`` in it.  For a piece
    without ``.flat`` (an object with ``.parameters()`` only) the spans lay
    the parameters end to end in a buffer of the optimizer's own, which holds
    only the slots.  ``slots`` are flat arrays laid out by the spans;
    ``steps[i]`` counts the steps taken for ``names[i]`` (0: none yet).
    """

    __slots__ = ("obj", "flat", "names", "shapes", "spans", "size", "dtype", "tiled",
                 "slots", "steps")

    def __init__(self, obj: Any, slot_names: tuple[str, ...]) -> None:
        self.obj = obj
        flat = _piece_flat(obj)
        self.flat: np.ndarray | None = flat
        if flat is not None:
            names, spans, shapes, dtype, size, tiled = _flat_layout(obj, flat)
        elif callable(getattr(obj, "parameters", None)):
            names, spans, shapes, dtype, size, tiled = _named_layout(obj.parameters())
        else:
            raise TypeError(
                "expected a piece with .flat and .params (a model, layer or head), a model "
                f"with .parameters(), or a list of those, got {type(obj).__name__}"
            )
        self.names, self.spans, self.shapes = names, spans, shapes
        self.dtype, self.size, self.tiled = dtype, size, tiled
        self.slots = tuple(np.zeros(size, dtype=dtype) for _ in slot_names)
        self.steps = [0] * len(names)

    def current_flat(self) -> np.ndarray:
        """The piece's flat buffer now, checked to have the layout the slots follow."""
        flat = self.obj.flat
        if flat is not self.flat:
            layout = _flat_layout(self.obj, flat)
            if layout[:3] != (self.names, self.spans, self.shapes) or layout[4] != self.size:
                raise ValueError(
                    f"the parameters of {type(self.obj).__name__} changed names or shapes since "
                    "the optimizer was built; build a new optimizer"
                )
            self.flat = flat
        return flat

    def locate(self, index: int) -> tuple[str, tuple[int, ...]]:
        """The parameter name and multi-index of element ``index`` of the spans' buffer."""
        for name in self.names:
            lo, hi = self.spans[name]
            if lo <= index < hi:
                at = np.unravel_index(index - lo, self.shapes[name])
                return name, tuple(int(i) for i in at)
        raise AssertionError(f"flat index {index} lies in no parameter")  # runs cover spans only


def _piece_flat(obj: Any) -> np.ndarray | None:
    if isinstance(obj, Mapping) or not hasattr(obj, "params"):
        return None
    flat = getattr(obj, "flat", None)
    return flat if isinstance(flat, np.ndarray) else None


def _check_dtype(what: str, dtype: np.dtype) -> None:
    if dtype not in _DTYPES:
        raise TypeError(f"{what} must be float32 or float64, got {dtype}")


def _flat_layout(obj: Any, flat: np.ndarray) -> tuple:
    """(names, spans, shapes, dtype, size, tiled) of a piece's named views into ``flat``."""
    kind = type(obj).__name__
    if flat.ndim != 1 or not flat.flags.c_contiguous:
        raise ValueError(f"{kind}.flat must be a 1-D contiguous array, got shape {flat.shape}")
    if not flat.flags.writeable:
        raise ValueError(f"{kind}.flat is read-only; the optimizer updates it in place")
    _check_dtype(f"{kind}.flat", flat.dtype)
    params = obj.params
    if not isinstance(params, Mapping):
        raise TypeError(f"{kind}.params must be a dict of name -> array, got {type(params).__name__}")
    base, item = _address(flat), flat.itemsize
    found = []
    for name, p in params.items():
        if p is None:
            continue
        if not (isinstance(p, np.ndarray) and p.dtype == flat.dtype and p.flags.c_contiguous):
            raise ValueError(f"{kind}.params[{name!r}] is not a contiguous {flat.dtype} view into .flat")
        lo, rem = divmod(_address(p) - base, item)
        if rem or lo < 0 or lo + p.size > flat.size:
            raise ValueError(f"{kind}.params[{name!r}] is not a view into {kind}.flat")
        found.append((lo, lo + p.size, name, p.shape))
    found.sort()
    for (_, hi, a, _), (lo, _, b, _) in zip(found, found[1:]):
        if lo < hi:
            raise ValueError(f"{kind}.params[{a!r}] and [{b!r}] overlap in .flat")
    names = tuple(name for _, _, name, _ in found)
    spans = {name: (lo, hi) for lo, hi, name, _ in found}
    shapes = {name: shape for _, _, name, shape in found}
    # tiled: the parameters cover the buffer end to end, with no gap
    at = 0
    tiled = True
    for lo, hi, _, _ in found:
        tiled = tiled and lo == at
        at = hi
    tiled = tiled and at == flat.size
    return names, spans, shapes, flat.dtype, flat.size, tiled


def _named_layout(params: Mapping) -> tuple:
    """The layout of separate named arrays laid end to end, for their slots only."""
    names, spans, shapes, dtypes = [], {}, {}, set()
    at = 0
    for name, p in params.items():
        if p is None:
            continue
        if not isinstance(p, np.ndarray):
            raise TypeError(f"parameter {name!r} must be a numpy array, got {type(p).__name__}")
        names.append(name)
        spans[name] = (at, at + p.size)
        shapes[name] = p.shape
        dtypes.add(p.dtype)
        at += p.size
    if len(dtypes) > 1:
        raise TypeError(f"all parameters must have one dtype, got {sorted(map(str, dtypes))}")
    dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
    _check_dtype("parameters", dtype)
    return tuple(names), spans, shapes, dtype, at, False


# -- the optimizer ------------------------------------------------------------


# One update: (piece, parameters, gradient, slot arrays, step number, name indices).
_Update = tuple


class Optimizer:
    """Base class: pieces, gradient checks, the step, and state (de)serialization.

    Subclasses name their hyperparameters in ``_hyper`` and their slots in
    ``_slots``, check hyperparameters in ``_check_hyper`` and implement
    ``_kernel(p, g, slots, step, clip)``: one compiled update of 1-D arrays
    (clip > 0: clamp g in place first).

    Parameters
    ----------
    model : piece or list of pieces
        Each has ``.flat`` and ``.params`` (or, as earlier versions took,
        ``.parameters()``).  Parameter names must be unique over the pieces:
        they key the state.
    """

    _hyper: tuple[str, ...] = ()
    _slots: tuple[str, ...] = ()

    def __init__(self, model: Any) -> None:
        objs = list(model) if isinstance(model, list | tuple) else [model]
        if not objs:
            raise ValueError("expected at least one piece to optimize, got an empty list")
        pieces = [_Piece(obj, self._slots) for obj in objs]
        for i, a in enumerate(pieces):
            for j in range(i + 1, len(pieces)):
                b = pieces[j]
                if a.flat is not None and b.flat is not None and np.shares_memory(a.flat, b.flat):
                    raise ValueError(
                        f"pieces {i} and {j} share parameter memory (a model and its own layer "
                        "or head?); each parameter must be updated once"
                    )
        owner: dict[str, int] = {}
        for i, piece in enumerate(pieces):
            for name in piece.names:
                if name in owner:
                    raise ValueError(
                        f"parameter name {name!r} appears in pieces {owner[name]} and {i}; the "
                        "optimizer keys its state by name, so use one optimizer per piece"
                    )
                owner[name] = i
        self.model = model
        self._pieces = pieces

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        return f"{type(self).__name__}({args})"

    # -- the step ---------------------------------------------------------------

    def step(self, grads: Any, clip_value: float | None = None) -> None:
        """Apply one update to the parameters, in place.

        Parameters
        ----------
        grads : gradient object, dict of str -> ndarray, or list of them
            One per piece, in the order the pieces were given (a single one
            for a single piece).  An object with ``.flat`` (laid out like the
            piece's ``.flat``) is applied with one compiled loop over the
            whole buffer.  Otherwise gradients are taken by name, from a dict
            (``{"U": dU, ...}``) or an object with ``.parameters()``; a
            parameter whose gradient is missing or None is skipped, as
            PyTorch skips parameters whose ``.grad`` is None.  With several
            pieces, one dict may name parameters of any of them; a None in
            the list skips that piece.
        clip_value : float > 0 or None
            Clamp every gradient entry to ``[-clip_value, clip_value]`` in
            place first: the same gradients and parameters as
            ``clip_grad_value(grads, clip_value)`` then ``step(grads)``, in
            one pass over each buffer instead of two when every gradient is
            its piece's own ``.flat`` layout (else the clip runs first, as
            ``clip_grad_value``).  Clamping makes an infinity finite, so
            only a NaN is refused then.

        Raises
        ------
        ValueError
            A gradient's shape does not match, names no parameter, or holds
            a NaN or infinity (the message names the parameter and element).
            Everything is checked before anything is written: after an error
            no parameter, slot or step count has changed.
        TypeError
            A gradient is not an array of floats, or not a gradient object.
        """
        cv = 0.0 if clip_value is None else _check_positive("clip_value", clip_value)
        pairs = self._pair(grads)
        updates: list[_Update] = []
        whole = True
        for piece, g in pairs:
            if g is not None:
                whole = self._plan(piece, g, updates) and whole
        if cv:
            if whole:  # each update's loop clamps its gradient buffer itself
                for u in updates:
                    if not u[2].flags.writeable:
                        raise ValueError("gradient .flat is read-only")
            else:  # some gradient is copied or split: clip the caller's arrays first
                from .clip import clip_grad_value  # clip imports this module

                clip_grad_value([g for _, g in pairs if g is not None], cv)
                cv = 0.0
                updates = []
                for piece, g in pairs:
                    if g is not None:
                        self._plan(piece, g, updates)
        scan = _flat.first_nan if cv else _flat.first_nonfinite
        for piece, _, g, _, _, which in updates:
            k = scan(g)
            if k >= 0:
                # g starts where its first parameter does
                name, at = piece.locate(piece.spans[piece.names[which[0]]][0] + k)
                raise ValueError(
                    f"gradient {name!r} holds {g[k]} at index {at}; no parameter, optimizer "
                    "state or step count was changed"
                )
        kernel = self._kernel
        for piece, p, g, slots, step, which in updates:
            kernel(p, g, slots, step, cv)
            steps = piece.steps
            for i in which:
                steps[i] = step

    def _pair(self, grads: Any) -> list[tuple[_Piece, Any]]:
        """Match the gradients given to the pieces."""
        pieces = self._pieces
        if isinstance(grads, list | tuple):
            if len(grads) != len(pieces):
                raise ValueError(
                    f"expected {len(pieces)} gradients (one per piece), got a list of {len(grads)}"
                )
            return list(zip(pieces, grads))
        if len(pieces) == 1:
            return [(pieces[0], grads)]
        if _grad_flat(grads) is not None:
            raise TypeError(
                f"this optimizer updates {len(pieces)} pieces: expected a list of "
                f"{len(pieces)} gradients, got one {type(grads).__name__}"
            )
        named = _grad_arrays(grads)
        known = {name for piece in pieces for name in piece.names}
        self._check_known(named, known)
        return [(piece, {n: g for n, g in named.items() if n in piece.spans}) for piece in pieces]

    @staticmethod
    def _check_known(named: Mapping, known: set) -> None:
        unknown = sorted(set(named) - known)
        if unknown:
            raise ValueError(f"gradients for unknown parameters {unknown}; the model has {sorted(known)}")

    def _plan(self, piece: _Piece, grads: Any, updates: list[_Update]) -> bool:
        """Check one piece's gradients and append its updates (nothing is written).

        True when the piece has one update whose gradient is the caller's own
        ``.flat`` (no copy, the whole buffer): a loop that clips may write it."""
        steps, dtype = piece.steps, piece.dtype
        gflat = _grad_flat(grads) if piece.flat is not None else None
        if gflat is not None:
            flat = piece.current_flat()
            own = True
            if gflat.shape != (piece.size,):
                raise ValueError(
                    f"gradient .flat has shape {gflat.shape}, expected ({piece.size},) like "
                    f"{type(piece.obj).__name__}.flat"
                )
            if gflat.dtype != dtype:
                if gflat.dtype.kind != "f":
                    raise TypeError(f"gradient .flat has dtype {gflat.dtype}, expected {dtype}")
                gflat, own = _cast(gflat, dtype), False
            elif not gflat.flags.c_contiguous:
                gflat, own = np.ascontiguousarray(gflat), False
            s = steps[0] if steps else 0
            if piece.tiled and steps.count(s) == len(steps):
                # the common case: one loop over everything
                updates.append((piece, flat, gflat, piece.slots, s + 1, range(len(steps))))
                return own
            # runs of adjacent parameters at the same step count
            names, spans = piece.names, piece.spans
            i = 0
            while i < len(names):
                lo, hi = spans[names[i]]
                j = i + 1
                while j < len(names) and steps[j] == steps[i] and spans[names[j]][0] == hi:
                    hi = spans[names[j]][1]
                    j += 1
                updates.append((piece, flat[lo:hi], gflat[lo:hi],
                                tuple(b[lo:hi] for b in piece.slots), steps[i] + 1, range(i, j)))
                i = j
            return False
        named = _grad_arrays(grads)
        self._check_known(named, set(piece.spans))
        dest: np.ndarray | None = None
        params: Mapping[str, Any] = {}
        if piece.flat is not None:
            dest = piece.current_flat()
        else:
            params = piece.obj.parameters()
        for i, name in enumerate(piece.names):
            if name not in named:
                continue
            shape = piece.shapes[name]
            g = _as_grad(name, named[name], shape, dtype)
            lo, hi = piece.spans[name]
            if dest is not None:
                p = dest[lo:hi]
            else:
                p = _writable_param(name, params.get(name), shape, dtype)
            updates.append((piece, p, g, tuple(b[lo:hi] for b in piece.slots), steps[i] + 1, (i,)))
        return False

    def _kernel(self, p: np.ndarray, g: np.ndarray, slots: tuple, step: int, clip: float) -> None:
        raise NotImplementedError

    # -- state --------------------------------------------------------------------

    @property
    def state(self) -> dict[str, dict[str, Any]]:
        """``{name: {"step": int, <slot>: ndarray}}`` for every parameter stepped so far.

        The arrays are live views of the slots, shaped like the parameter.
        """
        out: dict[str, dict[str, Any]] = {}
        for piece in self._pieces:
            for name, step in zip(piece.names, piece.steps):
                if step:
                    lo, hi = piece.spans[name]
                    entry: dict[str, Any] = {"step": step}
                    for slot, buf in zip(self._slots, piece.slots):
                        entry[slot] = buf[lo:hi].reshape(piece.shapes[name])
                    out[name] = entry
        return out

    def state_dict(self) -> dict[str, Any]:
        """Return the optimizer's state as a flat dict of plain values.

        Keys: ``"type"`` (class name), each hyperparameter, and for every
        parameter that has been updated ``"<name>.step"`` (int) and
        ``"<name>.<slot>"`` (ndarray copy shaped like the parameter).  Values
        are str, int, float or ndarray, so ``np.savez(path, **d)`` stores
        them without pickling.
        """
        d: dict[str, Any] = {"type": type(self).__name__}
        for k in self._hyper:
            v = getattr(self, k)
            d[k] = np.array(v, dtype=np.float64) if isinstance(v, tuple) else v
        for name, entry in self.state.items():
            d[f"{name}.step"] = int(entry["step"])
            for slot in self._slots:
                d[f"{name}.{slot}"] = entry[slot].copy()
        return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore hyperparameters and state from :meth:`state_dict`'s output.

        Values may be numpy scalars or 0-d arrays (as read back from an
        ``.npz``).  Raises ValueError naming the first problem (wrong type,
        unknown parameter, wrong shape, missing entry); then nothing changes.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a dict, got {type(d).__name__}")
        kind = _plain(d.get("type"))
        if kind != type(self).__name__:
            raise ValueError(f"optimizer state is for {kind!r}, not {type(self).__name__!r}")
        hyper: dict[str, Any] = {}
        for k in self._hyper:
            if k not in d:
                raise ValueError(f"optimizer state lacks hyperparameter {k!r}")
            v = np.asarray(d[k])
            if v.dtype.kind not in "fiu" or not np.all(np.isfinite(v)):
                raise ValueError(f"optimizer hyperparameter {k!r} is not a finite number: {d[k]!r}")
            hyper[k] = tuple(float(x) for x in v.ravel()) if v.ndim else float(v)
        hyper = self._check_hyper(**hyper)
        where = {name: piece for piece in self._pieces for name in piece.names}
        state: dict[str, dict[str, Any]] = {}
        for key, value in d.items():
            if key == "type" or key in self._hyper:
                continue
            name, _, field = key.partition(".")
            if name not in where:
                raise ValueError(f"optimizer state entry {key!r} names no parameter of the model")
            if field not in ("step", *self._slots):
                raise ValueError(f"unknown optimizer state entry {key!r}")
            piece = where[name]
            entry = state.setdefault(name, {})
            v = np.asarray(value)
            if field == "step":
                if v.ndim != 0 or v.dtype.kind not in "iu" or int(v) < 0:
                    raise ValueError(f"optimizer state {key!r} must be an int >= 0, got {value!r}")
                entry["step"] = int(v)
            else:
                shape = piece.shapes[name]
                if v.shape != shape:
                    raise ValueError(f"optimizer state {key!r} has shape {v.shape}, expected {shape}")
                if v.dtype != piece.dtype:
                    raise ValueError(f"optimizer state {key!r} has dtype {v.dtype}, expected {piece.dtype}")
                if not np.all(np.isfinite(v)):
                    raise ValueError(f"optimizer state {key!r} holds non-finite values")
                entry[field] = v
        for name, entry in state.items():
            missing = [f for f in ("step", *self._slots) if f not in entry]
            if missing:
                raise ValueError(f"optimizer state for {name!r} lacks {missing}")
        # everything checked: now write
        for k, v in hyper.items():
            setattr(self, k, v)
        for piece in self._pieces:
            for buf in piece.slots:
                buf.fill(0)
            for i, name in enumerate(piece.names):
                loaded = state.get(name)
                piece.steps[i] = loaded["step"] if loaded else 0
                if loaded:
                    lo, hi = piece.spans[name]
                    for slot, buf in zip(self._slots, piece.slots):
                        buf[lo:hi] = loaded[slot].reshape(-1)

    def _check_hyper(self, **kw: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _set_hyper(self, **kw: Any) -> None:
        for k, v in self._check_hyper(**kw).items():
            setattr(self, k, v)


def _writable_param(name: str, p: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A model's parameter array as a 1-D view the kernel can write through."""
    if not (isinstance(p, np.ndarray) and p.shape == shape and p.dtype == dtype
            and p.flags.c_contiguous and p.flags.writeable):
        raise ValueError(
            f"parameter {name!r} is no longer a writeable contiguous {dtype} array of shape "
            f"{shape}; build a new optimizer"
        )
    return p.reshape(-1)


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum.

    As ``torch.optim.SGD`` (dampening 0, no Nesterov)::

        buf = g                    (first step)
        buf = momentum * buf + g   (later steps)
        p  -= lr * buf             (p -= lr * g when momentum == 0)

    Parameters
    ----------
    model : piece or list of pieces
    lr : float > 0
    momentum : float in [0, 1)
    """

    _hyper = ("lr", "momentum")
    _slots = ("momentum_buffer",)
    lr: float
    momentum: float

    def __init__(self, model: Any, lr: float, momentum: float = 0.0) -> None:
        hyper = self._check_hyper(lr=lr, momentum=momentum)
        super().__init__(model)
        self._set_hyper(**hyper)

    def _check_hyper(self, lr: Any, momentum: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"lr": _check_positive("lr", lr), "momentum": _check_unit_interval("momentum", momentum)}

    def _kernel(self, p: np.ndarray, g: np.ndarray, slots: tuple, step: int, clip: float) -> None:
        _flat.sgd_step(p, g, slots[0], self.lr, self.momentum, step, clip)


class Adagrad(Optimizer):
    """Adagrad, as ``torch.optim.Adagrad`` (no lr decay, accumulator starts at 0)::

        s += g * g
        p -= lr * g / (sqrt(s) + eps)

    (min-char-rnn adds eps inside the square root; PyTorch, and this class,
    add it outside.  The default eps is min-char-rnn's 1e-8; PyTorch's is
    1e-10, so pass ``eps`` explicitly to match ``torch.optim.Adagrad``'s
    defaults.)

    Parameters
    ----------
    model : piece or list of pieces
    lr : float > 0, default 0.1
    eps : float > 0, default 1e-8
    """

    _hyper = ("lr", "eps")
    _slots = ("sum",)
    lr: float
    eps: float

    def __init__(self, model: Any, lr: float = 0.1, eps: float = 1e-8) -> None:
        hyper = self._check_hyper(lr=lr, eps=eps)
        super().__init__(model)
        self._set_hyper(**hyper)

    def _check_hyper(self, lr: Any, eps: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"lr": _check_positive("lr", lr), "eps": _check_positive("eps", eps)}

    def _kernel(self, p: np.ndarray, g: np.ndarray, slots: tuple, step: int, clip: float) -> None:
        _flat.adagrad_step(p, g, slots[0], self.lr, self.eps, step, clip)


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (no weight decay, no AMSGrad)::

        t += 1
        m += (1 - beta1) * (g - m)                 # m.lerp_(g, 1 - beta1)
        v  = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    model : piece or list of pieces
    lr : float > 0, default 1e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float > 0, default 1e-8
    """

    _hyper = ("lr", "betas", "eps")
    _slots = ("exp_avg", "exp_avg_sq")
    lr: float
    betas: tuple[float, float]
    eps: float

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        hyper = self._check_hyper(lr=lr, betas=betas, eps=eps)
        super().__init__(model)
        self._set_hyper(**hyper)

    def _check_hyper(self, lr: Any, betas: Any, eps: Any) -> dict[str, Any]:  # type: ignore[override]
        lr = _check_positive("lr", lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair of numbers, got {betas!r}") from None
        betas = (_check_unit_interval("betas[0]", beta1), _check_unit_interval("betas[1]", beta2))
        return {"lr": lr, "betas": betas, "eps": _check_positive("eps", eps)}

    def _kernel(self, p: np.ndarray, g: np.ndarray, slots: tuple, step: int, clip: float) -> None:
        beta1, beta2 = self.betas
        _flat.adam_step(p, g, slots[0], slots[1], self.lr, beta1, beta2, self.eps, step, clip)


_OPTIMIZERS: dict[str, Any] = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam}


def from_state_dict(model: Any, d: Mapping[str, Any]) -> Optimizer:
    """Build the optimizer described by ``d`` (a :meth:`Optimizer.state_dict`) for ``model``."""
    kind = _plain(d.get("type")) if isinstance(d, Mapping) else None
    classes: dict[str, type[Optimizer]] = {c.__name__: c for c in _OPTIMIZERS.values()}
    cls = classes.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown optimizer type {kind!r}; expected one of {sorted(c.__name__ for c in _OPTIMIZERS.values())}")
    opt = cls.__new__(cls)
    Optimizer.__init__(opt, model)
    opt.load_state_dict(d)
    return opt


def make(name: str, model: Any, lr: float | None = None) -> Optimizer:
    """Construct an optimizer by name (``"sgd"``, ``"adagrad"``, ``"adam"``)."""
    try:
        cls = _OPTIMIZERS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(_OPTIMIZERS)}") from None
    if lr is None:
        if cls is SGD:
            raise ValueError("SGD needs a learning rate")
        return cls(model)
    return cls(model, lr=lr)

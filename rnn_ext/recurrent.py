"""The recurrent layer on its own: stacked, bidirectional, backward from any
upstream gradient (DESIGN.md §6).  NumPy in, NumPy out; the compiled core runs
every layer and direction in one GIL-free call."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _kernels, torch_interop
from ._layout import FlatParameters, Layout, init_uniform, layer_offsets, recurrent_layout, suffixes
from ._results import RecurrentForward, RecurrentGradients
from ._threads import pass_threads, pool_threads
from ._validation import (
    NONLINEARITIES,
    Batch,
    _as_array,
    _finite_cast,
    check_batch,
    check_dtype,
    check_flag,
    check_parameter,
    check_seed,
    check_size,
)

__all__ = ["Recurrent"]


def check_dropout(value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"dropout must be a number in [0, 1), got {type(value).__name__} {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Stack:
    """A recurrent layer's geometry, as the kernel sees it."""

    D: int
    H: int
    L: int
    dirs: int
    bias: bool
    relu: bool
    dtype: np.dtype
    Ld: int = field(init=False)  # L * dirs: layer-directions

    def __post_init__(self) -> None:
        object.__setattr__(self, "Ld", self.L * self.dirs)

    def layout(self) -> Layout:
        return recurrent_layout(self.D, self.H, self.L, self.dirs, self.bias)


# -- the buffers of one pass (shared with the model's fused pass) -------------------


def states(s: Stack, batch: Batch) -> np.ndarray:
    """hs (Ld, T+1, B, H) with each direction's h0 row set: row 0 forward, row T reverse."""
    hs = np.empty((s.Ld, batch.T + 1, batch.B, s.H), dtype=s.dtype)
    if s.dirs == 1:
        hs[:, 0] = batch.h0
        return hs
    for ld in range(s.Ld):
        hs[ld, batch.T if ld % s.dirs else 0] = batch.h0[ld]
    return hs


def via_UT(s: Stack, T: int, B: int, ids: bool) -> bool:
    """Whether ids are gathered from (and scattered into) U.T's rows, (D, H)
    scratch, rather than U's strided columns: once the rows outnumber the
    columns to transpose."""
    return ids and T * B >= s.D


def scratch_needs(s: Stack, T: int, B: int, ids: bool, packed: bool) -> tuple[bool, bool]:
    """(WT, UT): whether a pass takes W.T as scratch, for a GEMM per step when
    B > 1 (no-transpose GEMMs are the fast ones at small B; the packed
    recurrence needs none), and U.T, as via_UT says."""
    return B > 1 and not packed, via_UT(s, T, B, ids)


def scratch(s: Stack, T: int, B: int, ids: bool,
            packed: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(WT, UT): the scratch scratch_needs asks for, (H, H) and (D, H), or None."""
    need_WT, need_UT = scratch_needs(s, T, B, ids, packed)
    WT = np.empty((s.H, s.H), dtype=s.dtype) if need_WT else None
    UT = np.empty((s.D, s.H), dtype=s.dtype) if need_UT else None
    return WT, UT


_F32 = np.dtype(np.float32)


# Fewer rows than this (T·B) and a pass makes a BLAS call per step instead:
# packing W costs about as much as PACKED_MIN_ROWS steps of B = 1 save
# (packing both layouts at H = 128: 11 µs; the packed step saves ~1 µs).
PACKED_MIN_ROWS = 16


def use_packed(s: Stack, T: int, B: int) -> bool:
    """Whether a pass runs the weight-stationary float32 recurrence (src/wsr.h)
    rather than a BLAS call per step: for float32 with at least
    PACKED_MIN_ROWS rows (T·B), unless ``RNN_EXT_SIMD=blas`` is in the
    environment.

    At B = 1 each step is a matrix-vector product that reads all of W; the
    micro-kernel keeps W packed, fuses the step's epilogue and runs every
    other step's columns backwards, so that a W larger than L2 (4 MiB at
    H = 1024) comes back from L2 in part rather than from the shared cache:
    a packed step takes 0.75-0.9x the time of a GEMV step at H = 1024 on one
    thread.  Packing W costs a few steps, so a short single sequence with a
    wide W gains nothing or loses a little: at T = 25, H = 768-1024, on an
    AMD Zen 3, 0.75-1.07x the time of a GEMV per step for ``forward`` and
    1.05-1.15x for ``loss_and_grad``, which packs both layouts (both ways
    timed in one process); at T = 100 0.86-0.92x, at H <= 512 0.8-0.97x.
    Such passes stay packed all the same: on the BLAS path their bits would
    depend on the thread count (docs/reliability.md).  A pass of a step or a
    few packs W for nothing: at T = B = 1 it doubled the fixed cost of a
    call.  The rule depends on the shapes alone, never on the thread count,
    so a pass's bits do not either.
    """
    return (s.dtype == _F32 and T * B >= PACKED_MIN_ROWS
            and os.environ.get("RNN_EXT_SIMD") != "blas")


def packed_scratch(s: Stack, T: int, B: int) -> np.ndarray | None:
    """Scratch for the packed W when use_packed says so, else None."""
    if not use_packed(s, T, B):
        return None
    return np.empty(_kernels.wsr_packed_size(s.H), dtype=np.float32)


def plan_threads(s: Stack, T: int, B: int, K: int, packed: bool) -> tuple[Any, int]:
    """(threads context, n) for one pass with output size K.

    A pass on the weight-stationary recurrence (``packed``) runs every
    parallel part on rnn_ext's own pool with n threads
    (``_threads.pool_threads``); the others leave threads to the BLAS
    (``_threads.pass_threads``) and n = 0.
    """
    if not packed:
        return pass_threads(T, B, s.D, s.H, K), 0
    return pool_threads(T, B, s.D, s.H, K)


def pass_plan(s: Stack, T: int, B: int, K: int) -> tuple[Any, np.ndarray | None, int]:
    """(threads context, packed scratch or None, n) for one pass with output
    size K, as use_packed and plan_threads say."""
    packed = packed_scratch(s, T, B)
    ctx, n = plan_threads(s, T, B, K, packed is not None)
    return ctx, packed, n


def dropout_masks(s: Stack, batch: Batch, p: float, seed: int | None):
    """(masks, xin): inverted-dropout multipliers between layers and the buffer
    of the masked inputs, or (None, None) when nothing is dropped."""
    if p == 0.0 or s.L == 1:
        return None, None
    rng = np.random.default_rng(seed)
    shape = (s.L - 1, batch.T * batch.B, s.dirs * s.H)
    keep = rng.random(shape) >= p
    masks = keep.astype(s.dtype) * s.dtype.type(1.0 / (1.0 - p))
    return masks, np.empty(shape, dtype=s.dtype)


def top_output(s: Stack, hs: np.ndarray, batch: Batch) -> np.ndarray:
    """(T, B, dirs*H): the top layer's states, [forward, reverse]."""
    T, top = batch.T, (s.L - 1) * s.dirs
    if s.dirs == 1:
        return hs[top, 1:]
    return np.concatenate([hs[top, 1:], hs[top + 1, :T]], axis=2)


def final_states(s: Stack, hs: np.ndarray, batch: Batch) -> np.ndarray:
    """h_n (Ld, B, H): forward directions at each sequence's last valid step,
    reverse directions at t = 0."""
    B = batch.B
    if batch.lengths is None and s.dirs == 1:
        return hs[:, batch.T].copy()  # the common case, one copy
    last = np.full(B, batch.T) if batch.lengths is None else batch.lengths
    h_n = np.empty((s.Ld, B, s.H), dtype=s.dtype)
    for ld in range(s.Ld):
        h_n[ld] = hs[ld, 0] if ld % s.dirs else hs[ld, last, np.arange(B)]
    return h_n


def backward_buffers(s: Stack, batch: Batch, masks: np.ndarray | None, size: int,
                     dflat: np.ndarray | None = None) -> dict[str, Any]:
    T, B, H, dt = batch.T, batch.B, s.H, s.dtype
    return {
        "delta": np.empty((s.Ld, T, B, H), dtype=dt),
        "flat": np.empty(size, dtype=dt) if dflat is None else dflat,
        "x": np.empty((T * B, s.D), dtype=dt) if batch.xf is not None else None,
        "h0": np.empty((s.Ld, B, H), dtype=dt),
        "UT": np.empty((s.D, H), dtype=dt) if via_UT(s, T, B, batch.xi is not None) else None,
        "G": np.empty((B, H), dtype=dt),
        "X": np.empty((T * B, s.dirs * H), dtype=dt) if masks is not None else None,
    }


def step_inputs(s: Stack, x_t: Any, h: Any) -> tuple[np.ndarray | None, np.ndarray | int | None,
                                                     np.ndarray, bool]:
    """(xf, xi, h, batched) for one step: x_t an int id, (B,) ids, (D,) or (B, D)
    floats; h None, (L, B, H) or (L, H) (also (B, H) / (H,) for one layer).

    An unbatched id comes back as an int (xi), as the kernel takes it; h comes
    back in the shape it was given (L*B*H elements, H last), as the kernel
    takes it too.  The common case, an id and the state the previous step
    returned, is checked first and costs a few attribute reads: nothing is
    converted or copied.
    """
    if s.dirs != 1:
        raise ValueError("step needs a unidirectional layer: a reverse direction reads the "
                         "whole sequence; use forward")
    xf: np.ndarray | None = None
    xi: np.ndarray | int | None = None
    if type(x_t) is int or (isinstance(x_t, (int, np.integer))
                            and not isinstance(x_t, (bool, np.bool_))):
        if not 0 <= x_t < s.D:
            raise ValueError(f"x_t id must be in [0, {s.D}) (input_size), got {x_t}")
        xi, batched, B = int(x_t), False, 1
    else:
        a = _as_array(x_t, "x_t")
        if a.dtype.kind in "iu":
            if a.ndim not in (0, 1):
                raise ValueError(f"x_t of ids must be an int or (B,), got shape {a.shape}")
            batched = a.ndim == 1
            ids = np.ascontiguousarray(a.reshape(-1), dtype=np.intp)
            if ids.size == 0 or ids.min() < 0 or ids.max() >= s.D:
                raise ValueError(f"x_t ids must be in [0, {s.D}) (input_size), got {a}")
            xi, B = ids, ids.shape[0]
        else:
            if a.ndim not in (1, 2) or a.shape[-1] != s.D:
                raise ValueError(f"x_t of floats must be ({s.D},) or (B, {s.D}), got shape {a.shape}")
            batched = a.ndim == 2
            xf = _finite_cast(a, "x_t", s.dtype).reshape(-1, s.D)
            B = xf.shape[0]
    full = (s.L, B, s.H) if batched else (s.L, s.H)
    if h is None:
        return xf, xi, np.zeros(full, dtype=s.dtype), batched
    if isinstance(h, np.ndarray) and h.dtype == s.dtype and h.flags.c_contiguous and (
            h.shape == full or (s.L == 1 and h.shape == full[1:])):
        return xf, xi, h, batched
    a = _as_array(h, "h")
    if a.shape != full and not (s.L == 1 and a.shape == full[1:]):
        raise ValueError(f"h must have shape {full} (num_layers, [batch,] hidden_size) for "
                         f"this x_t, got {a.shape}")
    return xf, xi, _finite_cast(a, "h", s.dtype), batched


def user_layout(a: np.ndarray, batch: Batch, batch_first: bool) -> np.ndarray:
    """A (T*B, n) or (T, B, n) array laid out as the user's x was."""
    a = a.reshape(batch.T, batch.B, -1)
    if not batch.batched:
        return a[:, 0]
    return a.swapaxes(0, 1) if batch_first else a


def per_layer(a: np.ndarray, batch: Batch) -> np.ndarray:
    """(Ld, B, H) as the user gave h0: (Ld, H) for unbatched input."""
    return a if batch.batched else a[:, 0]


class Recurrent(FlatParameters):
    r"""A stack of Elman recurrent layers, each in one or both directions.

    For layer k and each direction (the reverse one runs t = len-1 ... 0)::

        h^k_t = f(U_k h^{k-1}_t + W_k h^k_{t∓1} + b_k)     h^0_t = x_t
        output_t = [h^L_t (forward), h^L_t (reverse)]

    as ``torch.nn.RNN`` computes it, with one bias per layer and direction
    (PyTorch's ``bias_ih + bias_hh``).  Equivalent to, for one direction::

        h = h0[k]
        for t in range(T):
            h = np.tanh(x[t] @ U.T + h @ W.T + b)
            out[t] = h

    Parameters
    ----------
    input_size : int
        D, the size of x_t (or the number of distinct input ids).
    hidden_size : int
        H.
    num_layers : int, default 1
    nonlinearity : {"tanh", "relu"}, default "tanh"
    bias : bool, default True
    bidirectional : bool, default False
    dropout : float in [0, 1), default 0
        Inverted dropout on each layer's output except the last, in training
        passes only (``forward(..., train=True, seed=s)``).
    batch_first : bool, default False
        With True, batched x, output and d_output are (B, T, ...).
    dtype : float32 or float64, default float32
    seed : int or None
        Parameters are drawn uniformly from [-1/sqrt(H), 1/sqrt(H)] as in PyTorch.

    Attributes
    ----------
    params : dict of str to ndarray
        ``U_l{k}{suffix}`` (H, In), ``W_l{k}{suffix}`` (H, H), ``b_l{k}{suffix}``
        (H,), with suffix "" or "_reverse" and In = D for k = 0, dirs*H above:
        views into ``flat``.  Writing into a view changes the layer.
    flat : ndarray of shape (n_params,)
        Every parameter, in the order of ``params``.
    """

    _BOUND = ("_stepper",)  # step's compiled short path (_kernels.StepPass)
    _stepper: Any

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 nonlinearity: str = "tanh", bias: bool = True, bidirectional: bool = False,
                 dropout: float = 0.0, batch_first: bool = False, dtype: Any = np.float32,
                 seed: int | None = None, _flat: np.ndarray | None = None,
                 _rng: np.random.Generator | None = None) -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        dirs = 2 if check_flag("bidirectional", bidirectional) else 1
        self._stack = Stack(check_size("input_size", input_size),
                            check_size("hidden_size", hidden_size),
                            check_size("num_layers", num_layers), dirs,
                            check_flag("bias", bias), nonlinearity == "relu",
                            check_dtype(dtype))
        self._nonlinearity = nonlinearity
        self._dropout = check_dropout(dropout)
        self.batch_first = batch_first
        self._layout = self._stack.layout()
        self._offs = layer_offsets(self._layout, self.num_layers, dirs)
        self._version = 0
        if _flat is None:
            _flat = np.empty(self._layout.size, dtype=self.dtype)
            rng = _rng if _rng is not None else np.random.default_rng(check_seed(seed))
            init_uniform(_flat, 1.0 / np.sqrt(self.hidden_size), rng)
        self._bind(_flat)

    # -- configuration ------------------------------------------------------

    input_size = property(lambda self: self._stack.D, doc="D: the size of x_t.")
    hidden_size = property(lambda self: self._stack.H, doc="H.")
    num_layers = property(lambda self: self._stack.L, doc="L.")
    num_directions = property(lambda self: self._stack.dirs, doc="1, or 2 when bidirectional.")
    bidirectional = property(lambda self: self._stack.dirs == 2)
    bias = property(lambda self: self._stack.bias)
    dtype = property(lambda self: self._stack.dtype)
    nonlinearity = property(lambda self: self._nonlinearity)
    dropout = property(lambda self: self._dropout)

    @property
    def batch_first(self) -> bool:
        return self._batch_first

    @batch_first.setter
    def batch_first(self, value: Any) -> None:
        self._batch_first = check_flag("batch_first", value)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """{name: view into flat}, PyTorch's order."""
        return dict(self._params)

    @property
    def flat(self) -> np.ndarray:
        """Every parameter in one contiguous array (the views' base)."""
        return self._flat

    def parameters(self) -> dict[str, np.ndarray]:
        return self.params

    def set_params(self, values: dict[str, Any]) -> None:
        """Copy arrays into the named parameters (validated: shape, finite)."""
        checked = {}
        for name, value in values.items():
            if name not in self._params:
                raise ValueError(f"unknown parameter {name!r}; this layer has {list(self._params)}")
            checked[name] = check_parameter(name, value, self._params[name].shape, self.dtype)
        self._version += 1
        for name, a in checked.items():
            self._params[name][...] = a
        self._version += 1

    def __repr__(self) -> str:
        extra = "" if self.nonlinearity == "tanh" else f", nonlinearity={self.nonlinearity!r}"
        extra += "" if self.bias else ", bias=False"
        extra += ", bidirectional=True" if self.bidirectional else ""
        extra += f", dropout={self.dropout}" if self.dropout else ""
        extra += ", batch_first=True" if self.batch_first else ""
        return (f"Recurrent({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
                f"{extra}, dtype={self.dtype.name})")

    # -- passes ---------------------------------------------------------------

    def _batch(self, x: Any, h0: Any, lengths: Any) -> Batch:
        s = self._stack
        return check_batch(x, None, h0, lengths, D=s.D, H=s.H, K=s.H * s.dirs, dtype=s.dtype,
                           batch_first=self.batch_first, Ld=s.Ld)

    def forward(self, x: Any, h0: Any = None, lengths: Any = None, *, train: bool = False,
                seed: int | None = None) -> RecurrentForward:
        """Run every layer and direction over x.

        Parameters
        ----------
        x : ndarray of shape (T, B) int ids, or (T, B, D) floats
            (B, T, ...) with batch_first; unbatched (T,) or (T, D) accepted.
        h0 : ndarray of shape (L*dirs, B, H), optional
            PyTorch's order (layer-major, forward before reverse); zeros by default.
        lengths : ndarray of shape (B,), optional
            Valid steps of each sequence, in [1, T], any order: outputs past a
            length are zero, h_n holds each sequence's last valid state, and the
            reverse direction starts at the sequence's own last step.
        train : bool, default False
            Apply dropout between layers (when ``dropout`` > 0).
        seed : int, optional
            Seed of the dropout masks.

        Returns
        -------
        RecurrentForward
            ``.output`` (T, B, dirs*H) and ``.h_n`` (L*dirs, B, H), laid out as
            x and h0 are; pass it to :meth:`backward`.
        """
        check_flag("train", train)
        batch = self._batch(x, h0, lengths)
        s = self._stack
        masks, xin = (dropout_masks(s, batch, self.dropout, check_seed(seed))
                      if train else (None, None))
        hs = states(s, batch)
        version = self._version
        ctx, packed, n = pass_plan(s, batch.T, batch.B, s.H * s.dirs)
        WT, UT = scratch(s, batch.T, batch.B, batch.xi is not None, packed is not None)
        with ctx:
            _kernels.layer_forward(hs, batch.xf, batch.xi, self._flat, self._offs, s.D, s.dirs,
                                   masks, xin, WT, UT, batch.lengths, s.relu, packed, n)
        out = top_output(s, hs, batch)
        if s.dirs == 1:
            out = out.view()
            out.flags.writeable = False  # a view of the states the backward reads
        return RecurrentForward(
            output=user_layout(out, batch, self.batch_first),
            h_n=per_layer(final_states(s, hs, batch), batch),
            _layer=self, _batch=batch, _hs=hs, _masks=masks, _xin=xin, _version=version)

    def backward(self, fwd: RecurrentForward, d_output: Any = None,
                 d_h_n: Any = None) -> RecurrentGradients:
        """Backpropagation through time from any upstream gradient.

        Parameters
        ----------
        fwd : RecurrentForward
            This layer's forward result.
        d_output : ndarray shaped like ``fwd.output``, optional
            dL/doutput; values past a sequence's length are ignored.
        d_h_n : ndarray shaped like ``fwd.h_n``, optional
            dL/dh_n.  Either may be None (zeros).

        Returns
        -------
        RecurrentGradients
            ``.params`` (like :attr:`params`, views into ``.flat``), ``.x``
            (like x; None for ids), ``.h0`` (like h0).  Overwrites nothing of
            the layer's.
        """
        if not isinstance(fwd, RecurrentForward):
            raise TypeError(f"fwd must be the RecurrentForward of this layer's forward, got {type(fwd).__name__}")
        if fwd._layer is not self:
            raise ValueError("fwd comes from another layer's forward; pass this layer's own result")
        if fwd._version != self._version:
            raise ValueError("this layer's parameters were assigned after the forward; run forward again")
        s, batch = self._stack, fwd._batch
        T, B = batch.T, batch.B
        g = backward_buffers(s, batch, fwd._masks, self._layout.size)
        top = (s.L - 1) * s.dirs
        delta = g["delta"]
        if d_output is None:
            delta[top:] = 0
        else:
            d = self._upstream("d_output", d_output, fwd.output.shape, batch)
            d = d.reshape(T, B, s.dirs, s.H)
            for e in range(s.dirs):
                delta[top + e] = d[:, :, e]
        d_hn = None
        if d_h_n is not None:
            d_hn = self._upstream("d_h_n", d_h_n, fwd.h_n.shape, None).reshape(s.Ld, B, s.H)
        ctx, packed, n = pass_plan(s, T, B, s.H * s.dirs)
        with ctx:
            _kernels.layer_backward(delta, fwd._hs, batch.xf, batch.xi, self._flat, self._offs,
                                    s.D, s.dirs, fwd._masks, fwd._xin, d_hn, g["flat"], g["x"],
                                    g["h0"], g["UT"], g["G"], g["X"], batch.lengths, s.relu,
                                    packed, n)
        return RecurrentGradients(
            flat=g["flat"], params=self._layout.views(g["flat"]),
            x=user_layout(g["x"], batch, self.batch_first) if g["x"] is not None else None,
            h0=per_layer(g["h0"], batch))

    # step(x_t, h=None): _kernels.layer_step (src/_kernels.pyx), which hands the
    # common call (an int id and the state the last step returned) to the
    # bound StepPass without running a Python frame, and any other to _step
    step = _kernels.layer_step

    def _step(self, x_t: Any, h: Any) -> np.ndarray:
        """step's general path: any x_t and h, checked and converted."""
        s = self._stack
        xf, xi, h0, batched = step_inputs(s, x_t, h)
        return _kernels.step_pass(h0, xf, xi, self._flat, self._offs, s.D, s.relu, None, None,
                                  batched)[0]

    def _bound_step(self) -> Any:
        """step's bound parameters (``_kernels.StepPass``), made once; None for a
        layer it does not serve (float64, or bidirectional)."""
        s = self._stack
        if s.dtype != _F32 or s.dirs != 1:
            return None
        self._stepper = _kernels.StepPass(self._flat, self._offs, s.D, s.H, None, None, s.relu)
        return self._stepper

    def _upstream(self, name: str, value: Any, shape: tuple[int, ...],
                  batch: Batch | None) -> np.ndarray:
        a = _as_array(value, name)
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape} like the forward's result, got {a.shape}")
        a = _finite_cast(a, name, self.dtype)
        if batch is not None and batch.batched and self.batch_first:
            a = np.ascontiguousarray(a.swapaxes(0, 1))
        return a

    # -- interop --------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The constructor's keyword arguments that rebuild this layer's shape."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, nonlinearity=self.nonlinearity, bias=self.bias,
                    bidirectional=self.bidirectional, dropout=self.dropout,
                    batch_first=self.batch_first, dtype=self.dtype)

    @classmethod
    def from_torch(cls, rnn: Any, *, dtype: Any = None) -> Recurrent:
        """A layer holding the weights of a ``torch.nn.RNN`` (any configuration);
        b = bias_ih + bias_hh, summed in float64."""
        config, values = torch_interop.recurrent_state(rnn, dtype=dtype)
        layer = cls(**config)
        layer.set_params(values)
        return layer

    def to_torch(self):
        """A ``torch.nn.RNN`` computing what this layer computes (bias_hh zero)."""
        return torch_interop.make_rnn(self.config(), self.params)


def layer_names(num_layers: int, num_directions: int, bias: bool) -> list[str]:
    return [f"{p}_l{k}{s}" for k in range(num_layers) for s in suffixes(num_directions)
            for p in (("U", "W", "b") if bias else ("U", "W"))]

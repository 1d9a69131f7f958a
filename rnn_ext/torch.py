"""``rnn_ext.torch.RNN``: ``torch.nn.RNN`` running on rnn_ext's compiled kernels.

A subclass of ``torch.nn.RNN``: the constructor, the parameters (names,
shapes, initialisation), ``state_dict``, ``repr``, ``.to()``/``.double()``,
pickling and the forward signature are PyTorch's own.  Only ``forward``
changes: on CPU float32/float64 tensors it runs the whole stack -- every
layer and direction, forward and backward through time -- in one call of
:class:`rnn_ext.Recurrent` inside a ``torch.autograd.Function``.  Per layer
k and direction (suffix ``""`` or ``"_reverse"``)::

    h_t = f(x_t W_ih^T + h_{t-1} W_hh^T + b)      b = bias_ih + bias_hh,  f = tanh or relu

the parameters map one to one onto the layer's::

    weight_ih_l{k}{suffix} -> U_l{k}{suffix}      dL/dweight_ih = dL/dU
    weight_hh_l{k}{suffix} -> W_l{k}{suffix}      dL/dweight_hh = dL/dW
    bias_ih_l{k}{suffix} + bias_hh_l{k}{suffix} -> b_l{k}{suffix}
                                                  dL/dbias_ih = dL/dbias_hh = dL/db

Anything the kernels cannot run goes to PyTorch's own implementation
(``torch.nn.RNN.forward``), unchanged: tensors off the CPU, dtypes other
than float32/float64, input and weights of different dtypes (PyTorch's
error), autocast, tensor subclasses (``torch.compile``'s fake tensors,
``torch.func`` transforms), empty input, ``dropout=1`` in training, and NaN
or infinity in the input or h0 (or in a relu RNN's weights).  Differentiating
the gradient again (double backward) raises PyTorch's "differentiate twice"
RuntimeError (the Function is once_differentiable); torch.nn.RNN with the same
state dict does that.  docs/torch.md lists every case.

PyTorch is an optional extra: importing this module without it raises
ImportError naming ``pip install "rnn-ext[torch]"``; ``import rnn_ext``
never imports this module or torch.
"""

from __future__ import annotations

import threading
from typing import Any, overload

import numpy as np

try:
    import torch
    from torch import _VF
    from torch.autograd.function import once_differentiable
    from torch.nn.utils.rnn import PackedSequence
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        'rnn_ext.torch needs PyTorch, an optional extra: pip install "rnn-ext[torch]"'
    ) from exc

from .recurrent import Recurrent

__all__ = ["RNN"]

# The dtypes the kernels run; anything else goes to PyTorch's implementation.
_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
# Plain tensors only: subclasses (FakeTensor, functorch wrappers, ...) go to PyTorch.
_PLAIN = (torch.Tensor, torch.nn.Parameter)
# Dropout masks are drawn by rnn_ext from a seed in [0, _SEED_HIGH) drawn from
# torch's default generator, so torch.manual_seed makes them reproducible.
_SEED_HIGH = 2**62


class _Slot:
    """One Recurrent layer and the lock that makes its use exclusive.

    ``loaded`` is the token of the call whose weights the layer's parameter
    views hold, so a backward right after its own forward copies nothing.
    ``tensors``, ``ptrs`` and ``arrays`` are the weight tensors last loaded,
    their data pointers and NumPy views of them, reused while the same
    tensors hold the same storage (``.numpy()`` costs more than the copy at
    small sizes; a tensor given new storage, ``p.data = ...``, gets a new
    pointer since the old storage is kept alive by its view).
    """

    __slots__ = ("layer", "views", "lock", "loaded", "tensors", "ptrs", "arrays")

    def __init__(self, layer: Recurrent) -> None:
        self.layer = layer
        self.views = layer.params  # {name: view into layer.flat}, fixed for the layer's life
        self.lock = threading.Lock()
        self.loaded: object = None
        self.tensors: tuple[torch.Tensor, ...] = ()
        self.ptrs: list[int] = []
        self.arrays: list[np.ndarray] = []


def _load(slot: _Slot, names: list[str], weights: tuple[torch.Tensor, ...],
          bias: bool) -> None:
    """Copy the module's weights into the layer's parameter views.

    ``weights`` come in ``nn.RNN._flat_weights_names`` order: per layer and
    direction weight_ih, weight_hh[, bias_ih, bias_hh].  Costs one pass over
    the parameters, small next to the T·B-row products of a pass.
    """
    ptrs = [w.data_ptr() for w in weights]
    if (ptrs != slot.ptrs or len(weights) != len(slot.tensors)
            or any(a is not b for a, b in zip(weights, slot.tensors))):
        slot.arrays = [w.detach().numpy() for w in weights]
        slot.tensors, slot.ptrs = weights, ptrs
    arrays = slot.arrays
    per = 4 if bias else 2
    params = slot.views
    for i in range(0, len(weights), per):
        tail = names[i][len("weight_ih"):]  # "_l{k}{suffix}"
        np.copyto(params["U" + tail], arrays[i])
        np.copyto(params["W" + tail], arrays[i + 1])
        if bias:
            # b = bias_ih + bias_hh
            np.add(arrays[i + 2], arrays[i + 3], out=params["b" + tail])


def _numpy_or_none(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().contiguous().numpy()


def _finite(t: torch.Tensor | None) -> bool:
    return t is None or bool(torch.isfinite(t).all())


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A writable tensor sharing a's memory, for results no backward will read.

    The layer hands out a one-direction top layer's output as a read-only
    view of its states; without a backward to come nothing else reads them.
    """
    if not a.flags.writeable:
        a = a.view()
        a.flags.writeable = True
    return torch.from_numpy(a)


class _NonFinite(Exception):
    """NaN or infinity where rnn_ext's layer refuses it or its relu would hide it."""


def _run_forward(slot: _Slot, token: object, names: list[str], bias: bool,
                 weights: tuple[torch.Tensor, ...], x: torch.Tensor, h0: torch.Tensor | None,
                 lengths: np.ndarray | None, train: bool, seed: int | None) -> Any:
    """Load the weights into the slot's layer and run its forward; releases the slot.

    The caller holds ``slot.lock``.  x goes to the layer as a NumPy view of
    the tensor's memory.  Raises _NonFinite for NaN or infinity in x or h0
    (the layer refuses them) or, with relu, in the weights (the kernel's
    max(a, 0) maps NaN to 0 where PyTorch's relu keeps NaN).
    """
    try:
        _load(slot, names, weights, bias)
        slot.loaded = token
        layer = slot.layer
        if layer.nonlinearity == "relu" and not np.isfinite(layer.flat).all():
            raise _NonFinite
        try:
            return layer.forward(x.detach().numpy(), _numpy_or_none(h0), lengths,
                                 train=train, seed=seed)
        except ValueError:
            if _finite(x) and _finite(h0):
                raise
            raise _NonFinite from None
    finally:
        slot.lock.release()


def _run_step(slot: _Slot, names: list[str], bias: bool, weights: tuple[torch.Tensor, ...],
              x_t: torch.Tensor, h: torch.Tensor | None) -> np.ndarray:
    """One time step of a unidirectional stack, no autograd: the new state (L, B, H).

    ``Recurrent.step`` skips the sequence buffers ``forward`` sets up, a
    large share of a single step's time.  Same locking and _NonFinite rule
    as _run_forward (``step`` takes a carried state unchecked, so with relu
    it is checked here).
    """
    try:
        _load(slot, names, weights, bias)
        slot.loaded = None
        layer = slot.layer
        h_np = _numpy_or_none(h)
        if layer.nonlinearity == "relu" and not (
                np.isfinite(layer.flat).all() and (h_np is None or np.isfinite(h_np).all())):
            raise _NonFinite
        try:
            return layer.step(x_t.detach().numpy(), h_np)
        except ValueError:
            if _finite(x_t) and _finite(h):
                raise
            raise _NonFinite from None
    finally:
        slot.lock.release()


class _RecurrentFunction(torch.autograd.Function):
    """(x, h0, weights...) -> (output, h_n) through one Recurrent layer.

    x is (T, B, D) (or (B, T, D) when the layer is batch_first) and is
    handed to the kernel without a copy when contiguous; h0 is
    (L*dirs, B, H) or None (zeros).  Backward runs the layer's BPTT from
    any upstream d_output / d_h_n (either may be None) and returns dL/dx,
    dL/dh0 and dL/dweight for each weight, both biases receiving dL/db.
    """

    @staticmethod
    def forward(
        ctx: Any, slot: _Slot, names: list[str], bias: bool, lengths: np.ndarray | None,
        train: bool, seed: int | None, x: torch.Tensor, h0: torch.Tensor | None,
        *weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        token = object()
        fwd = _run_forward(slot, token, names, bias, weights, x, h0, lengths, train, seed)
        out = fwd.output
        # A one-direction output is a view of the states the backward reads;
        # nn.RNN's output is the user's to change in place, so this one is too.
        output = torch.from_numpy(out.copy() if not out.flags.writeable else out)
        h_n = torch.from_numpy(fwd.h_n)
        ctx.slot, ctx.fwd, ctx.token, ctx.names, ctx.bias = slot, fwd, token, names, bias
        # Saved for their version counters: changing the input, h0 or a weight
        # in place before backward raises, as it does with nn.RNN.
        ctx.save_for_backward(x, h0, *weights)
        ctx.set_materialize_grads(False)
        return output, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_output: torch.Tensor | None,
                 d_h_n: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        h0 = saved[1]
        weights = saved[2:]
        slot = ctx.slot
        with slot.lock:
            if slot.loaded is not ctx.token:  # another call ran on this layer since
                _load(slot, ctx.names, weights, ctx.bias)
                slot.loaded = ctx.token
            try:
                g = slot.layer.backward(ctx.fwd, _numpy_or_none(d_output),
                                        _numpy_or_none(d_h_n))
            except ValueError:
                if _finite(d_output) and _finite(d_h_n):
                    raise
                g = None  # rnn_ext refuses NaN/inf upstream gradients: NaN everywhere
        needs = ctx.needs_input_grad  # (slot, names, bias, lengths, train, seed, x, h0, *weights)
        if g is None:
            x = saved[0]
            nan = float("nan")
            return (None, None, None, None, None, None,
                    torch.full_like(x, nan) if needs[6] else None,
                    torch.full_like(h0, nan) if h0 is not None and needs[7] else None,
                    *(torch.full_like(w, nan) if need else None
                      for w, need in zip(weights, needs[8:])))
        dx = torch.from_numpy(g.x) if needs[6] else None
        dh0 = torch.from_numpy(g.h0) if h0 is not None and needs[7] else None
        dweights: list[torch.Tensor | None] = []
        per = 4 if ctx.bias else 2
        for i in range(0, len(weights), per):
            tail = ctx.names[i][len("weight_ih"):]
            dweights.append(torch.from_numpy(g.params["U" + tail]))
            dweights.append(torch.from_numpy(g.params["W" + tail]))
            if ctx.bias:
                db = torch.from_numpy(g.params["b" + tail])
                # two tensors: autograd may keep a returned gradient as .grad itself
                dweights += [db, db.clone()]
        dweights = [d if need else None for d, need in zip(dweights, needs[8:])]
        return (None, None, None, None, None, None, dx, dh0, *dweights)


class RNN(torch.nn.RNN):
    r"""``torch.nn.RNN`` whose forward and backward run rnn_ext's kernels.

    Same constructor as :class:`torch.nn.RNN`::

        RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
            batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None)

    with the same parameters (``weight_ih_l{k}{suffix}``,
    ``weight_hh_l{k}{suffix}``, ``bias_ih_l{k}{suffix}``,
    ``bias_hh_l{k}{suffix}``), initialised from the same distribution
    U(-1/sqrt(H), 1/sqrt(H)) by PyTorch's own ``reset_parameters``.  Each
    layer k computes, for t = 0 … T-1 (and t = len-1 … 0 in the reverse
    direction)::

        h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)

    where f is tanh or relu and x_t is the input for k = 0, else the layer
    below's output (with dropout between layers while training).

    Parameters
    ----------
    input : Tensor of shape (T, B, D), (B, T, D) when batch_first, or (T, D) unbatched; \
or a PackedSequence
        The input sequence.
    hx : Tensor of shape (num_layers * dirs, B, H), or (num_layers * dirs, H) unbatched, optional
        Initial hidden state; zeros when None.

    Returns
    -------
    output : Tensor of shape (T, B, dirs * H) (batch_first: (B, T, dirs * H)), or a PackedSequence
        The top layer's states, [forward, reverse] concatenated; a PackedSequence
        with the input's ``batch_sizes``, ``sorted_indices`` and
        ``unsorted_indices`` when the input was one.
    h_n : Tensor of shape (num_layers * dirs, B, H)
        Every layer's final state, ordered as PyTorch orders it.

    Notes
    -----
    CPU float32/float64 only; see the module docstring and docs/torch.md for
    what goes to PyTorch's implementation instead.  Dropout in training
    draws its masks in rnn_ext from a seed taken from torch's default
    generator: reproducible under ``torch.manual_seed``, but not the same
    masks as ``torch.nn.RNN`` draws.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rnn_ext_slots: dict[tuple, list[_Slot]] = {}

    # -- Module plumbing: the layers are a cache, never state --------------------------

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_rnn_ext_slots", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._rnn_ext_slots = {}

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # .double(), .to(...): the cached layers' dtype may no longer fit
        self._rnn_ext_slots = {}
        return super()._apply(fn, recurse)

    def _slot(self, np_dtype: type, batch_first: bool) -> _Slot:
        """A layer of this configuration not in use by another call, its lock held."""
        num_layers = self.num_layers
        dropout = self.dropout if num_layers > 1 and self.dropout < 1 else 0.0
        key = (np_dtype, batch_first, self.input_size, self.hidden_size, num_layers,
               self.nonlinearity, self.bias, self.bidirectional, dropout)
        slots = self._rnn_ext_slots.setdefault(key, [])
        for slot in slots:
            if slot.lock.acquire(blocking=False):
                return slot
        slot = _Slot(Recurrent(
            self.input_size, self.hidden_size, num_layers, nonlinearity=self.nonlinearity,
            bias=self.bias, bidirectional=self.bidirectional, dropout=dropout,
            batch_first=batch_first, dtype=np_dtype, seed=0,
        ))
        slot.lock.acquire()
        slots.append(slot)
        return slot

    def _kernel_runs(self, data: torch.Tensor, hx: torch.Tensor | None,
                     weights: list[torch.Tensor]) -> bool:
        """True when rnn_ext's kernels can run this call; else PyTorch's implementation does."""
        dtype = data.dtype
        if (dtype not in _NUMPY_DTYPE or not data.is_cpu or type(data) not in _PLAIN
                or data.layout != torch.strided or data.numel() == 0):
            return False
        for t in weights if hx is None else (hx, *weights):
            # dtypes are singletons; a sparse tensor is never float32/float64-strided
            if t.dtype is not dtype or not t.is_cpu or type(t) not in _PLAIN or t.is_sparse:
                return False
        if torch._C._is_any_autocast_enabled():
            return False
        if torch._C._functorch.peek_interpreter_stack() is not None:  # vmap, grad, jacrev, ...
            return False
        # nn.RNN accepts dropout=1 (every element dropped); Recurrent's dropout is in [0, 1)
        return not (self.training and self.num_layers > 1 and self.dropout >= 1)

    # -- forward ------------------------------------------------------------------------

    @overload
    def forward(self, input: torch.Tensor,
                hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    @overload
    def forward(self, input: PackedSequence,
                hx: torch.Tensor | None = None) -> tuple[PackedSequence, torch.Tensor]: ...

    def forward(self, input: Any, hx: torch.Tensor | None = None) -> Any:
        """Run the stack; see the class docstring for shapes and results."""
        names = self._flat_weights_names
        # the live tensors: functional_call swaps them in _parameters, weight_norm-style
        # hooks set plain attributes
        params = self._parameters
        weights: list[torch.Tensor] = [params[n] if n in params else getattr(self, n)  # type: ignore[misc]
                                       for n in names]
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        hx_given = hx
        if not self._kernel_runs(data, hx, weights):
            return super().forward(input, hx)

        lengths: np.ndarray | None = None
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
                self.check_forward_args(data, hx, batch_sizes)
            else:
                self.check_input(data, batch_sizes)
            steps = batch_sizes.size(0)
            # (T, B, D) in the packed (sorted) batch order, zero past each length
            x, lengths_t = _VF._pad_packed_sequence(data, batch_sizes, False, 0.0, steps)
            lengths = lengths_t.numpy()
            if lengths[-1] == steps:  # every sequence full length
                lengths = None
            batch_first = False
        else:
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead"
                )
            batched = input.dim() == 3
            batch_first = self.batch_first
            x = input
            if not batched:
                x = x.unsqueeze(0 if batch_first else 1)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )
            if hx is not None:
                self.check_forward_args(x, hx, None)
            else:
                self.check_input(x, None)

        train = self.training and self.num_layers > 1 and self.dropout > 0
        seed = int(torch.randint(0, _SEED_HIGH, (), dtype=torch.int64)) if train else None
        slot = self._slot(_NUMPY_DTYPE[data.dtype], batch_first)
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or (hx is not None and hx.requires_grad)
            or any(w.requires_grad for w in weights)
        )
        try:
            if (not needs_grad and not packed and not train and not self.bidirectional
                    and x.size(1 if batch_first else 0) == 1):
                # one step with a carried state (generation, streaming)
                h_new = _run_step(slot, names, self.bias, tuple(weights),
                                  x[:, 0] if batch_first else x[0], hx)
                top = h_new[-1:].copy()  # (1, B, H), apart from h_n as nn.RNN's are
                output = torch.from_numpy(top.reshape(top.shape[1], 1, -1) if batch_first
                                          else top)
                h_n = torch.from_numpy(h_new)
            elif needs_grad:
                output, h_n = _RecurrentFunction.apply(
                    slot, names, self.bias, lengths, train, seed, x, hx, *weights
                )
            else:
                # no autograd: nothing of the pass outlives the call but its results
                fwd = _run_forward(slot, None, names, self.bias, tuple(weights), x, hx,
                                   lengths, train, seed)
                out = fwd.output
                if out.base is not None and out.base.size > 2 * out.size:
                    out = out.copy()  # a view into every layer's states: keep the top's only
                output, h_n = _tensor(out), torch.from_numpy(fwd.h_n)
                del fwd, out
        except _NonFinite:  # nn.RNN propagates NaN and infinity: let it
            return super().forward(input, hx_given)

        if packed:
            out_data, _ = _VF._pack_padded_sequence(output, lengths_t, False)
            return (PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(h_n, unsorted_indices))
        if not batched:
            output = output.squeeze(0 if batch_first else 1)
            h_n = h_n.squeeze(1)
        return output, h_n

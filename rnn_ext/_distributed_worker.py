"""What runs on the Dask workers for :mod:`rnn_ext.distributed`.

Three kinds of task, each on one shard of the batch (a contiguous range of
its sequences):

``shard_loss_and_grad``
    One call of ``RNN.loss_and_grad`` on the shard's sequences.
``shard_train_step``
    One truncated-BPTT step on a training shard: the shard's next chunk,
    from the hidden state the shard's previous chunk ended in, which is kept
    here, on the worker, between steps (keyed by the run's id and the
    shard's index, for as long as the worker holds the shard's data).
``shard_evaluate``
    ``rnn_ext.training.evaluate`` over the shard's streams.

Each returns a :class:`Partial`; :func:`combine` adds two of them (losses,
target counts and the flat gradient buffers) and concatenates their
per-shard pieces in shard order, so a tree of ``combine`` tasks reduces the
shards to one result.

Parameters travel as one flat buffer, the model's own ``flat`` layout
(:meth:`ModelSpec.pack`), and gradients come back the same way (the
worker's ``g.flat``, as the kernel wrote it); a worker keeps one model per
shard (or per thread, for one-off calls) and copies each step's parameters
into it.  Hidden states are (L*dirs, b, H) for stacked or bidirectional
models, (b, H) for one layer and direction, as the Trainer carries them.

With dropout, each shard draws its masks from its own seed
(:func:`shard_seed`): a single shard uses the step's seed itself, so its
numbers are the one-process call's; several shards draw other masks of the
same distribution (reproducible for a given number of shards).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dask.sizeof import sizeof

# Passed instead of h0: continue from the hidden state this worker keeps for the shard.
STORED = "stored"


def shard_seed(seed: int | None, index: int, shards: int) -> int | None:
    """The dropout seed of shard ``index`` of ``shards`` in a pass seeded ``seed``:
    ``seed`` itself for one shard, else a child of its SeedSequence (spawn key (index,))."""
    if seed is None or shards == 1:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, np.uint64)[0])


def _train_kwargs(dropout_seed: int | None, train: bool) -> dict:
    return {} if not train else {"train": True, "seed": dropout_seed}


class StaleShardState(RuntimeError):
    """The worker's state for a shard is not the one the step asks for (re-seed it)."""


@dataclass(frozen=True)
class ModelSpec:
    """An RNN's configuration and parameter layout: enough to rebuild it anywhere.

    ``names``, ``shapes`` and ``offsets`` place each parameter, by the
    model's names (``model.parameters()``), in its one flat buffer
    (``model.flat``).  Workers always build the time-major form
    (``batch_first=False``); the client lays inputs and outputs out as the
    user's model expects.
    """

    input_size: int
    hidden_size: int
    output_size: int
    bias: bool
    nonlinearity: str
    dtype: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    offsets: tuple[int, ...] = ()

    @classmethod
    def of(cls, model: Any) -> ModelSpec:
        params = model.parameters()
        flat = model.flat
        base, item = flat.__array_interface__["data"][0], flat.itemsize
        offsets = []
        for name, p in params.items():
            at, rem = divmod(p.__array_interface__["data"][0] - base, item)
            if rem or not (0 <= at and at + p.size <= flat.size) or not p.flags.c_contiguous:
                raise ValueError(f"parameter {name!r} is not a contiguous view into the model's flat buffer")
            offsets.append(at)
        return cls(model.input_size, model.hidden_size, model.output_size, bool(model.bias),
                   str(model.nonlinearity), np.dtype(model.dtype).name, tuple(params),
                   tuple(p.shape for p in params.values()), int(model.num_layers),
                   bool(model.bidirectional), float(model.dropout), tuple(int(o) for o in offsets))

    @property
    def size(self) -> int:
        """Number of parameters: the length of a packed buffer."""
        return sum(int(np.prod(s)) for s in self.shapes)

    @property
    def states(self) -> int:
        """L*dirs: the number of layer-directions, each with its own hidden state."""
        return self.num_layers * (2 if self.bidirectional else 1)

    def build(self) -> Any:
        from .model import RNN

        return RNN(self.input_size, self.hidden_size, self.output_size, num_layers=self.num_layers,
                   bidirectional=self.bidirectional, dropout=self.dropout, bias=self.bias,
                   nonlinearity=self.nonlinearity, dtype=self.dtype, seed=0)

    def pack(self, model: Any) -> np.ndarray:
        """The model's parameters as one flat buffer: a copy of ``model.flat``."""
        return np.array(model.flat, dtype=self.dtype, copy=True)

    def unpack(self, buf: np.ndarray) -> dict[str, np.ndarray]:
        """Views into a flat buffer (parameters or their gradients), by name."""
        out = {}
        for name, shape, at in zip(self.names, self.shapes, self.offsets):
            n = int(np.prod(shape))
            out[name] = buf[at : at + n].reshape(shape)
        return out

    def load(self, model: Any, buf: np.ndarray) -> Any:
        """Copy a flat parameter buffer into ``model``'s own."""
        model.flat[...] = buf
        return model


@dataclass
class Partial:
    """One shard's (or several shards' combined) contribution.

    loss : float, the summed loss (kernel's float64 accumulation)
    count : int, targets counted
    grad : flat gradient buffer (``ModelSpec.pack``) or None
    pieces : per-shard extras in shard order (h_last, dh0, dx, ...)
    """

    loss: float
    count: int
    grad: np.ndarray | None
    pieces: list = field(default_factory=list)


@sizeof.register(Partial)
def _sizeof_partial(p: Partial) -> int:
    # Dask's default for an unknown object is sys.getsizeof (a few dozen
    # bytes); the real size keeps its memory and transfer accounting honest.
    return sizeof(p.grad) + sizeof(p.pieces) + 64


def combine(a: Partial, b: Partial) -> Partial:
    """a + b: the sums of losses, counts and gradients; a's pieces, then b's."""
    grad = b.grad if a.grad is None else a.grad if b.grad is None else a.grad + b.grad
    return Partial(a.loss + b.loss, a.count + b.count, grad, a.pieces + b.pieces)


# -- one-off passes -----------------------------------------------------------

_local = threading.local()


def _model_for(spec: ModelSpec) -> Any:
    """A model of this spec for the current thread (built once, reused)."""
    cache = getattr(_local, "models", None)
    if cache is None:
        cache = _local.models = {}
    model = cache.get(spec)
    if model is None:
        if len(cache) >= 4:
            cache.clear()
        model = cache[spec] = spec.build()
    return model


def shard_loss_and_grad(spec: ModelSpec, params: np.ndarray, shard: tuple,
                        ignore_index: int, reduction: str = "sum", train: bool = False,
                        dropout_seed: int | None = None) -> Partial:
    """``loss_and_grad`` on one shard.

    shard is ``(x, y, h0, lengths)``, time-major and batched: x (T, b) ids or
    (T, b, D), y (T, b) or (T, b, K), h0 (L*dirs, b, H), lengths (b,) or None.
    ``reduction`` is "sum" when the shards are added afterwards; a batch in
    one shard gets the caller's own (the single-process call, bit for bit).
    The piece is ``(h_n, dh0, dx)``, h_n and dh0 of shape (L*dirs, b, H).
    """
    x, y, h0, lengths = shard
    model = spec.load(_model_for(spec), params)
    loss, g = model.loss_and_grad(x, y, h0=h0, lengths=lengths, reduction=reduction,
                                  ignore_index=ignore_index, **_train_kwargs(dropout_seed, train))
    return Partial(loss, 0, g.flat, [(g.h_n, g.h0, g.x)])


# -- training shards ----------------------------------------------------------


@dataclass
class TrainShard:
    """Streams ``lo:hi`` of a training run, scattered once to the worker that trains them.

    streams : ndarray of shape (N, hi - lo), int64, the columns of
        ``rnn_ext.text.batchify(train_ids, batch)``
    """

    run_id: str
    index: int
    lo: int
    hi: int
    spec: ModelSpec
    seq_len: int
    streams: np.ndarray


@sizeof.register(TrainShard)
def _sizeof_shard(s: TrainShard) -> int:
    return s.streams.nbytes + 256


@dataclass
class _ShardState:
    model: Any
    h: np.ndarray | None = None
    steps: int = -1  # training steps done when h was left


# worker -> {(run_id, shard index): _ShardState}; dies with the worker
_stores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def _store() -> dict:
    from distributed import get_worker

    worker = get_worker()
    with _stores_lock:
        store = _stores.get(worker)
        if store is None:
            store = _stores[worker] = {}
    return store


def shard_train_step(shard: TrainShard, params: np.ndarray, step: int, chunk: int,
                     h0: Any, reduction: str = "sum", train: bool = False,
                     dropout_seed: int | None = None) -> Partial:
    """One truncated-BPTT step on a shard (``reduction`` as in :func:`shard_loss_and_grad`).

    Reads chunk ``chunk`` of the shard's streams and starts from ``h0``:
    :data:`STORED` continues from the state this worker kept after step
    ``step - 1``; an array ((b, H), or (L*dirs, b, H) for a stacked model) or
    None (zeros) re-seeds it (a new run, or a retry after a fault).
    ``train=True`` applies dropout with masks drawn from ``dropout_seed``
    (from :func:`shard_seed`).  At chunk 0 (a new pass) the state is zeros
    whatever ``h0`` says, as in :meth:`rnn_ext.training.Trainer.train_step`.
    The shard's new state stays here; a copy goes back as the one piece.
    """
    from .text import iter_chunks

    store = _store()
    key = (shard.run_id, shard.index)
    state = store.get(key)
    if state is None:
        state = store[key] = _ShardState(shard.spec.build())
        # The state lives as long as the worker holds the shard: when the
        # client releases it (or disconnects) the state goes too.
        weakref.finalize(shard, store.pop, key, None)
    if chunk == 0:
        h = None
    elif isinstance(h0, str) and h0 == STORED:
        if state.steps != step:
            raise StaleShardState(
                f"shard {shard.index} of run {shard.run_id} holds the state after step {state.steps}, "
                f"not after step {step}")
        h = state.h
    else:
        h = h0
    x, y = next(iter_chunks(shard.streams, shard.seq_len, start=chunk))
    model = shard.spec.load(state.model, params)
    loss, g = model.loss_and_grad(x, y, h0=h, reduction=reduction,
                                  **_train_kwargs(dropout_seed, train))
    state.h, state.steps = (g.h_n if shard.spec.states > 1 else g.h_last), step + 1
    return Partial(loss, x.size, g.flat, [state.h])


def shard_evaluate(shard: TrainShard, params: np.ndarray) -> Partial:
    """Bits per character over the shard's streams, weighted by their number.

    ``loss`` is ``evaluate(...) * streams`` and ``count`` the number of
    streams, so the combined ``loss / count`` is the mean over all streams
    (each stream holds the same number of targets).
    """
    from .training import evaluate

    store = _store()
    state = store.get((shard.run_id, shard.index))
    model = state.model if state is not None else _model_for(shard.spec)
    shard.spec.load(model, params)
    b = shard.hi - shard.lo
    # the streams' columns, end to end, are the shard's piece of the text
    ids = np.ascontiguousarray(shard.streams.T).reshape(-1)
    return Partial(evaluate(model, ids, streams=b) * b, b, None)


def drop_run(run_id: str, dask_worker: Any = None) -> int:
    """Forget a run's shard states on this worker; the number dropped."""
    if dask_worker is None:
        return 0
    with _stores_lock:
        store = _stores.get(dask_worker, {})
    keys = [k for k in store if k[0] == run_id]
    for k in keys:
        del store[k]
    return len(keys)

"""Data-parallel gradients and training on a Dask cluster.

The batch dimension is split across the cluster's workers: each worker runs
the compiled kernel on its shard of the sequences, and the shards' losses
and gradients are summed by a tree of pairwise additions on the workers.
The result is the single-process one up to the order of float additions.

    from dask.distributed import Client
    import rnn_ext.distributed as rd
    client = Client()                                       # or Client("tcp://scheduler:8786")
    loss, g = rd.loss_and_grad(model, x, y, client=client)  # as model.loss_and_grad
    history = rd.train(model, text, client=client, steps=2000)   # as rnn_ext.training.train

Needs the optional extra: ``pip install 'rnn-ext[dask]'``.  Workers must be
able to import the same version of rnn_ext; the client connects to them
directly (``direct=True`` scatter and gather), so that data never passes
through the scheduler.

How :func:`train` moves data
----------------------------
- The training streams are split once by columns (``Trainer.streams[:, lo:hi]``)
  and each shard is scattered to one worker, where it stays.
- Every step sends the parameters out (one flat buffer, scattered to one
  worker and copied by the others from it) and gets one summed gradient
  buffer back (plus the shards' new hidden states, B x H, which the client
  keeps as ``trainer.h`` for checkpoints and for recovery).
- The hidden state carried between chunks lives on each shard's worker,
  keyed by the run's id.  The optimizer, clipping, validation and history are
  :class:`rnn_ext.training.Trainer`'s own, on the client.

Faults
------
When a worker dies, its shards are rebuilt from the client's copy of the
streams on a surviving worker, every shard is re-seeded with the client's
copy of its hidden state, and the interrupted step runs again from the same
parameters.  The outcome is the undisturbed run's (bit for bit: each shard's
arithmetic does not depend on the worker it runs on).

Float summation order
---------------------
One process computes each gradient with one GEMM over all B sequences; here
each shard does a GEMM over its own and the shards are then added.  The
results agree to rounding: about 1e-15 relative in float64 and 1e-6 in
float32 for one pass (h_last and dh0, which never mix sequences, exactly).
Over a training run the difference grows slowly: after 20 steps the losses
agree to about 1e-15 and the parameters to 1e-12 in float64; in float32 the
losses to about 2e-5 and the parameters to 3e-4 norm-wise (Adagrad's and
Adam's first steps are +-lr for every entry, so an entry whose gradient is at
rounding level may step the other way).  With one shard (one worker, or one
sequence) the worker makes the single-process call itself: bit for bit the
same.  See docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import uuid
import weakref
from collections import Counter
from concurrent.futures import CancelledError
from typing import Any

import numpy as np

try:
    import distributed as _dd
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker
except ImportError as exc:  # pragma: no cover - exercised without dask installed
    raise ImportError(
        "rnn_ext.distributed needs Dask's distributed scheduler: pip install 'rnn-ext[dask]'"
    ) from exc

from ._distributed_worker import (
    STORED,
    ModelSpec,
    StaleShardState,
    TrainShard,
    combine,
    drop_run,
    shard_evaluate,
    shard_loss_and_grad,
    shard_train_step,
)
from ._results import Gradients
from ._validation import check_batch, check_ignore_index, check_reduction
from .training import Trainer

__all__ = [
    "loss_and_grad",
    "train",
    "DistributedTrainer",
    "connect",
    "client_from_args",
    "trainer_from_args",
    "ClusterUnreachableError",
]

CONNECT_TIMEOUT = 5.0  # seconds to reach a scheduler
WORKER_TIMEOUT = 30.0  # seconds to wait for a worker to (re)appear
RETRIES = 3  # attempts per step after a fault


# What a lost worker looks like from the client: its data and the tasks
# depending on it are cancelled, a transfer fails, or the task is retried
# on too many dying workers.
_LOST = (CancelledError, KilledWorker, CommClosedError, StaleShardState, OSError)


class ClusterUnreachableError(ConnectionError):
    """The Dask scheduler at the given address could not be reached."""


class _ShardLost(Exception):
    """A shard's worker left the cluster while a step waited on it."""


# -- clients ------------------------------------------------------------------


def connect(address: str, timeout: float = CONNECT_TIMEOUT):
    """A ``distributed.Client`` for the scheduler at ``address``.

    Raises
    ------
    ClusterUnreachableError
        Naming the address, when no scheduler answers within ``timeout``
        seconds (or something else answers).
    ValueError
        For an address no Dask transport knows (``tcp://host:8786``,
        ``tls://...``, ``host:8786`` are all fine).
    """
    from distributed.comm import parse_address
    from distributed.comm.registry import get_backend

    try:
        get_backend(parse_address(address)[0])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{address!r} is not a Dask scheduler address ({exc})") from None
    try:
        return _dd.Client(address, timeout=timeout)
    except OSError as exc:  # refused, timed out, unresolvable
        why = "" if "timed out" in str(exc).lower() else f" ({exc})"
        raise ClusterUnreachableError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s{why}") from None
    except ValueError as exc:  # e.g. no port
        raise ValueError(f"{address!r} is not a Dask scheduler address ({exc})") from None
    except Exception as exc:  # something that is not a Dask scheduler answered
        raise ClusterUnreachableError(
            f"cannot reach the Dask scheduler at {address}: it did not answer as one "
            f"({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def client_from_args(workers: int | None = None, scheduler: str | None = None, *,
                     timeout: float = CONNECT_TIMEOUT):
    """The client the ``rnn-ext`` command's ``--workers``/``--scheduler`` ask for.

    A context manager yielding a ``distributed.Client``: with ``workers=N`` on
    a new LocalCluster of N worker processes (1 thread each, on 127.0.0.1,
    closed on exit); with ``scheduler=ADDR`` connected to that scheduler; with
    neither, it yields None (train in this process).

    Raises
    ------
    ClusterUnreachableError
        When the scheduler cannot be reached (see :func:`connect`).
    ValueError
        Both given, or ``workers`` < 1.
    """
    if workers is not None and scheduler is not None:
        raise ValueError("give a number of local workers or a scheduler address, not both")
    if scheduler is not None:
        client = connect(scheduler, timeout)
        try:
            yield client
        finally:
            client.close()
        return
    if workers is None:
        yield None
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    cluster = _dd.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=":0")
    try:
        client = _dd.Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _client(client: Any):
    if client is not None:
        return client
    try:
        return _dd.default_client()
    except ValueError:
        raise ValueError("no Dask client: pass client=Client(...) or create one first") from None


def _workers(client: Any, timeout: float = WORKER_TIMEOUT) -> list[str]:
    """The addresses of the cluster's workers, sorted; waits for at least one."""
    workers = sorted(client.nthreads())
    if workers:
        return workers
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise RuntimeError(f"the Dask cluster has no workers (waited {timeout:g} s)") from None
    return sorted(client.nthreads())


def _split(B: int, n: int) -> list[tuple[int, int]]:
    """(lo, hi) of min(n, B) contiguous, near-equal pieces of range(B)."""
    n = min(n, B)
    edges = [B * i // n for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _tree_sum(client: Any, futures: list) -> Any:
    """One future of the pairwise sum ((0+1)+(2+3))+... of Partial futures, in order."""
    while len(futures) > 1:
        level = [client.submit(combine, futures[i], futures[i + 1], pure=False)
                 for i in range(0, len(futures) - 1, 2)]
        if len(futures) % 2:
            level.append(futures[-1])
        futures = level
    return futures[0]


def _nbytes(obj: Any) -> int:
    """Bytes of the arrays in a Partial or a (nested) tuple/list of arrays."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(o) for o in obj)
    if hasattr(obj, "grad"):
        return _nbytes(obj.grad) + _nbytes(obj.pieces) + 16
    return 0


def _writable(a: np.ndarray) -> np.ndarray:
    # deserialized buffers can be read-only; clipping works in place
    return a if a.flags.writeable else a.copy()


# -- one call -----------------------------------------------------------------


def loss_and_grad(model: Any, x: Any, y: Any, h0: Any = None, lengths: Any = None,
                  reduction: str = "sum", ignore_index: int = -100, *, client: Any = None):
    """``model.loss_and_grad`` with the batch split across a Dask cluster's workers.

    Arguments and result are those of :meth:`rnn_ext.RNN.loss_and_grad`.  The
    B sequences are cut into one contiguous shard per worker (fewer when B
    is smaller); each worker rebuilds the model from one flat parameter
    buffer and returns its shard's summed loss and gradients, which a tree of
    pairwise sums on the workers adds.  ``reduction="mean"`` divides the
    total by the number of targets counted over the whole batch.  h_last,
    ``g.h0`` and ``g.x`` are put back together in the batch's order.

    Parameters
    ----------
    model : RNN
    x, y, h0, lengths, reduction, ignore_index
        As in :meth:`rnn_ext.RNN.loss_and_grad` (validated here, before
        anything is sent).
    client : distributed.Client, optional
        Default: the current default client.

    Returns
    -------
    loss : float
    grads : Gradients
    """
    client = _client(client)
    reduction = check_reduction(reduction)
    ignore_index = check_ignore_index(ignore_index)
    if y is None:
        raise TypeError("y (the targets) is required, got None")
    batch = check_batch(x, y, h0, lengths, D=model.input_size, H=model.hidden_size,
                        K=model.output_size, dtype=model.dtype, batch_first=model.batch_first,
                        ignore_index=ignore_index)
    T, B = batch.T, batch.B
    spec = ModelSpec.of(model)
    # the kernel's flat time-major arrays, (T*B, ...), back to (T, B, ...) to cut along B
    xflat = batch.xi if batch.xi is not None else batch.xf
    yflat = batch.yi if batch.yi is not None else batch.ys
    assert xflat is not None and yflat is not None  # check_batch sets one of each
    xs = xflat.reshape((T, B) + xflat.shape[1:])
    ys = yflat.reshape((T, B) + yflat.shape[1:])

    def shard(lo: int, hi: int) -> tuple:
        return (np.ascontiguousarray(xs[:, lo:hi]), np.ascontiguousarray(ys[:, lo:hi]),
                batch.h0[0, lo:hi], None if batch.lengths is None else batch.lengths[lo:hi])

    last: BaseException | None = None
    for _ in range(RETRIES + 1):
        bounds = _split(B, len(_workers(client)))
        try:
            params = client.scatter(spec.pack(model.parameters()), direct=True, hash=False)
            data = client.scatter([shard(lo, hi) for lo, hi in bounds], direct=True, hash=False)
            # one shard: the caller's reduction on the worker, the local call exactly
            whole = len(bounds) == 1
            parts = [client.submit(shard_loss_and_grad, spec, params, d, ignore_index,
                                   reduction if whole else "sum", pure=False) for d in data]
            result = client.gather(_tree_sum(client, parts), direct=True)
            break
        except _LOST as exc:
            last = exc
    else:
        raise RuntimeError(f"the distributed pass failed {RETRIES + 1} times; last error: {last!r}") from last

    mean = reduction == "mean" and not whole
    scale = (1.0 / batch.count if batch.count else 0.0) if mean else 1.0
    loss = result.loss * scale if mean else result.loss
    grad = _writable(result.grad)
    h_last = np.concatenate([p[0] for p in result.pieces], axis=0)
    dh0 = np.concatenate([p[1] for p in result.pieces], axis=0)
    dx = np.concatenate([p[2] for p in result.pieces], axis=1) if batch.xf is not None else None
    if mean:
        grad *= scale
        dh0 *= scale
        if dx is not None:
            dx *= scale
    if not batch.batched:
        h_last, dh0 = h_last[0], dh0[0]
        dx = dx[:, 0] if dx is not None else None
    elif model.batch_first and dx is not None:
        dx = np.ascontiguousarray(dx.swapaxes(0, 1))
    g = spec.unpack(grad)
    return float(loss), Gradients(U=g["U"], W=g["W"], V=g["V"], b=g.get("b"), c=g.get("c"),
                                  h0=dh0, x=dx, h_last=h_last)


# -- training -----------------------------------------------------------------


class DistributedTrainer(Trainer):
    """:class:`rnn_ext.training.Trainer` with each step's gradient computed on a Dask cluster.

    Everything but the gradient pass is the Trainer's own: vocabulary, the
    held-out tail, the streams, the model, the optimizer and its step,
    clipping, validation (on the client) and the history.  The training
    streams are split by columns into one shard per worker (at most
    ``batch``), scattered once; see the module docstring for what moves
    each step and what happens when a worker dies.

    Parameters
    ----------
    model, text, **options
        As :class:`rnn_ext.training.Trainer`.
    client : distributed.Client, optional
        Default: the current default client.

    Attributes
    ----------
    traffic : dict
        Bytes the client sent (``"sent"``: parameters, re-seeded hidden
        states, shards re-created after a fault) and received
        (``"received"``: summed gradients and the shards' hidden states), and
        the number of passes run (``"passes"``), counted from the arrays'
        sizes.  Transfers between workers (the tree sum, the parameter copies)
        are Dask's and not counted here.

    Use it as a context manager (or call :meth:`close`) to drop the workers'
    state for the run when done.
    """

    _owned: Any = None  # finalizer closing a client of trainer_from_args

    def __init__(self, model: Any, text: str, *, client: Any = None, **options: Any) -> None:
        super().__init__(model, text, **options)
        self.client = _client(client)
        self._spec = ModelSpec.of(self.model)
        self._run_id = uuid.uuid4().hex
        workers = _workers(self.client)
        self._bounds = _split(self.batch, len(workers))
        self._workers = workers[: len(self._bounds)]
        self.traffic = {"sent": 0, "received": 0, "passes": 0}
        self._data = [self._scatter_shard(i, w) for i, w in enumerate(self._workers)]
        self._reseed = True  # the workers hold no state yet: seed it from self.h
        self._previous: Any = None  # the last pass's futures (see _on_shards)

    # -- shards -----------------------------------------------------------

    @property
    def shards(self) -> list[tuple[int, int, str]]:
        """(lo, hi, worker address) of each shard: streams lo:hi train there."""
        return [(lo, hi, w) for (lo, hi), w in zip(self._bounds, self._workers)]

    def _scatter_shard(self, i: int, worker: str) -> Any:
        lo, hi = self._bounds[i]
        shard = TrainShard(self._run_id, i, lo, hi, self._spec, self.seq_len,
                           np.ascontiguousarray(self.streams[:, lo:hi]))
        [fut] = self.client.scatter([shard], workers=[worker], direct=True, hash=False)
        self.traffic["sent"] += shard.streams.nbytes
        return fut

    def _recover(self) -> None:
        """Re-create lost shards on live workers; re-seed every shard's state."""
        self._reseed = True
        alive = _workers(self.client)
        who_has = self.client.who_has([f for f in self._data if f.status == "finished"])
        load: Counter = Counter()
        lost = []
        for i, (fut, w) in enumerate(zip(self._data, self._workers)):
            if fut.status == "finished" and w in alive and w in who_has.get(fut.key, ()):
                load[w] += 1
            else:
                lost.append(i)
        for i in lost:
            w = min(alive, key=lambda a: (load[a], a))
            self._data[i] = self._scatter_shard(i, w)
            self._workers[i] = w
            load[w] += 1

    def _gather(self, total: Any) -> Any:
        """The result of ``total``, watching that the shards' workers stay alive."""
        while True:
            try:
                _dd.wait(total, timeout=1.0)
            except TimeoutError:
                # a worker that left gracefully takes the state with it and
                # strands the tasks pinned to it: treat it as lost
                alive = set(self.client.nthreads())
                if not alive.issuperset(self._workers):
                    raise _ShardLost(sorted(set(self._workers) - alive)) from None
                continue
            return self.client.gather(total, direct=True)

    def _on_shards(self, submit: Any) -> Any:
        """Run ``submit(i, shard_future, worker, params_future)`` on every shard, tree-summed.

        Retries after a fault (``RETRIES`` times), recovering lost shards first.
        """
        last: BaseException | None = None
        for _ in range(RETRIES + 1):
            try:
                if last is not None or any(f.status != "finished" for f in self._data):
                    self._recover()
                buf = self._spec.pack(self.model.parameters())
                params = self.client.scatter(buf, direct=True, hash=False)
                self.traffic["sent"] += buf.nbytes
                parts = [submit(i, d, w, params)
                         for i, (d, w) in enumerate(zip(self._data, self._workers))]
                total = _tree_sum(self.client, parts)
                # Release the previous pass's futures only now: the release
                # goes out on the client's batched stream (10 ms interval),
                # and sent before the new tasks it would hold them back.
                self._previous = (params, parts, total)
                result = self._gather(total)
            except (*_LOST, _ShardLost) as exc:
                last = exc
                continue
            self.traffic["received"] += _nbytes(result)
            self.traffic["passes"] += 1
            return result
        raise RuntimeError(
            f"the distributed step failed {RETRIES + 1} times; last error: {last!r}") from last

    # -- the Trainer's hooks ------------------------------------------------

    def _loss_and_grad(self, index: int) -> tuple[float, Any, np.ndarray, int]:
        """Chunk ``index`` on the cluster: the gradient summed over the shards.

        As :meth:`rnn_ext.training.Trainer._loss_and_grad`, with
        ``reduction="sum"`` on each shard, scaled once by the global number
        of targets for ``"mean"``.  With one shard the worker runs the
        Trainer's own call, so the step is the local one bit for bit.
        """
        whole = len(self._bounds) == 1

        def submit(i: int, data: Any, worker: str, params: Any) -> Any:
            h0: Any
            if self._reseed and self.h is not None:
                lo, hi = self._bounds[i]
                h0 = np.ascontiguousarray(self.h[lo:hi])
                self.traffic["sent"] += h0.nbytes
            else:
                h0 = None if self._reseed else STORED
            return self.client.submit(shard_train_step, data, params, self.step, index, h0,
                                      self.reduction if whole else "sum", workers=[worker],
                                      allow_other_workers=False, pure=False)

        result = self._on_shards(submit)
        self._reseed = False
        count = result.count
        if self.reduction == "mean" and not whole:
            scale = 1.0 / count
            loss = result.loss * scale
        else:
            scale, loss = 1.0, result.loss
        grad = _writable(result.grad)
        if scale != 1.0:
            grad *= scale
        return loss, self._spec.unpack(grad), np.concatenate(result.pieces, axis=0), count

    def evaluate(self, split: str = "val") -> float | None:
        """As :meth:`Trainer.evaluate`; ``"train"`` runs on the shards, where the streams are."""
        if split != "train":
            return super().evaluate(split)

        def submit(i: int, data: Any, worker: str, params: Any) -> Any:
            return self.client.submit(shard_evaluate, data, params, workers=[worker],
                                      allow_other_workers=False, pure=False)

        result = self._on_shards(submit)
        return result.loss / result.count

    # -- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Drop this run's shards and hidden states from the workers.

        A trainer from :func:`trainer_from_args` also closes its client (and
        local cluster).  Closing twice does nothing.
        """
        data, self._data = self._data, []
        self._previous = None
        if data:
            del data
            with contextlib.suppress(Exception):
                if self.client.status == "running":
                    self.client.run(drop_run, self._run_id)
        if self._owned is not None:
            self._owned()

    def __enter__(self) -> DistributedTrainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def trainer_from_args(workers: int | None, scheduler: str | None, text: str, model: Any = None, *,
                      timeout: float = CONNECT_TIMEOUT, **options: Any) -> DistributedTrainer:
    """A :class:`DistributedTrainer` on the cluster ``rnn-ext train --workers/--scheduler`` asks for.

    The client (and, for ``workers``, the LocalCluster) of
    :func:`client_from_args` belong to the trainer: :meth:`~DistributedTrainer.close`
    closes them, and so does the interpreter's exit if nobody did.

    Raises
    ------
    ClusterUnreachableError
        When the scheduler cannot be reached within ``timeout`` seconds.
    ValueError
        Neither or both of ``workers`` and ``scheduler`` given.
    """
    if workers is None and scheduler is None:
        raise ValueError("give a number of local workers or a scheduler address")
    scope = contextlib.ExitStack()
    try:
        client = scope.enter_context(client_from_args(workers, scheduler, timeout=timeout))
        trainer = DistributedTrainer(model, text, client=client, **options)
    except BaseException:
        scope.close()
        raise
    trainer._owned = weakref.finalize(trainer, scope.close)
    return trainer


def train(model: Any, text: str, *, client: Any = None, steps: int = 2000, callback: Any = None,
          eval_every: int | None = 200, final_eval: bool = True, **options: Any):
    """:func:`rnn_ext.training.train` with the gradients computed on a Dask cluster.

    ``train(None, text, client=client, hidden=128, steps=2000)`` builds and
    trains a new model; the options (``hidden``, ``seq_len``, ``batch``,
    ``optimizer``, ``lr``, ``clip``, ``clip_norm``, ``seed``,
    ``val_fraction``, ``dtype``, ``nonlinearity``, ``reduction``) are those of
    :class:`rnn_ext.training.Trainer`, and ``steps``, ``callback``,
    ``eval_every``, ``final_eval`` those of :meth:`Trainer.run`.  The same
    arguments give the single-process run's history and model, to float
    rounding (see the module docstring).

    Returns
    -------
    History
    """
    with DistributedTrainer(model, text, client=client, **options) as trainer:
        return trainer.run(steps, callback=callback, eval_every=eval_every, final_eval=final_eval)

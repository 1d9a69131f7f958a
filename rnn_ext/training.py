"""Character-level training with truncated backpropagation through time.

The text is encoded with a :class:`~rnn_ext.text.Vocab`; its last
``val_fraction`` is held out for validation.  The training part is cut into
``batch`` parallel streams (:func:`~rnn_ext.text.batchify`) that are read
``seq_len`` characters at a time.  Each step runs ``loss_and_grad`` on one
chunk starting from the hidden state the previous chunk ended in
(every layer's, ``g.h_n``; ``g.h_last`` for one layer), clips the gradients
and takes one optimizer step; gradients do not flow back across chunk
boundaries.  The hidden state is reset to zeros at the start of every pass
over the text.  Models may be stacked (``num_layers``) with dropout between
the layers; bidirectional models are refused, since their reverse direction
would read the characters they are asked to predict.

Losses are reported in bits per character: the mean cross-entropy over the
chunk's B*T targets (natural log) divided by ln 2.

Nothing here draws random numbers except the model's initialization (from
``seed``) and, with dropout, each step's masks, drawn from a seed derived
from ``seed`` and the step's number (so a resumed run draws the masks the
uninterrupted one would); the same arguments give bit-identical results on
the same machine and thread count.  Evaluation runs without dropout.

A step changes the trainer's state all at once or not at all: the gradient
pass, the clipping, the optimizer update, the step counter, the carried
hidden state and the history run with SIGINT and SIGTERM held back
(:mod:`rnn_ext._signals`), so a Ctrl-C lands before or after a step, never
inside one, and a checkpoint saved after it is one consistent state.  (The
gradient pass is held back too: a signal landing in the thread control
around a kernel call could leave that process state half-switched.)  A step whose loss or gradients are not finite raises
FloatingPointError before anything changes: the model keeps its last finite
parameters, so the last good checkpoint can still be saved and resumed.  An
update that overflows the parameters from finite gradients (an absurd
learning rate) raises FloatingPointError at once; ``save`` then refuses the
model, so no checkpoint on disk is replaced by it.

Examples
--------
>>> hist = rnn_ext.train(None, text, hidden=128, steps=2000)
>>> hist.val_loss[-1]                     # bits per character on the held-out tail
>>> rnn_ext.text.sample(hist.model, prime="The ", length=200)

Or step by step, e.g. to save checkpoints on the way:

>>> tr = Trainer(None, text, hidden=128)
>>> tr.run(1000); tr.save("ckpt.npz")
>>> tr = Trainer.resume(rnn_ext.io.load_checkpoint("ckpt.npz"), text)
>>> tr.run(1000)
"""

import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np

from . import optim as _optim
from ._memory import check_fits
from ._signals import deferred
from .clip import clip_grad_norm, clip_grad_value
from .io import save
from .model import RNN
from .text import Vocab, batchify, num_chunks

__all__ = ["train", "Trainer", "History", "StepInfo", "evaluate", "step_seed", "training_bytes"]

# per-parameter state arrays each optimizer keeps, for training_bytes
_SLOTS = {"adam": 2, "adagrad": 1, "sgd": 1}

_LN2 = math.log(2.0)


@dataclass(repr=False)
class History:
    """What a training run recorded.  All losses are in bits per character.

    Attributes
    ----------
    loss : list of float
        Training loss of each step's chunk (``loss[i]`` is step ``i + 1``).
    smooth_loss : list of float
        Exponential moving average of ``loss`` (decay 0.98, bias-corrected).
    val_steps, val_loss : list
        Validation loss on the held-out tail after those steps.
    train_loss : float or None
        Loss over the whole training part at the end (None if not evaluated).
    chars : int
        Target characters processed by the training steps.
    seconds : float
        Wall time spent in training steps (evaluation and callbacks excluded).
    model, vocab, optimizer : the trained objects.
    step : int
        Optimizer steps done in total (including those before a resume).
    """

    loss: list = field(default_factory=list)
    smooth_loss: list = field(default_factory=list)
    val_steps: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    train_loss: float | None = None
    chars: int = 0
    seconds: float = 0.0
    model: object = field(default=None, repr=False)
    vocab: object = field(default=None, repr=False)
    optimizer: object = field(default=None, repr=False)
    step: int = 0

    @property
    def chars_per_sec(self):
        """Training throughput: characters (targets) per second of training steps."""
        return self.chars / self.seconds if self.seconds > 0 else 0.0

    def __repr__(self):
        parts = [f"step={self.step}"]
        if self.smooth_loss:
            parts.append(f"smooth_loss={self.smooth_loss[-1]:.4f}")
        if self.train_loss is not None:
            parts.append(f"train_loss={self.train_loss:.4f}")
        if self.val_loss:
            parts.append(f"val_loss={self.val_loss[-1]:.4f}")
        parts.append(f"chars_per_sec={self.chars_per_sec:,.0f}")
        return f"History({', '.join(parts)})"


@dataclass
class StepInfo:
    """Passed to the training callback after every step.

    ``val_loss`` is set (bits/char) only on steps where validation ran.
    Return True from the callback to stop training after this step.
    """

    step: int
    loss: float
    smooth_loss: float
    chars_per_sec: float
    val_loss: float
    trainer: object


def _time_major(model, a):
    """(T, B) chunks as the model expects them (transposed when batch_first)."""
    return np.ascontiguousarray(a.T) if model.batch_first else a


def _refuse_bidirectional(model):
    if getattr(model, "bidirectional", False):
        raise ValueError(
            "a bidirectional model cannot be trained or evaluated as a truncated-BPTT language model: "
            "its reverse direction would read the characters it is asked to predict "
            "(use bidirectional=False; num_layers may be > 1)")


def _carried(model, g):
    """The state the next chunk starts from: every layer's h_n (L, B, H), or
    h_last (B, H) for one layer (the seed's form)."""
    return g.h_n if model.num_layers * model.num_directions > 1 else g.h_last


def step_seed(seed, step):
    """The dropout seed of training step ``step`` (counted from 0) of a run seeded ``seed``.

    A child of ``numpy.random.SeedSequence(seed)`` (spawn key ``(step,)``):
    independent of the initialization's stream and of other steps', and the
    same for a run and its resumption.
    """
    return int(np.random.SeedSequence(seed, spawn_key=(int(step),)).generate_state(1, np.uint64)[0])


def evaluate(model, ids, streams=1, chunk=None):
    """Mean loss in bits per character of ``model`` predicting ``ids[1:]`` from ``ids[:-1]``.

    The ids are cut into ``streams`` parallel streams (1: one sequential pass
    from a zero state), read ``chunk`` steps at a time carrying the hidden
    state, forward only.  The chunking does not change the result (beyond
    rounding); the default keeps each pass near 2048 characters, small
    enough for the kernel's single-thread path.

    Parameters
    ----------
    model : RNN
        One direction (any number of layers; every layer's state is carried).
    ids : ndarray of shape (L,), int
    streams : int >= 1
    chunk : int >= 1, optional

    Returns
    -------
    float
    """
    _refuse_bidirectional(model)
    data = batchify(ids, streams)
    chunk = max(16, 2048 // data.shape[1]) if chunk is None else _check_int("chunk", chunk)
    n = data.shape[0]
    if n < 2:
        raise ValueError(f"{len(ids)} characters are too few to evaluate in {streams} streams")
    tiny = np.finfo(model.dtype).tiny
    h = None
    total = 0.0
    for i in range(0, n - 1, chunk):
        j = min(i + chunk, n - 1)
        x, y = data[i:j], data[i + 1 : j + 1]
        out = model.forward(_time_major(model, x), h0=h)
        probs = out.probs
        if model.batch_first:
            probs = probs.transpose(1, 0, 2)
        p = np.take_along_axis(probs, y[:, :, None], axis=2)
        total -= float(np.sum(np.log(np.maximum(p, tiny), dtype=np.float64)))
        h = out.h_n
    return total / ((n - 1) * streams) / _LN2


def training_bytes(vocab_size, hidden, seq_len, batch, dtype=np.float32, optimizer="adam"):
    """A lower bound on the memory a character-level training run needs, in bytes.

    The arrays that exist together during a step: the parameters, their
    gradients, the transposed copies a pass makes (about one more set), the
    optimizer's state, and the activations of one chunk (two (T, B, H)
    buffers for the hidden states and the BPTT deltas, and the (T, B, K)
    logits)::

        P = H*D + H*H + K*H + H + K         (D = K = vocab_size)
        bytes = itemsize * (P * (3 + slots) + T * B * (2*H + K))

    with slots = 2 for Adam, 1 for Adagrad and SGD.
    """
    D = K = int(vocab_size)
    H, T, B = int(hidden), int(seq_len), int(batch)
    P = H * D + H * H + K * H + H + K
    slots = _SLOTS.get(str(optimizer).lower(), 2)
    return np.dtype(dtype).itemsize * (P * (3 + slots) + T * B * (2 * H + K))


def _nonfinite(grads):
    """The name of the first gradient holding NaN or infinity, or None."""
    items = grads.items() if isinstance(grads, dict) else grads.parameters().items()
    for name, a in items:
        if a is None:
            continue
        a = np.asarray(a)
        # min and max propagate NaN and see infinities, without a temporary array
        if not (np.isfinite(a.min()) and np.isfinite(a.max())):
            return name
    return None


def _check_int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_real(name, value, low=0.0, high=None, strict=True, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = value > low if strict else value >= low
    if high is not None:
        ok = ok and value < high
    if not (ok and math.isfinite(value)):
        bound = f"> {low}" if strict else f">= {low}"
        if high is not None:
            bound += f" and < {high}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


class Trainer:
    """Truncated-BPTT training of a character-level RNN on one text.

    Parameters
    ----------
    model : RNN or None
        None builds ``RNN(len(vocab), hidden, len(vocab), num_layers=num_layers,
        dropout=dropout, seed=seed, dtype=dtype, nonlinearity=nonlinearity)``.
        A given model is trained further; if it has a ``vocab`` the text is
        encoded with it.  Bidirectional models are refused (ValueError).
    text : str
    hidden : int
        Hidden size of a new model.
    seq_len : int
        Characters per chunk (the truncation length T).
    batch : int
        Parallel streams B.
    optimizer : {"adam", "adagrad", "sgd"} or rnn_ext.optim.Optimizer
    lr : float, optional
        Learning rate of a named optimizer (default 2e-3 for Adam, 0.1 for
        Adagrad; required for SGD).
    clip : float or None
        Clamp each gradient entry to [-clip, clip] (None or 0: no clipping).
    clip_norm : float or None
        Also rescale the gradients to at most this joint L2 norm.
    val_fraction : float in [0, 1)
        Share of the text, from its end, held out for validation.
    seed : int
        Seeds the new model's initialization and the dropout masks (see
        :func:`step_seed`).
    dtype, nonlinearity : for a new model.
    num_layers : int >= 1
        Stacked layers of a new model.
    dropout : float in [0, 1)
        Dropout between the layers of a new model (needs num_layers >= 2),
        applied in training steps only.  A given model keeps its own.
    reduction : {"mean", "sum"}
        Loss whose gradient is followed: mean over the chunk's B*T targets
        (default), or their sum (min-char-rnn's choice).
    """

    def __init__(self, model, text, *, hidden=128, seq_len=25, batch=32, optimizer="adam", lr=None,
                 clip=5.0, clip_norm=None, val_fraction=0.1, seed=0, dtype=np.float32,
                 nonlinearity="tanh", reduction="mean", num_layers=1, dropout=0.0):
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("the text is empty")
        self.seq_len = _check_int("seq_len", seq_len)
        self.batch = _check_int("batch", batch)
        self.clip = _check_real("clip", clip, allow_none=True, strict=False) or None
        self.clip_norm = _check_real("clip_norm", clip_norm, allow_none=True)
        val_fraction = _check_real("val_fraction", val_fraction, high=1.0, strict=False)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

        if model is not None:
            _refuse_bidirectional(model)
        else:
            num_layers = _check_int("num_layers", num_layers)
            dropout = _check_real("dropout", dropout, high=1.0, strict=False)
            if dropout and num_layers == 1:
                raise ValueError(f"dropout={dropout:g} acts between layers and needs num_layers >= 2, "
                                 "got num_layers=1")
        self.seed = seed
        vocab = getattr(model, "vocab", None) if model is not None else None
        if vocab is None:
            vocab = Vocab.from_text(text)
        ids = vocab.encode(text)
        n_val = int(len(ids) * val_fraction)
        if val_fraction > 0 and n_val < 2:
            raise ValueError(
                f"the text ({len(ids)} characters) is too short to hold out {val_fraction:g} of it for validation"
            )
        self.train_ids = ids[: len(ids) - n_val]
        self.val_ids = ids[len(ids) - n_val :]
        need = self.batch * (self.seq_len + 1)
        if len(self.train_ids) < need:
            raise ValueError(
                f"the text is too short: {len(self.train_ids)} training characters, but {self.batch} "
                f"streams of one {self.seq_len}-character chunk need {need}"
            )
        self.streams = batchify(self.train_ids, self.batch)
        self.chunks_per_pass = num_chunks(self.streams.shape[0], self.seq_len)

        if model is None:
            hidden = _check_int("hidden", hidden)
            check_fits(training_bytes(len(vocab), hidden, self.seq_len, self.batch, dtype,
                                      optimizer if isinstance(optimizer, str) else "adam"),
                       f"hidden={hidden}: training")
            model = RNN(len(vocab), hidden, len(vocab), num_layers=num_layers, dropout=dropout, seed=seed,
                        dtype=dtype, nonlinearity=nonlinearity)
        elif model.input_size != len(vocab) or model.output_size != len(vocab):
            raise ValueError(
                f"the model maps {model.input_size} inputs to {model.output_size} outputs, "
                f"but the text has {len(vocab)} distinct characters"
            )
        model.vocab = vocab
        self.model = model
        self.vocab = vocab

        if isinstance(optimizer, _optim.Optimizer):
            if optimizer.model is not model:
                raise ValueError("the optimizer was built for a different model")
            self.optimizer = optimizer
        else:
            if lr is not None:
                lr = _check_real("lr", lr)
            elif isinstance(optimizer, str) and optimizer.lower() == "adam":
                lr = 2e-3
            self.optimizer = _optim.make(optimizer, model, lr)

        self.step = 0
        self.h = None  # hidden state carried into the next chunk, (L, B, H) or (B, H) for one layer
        self.last_chars = 0  # targets in the last step's chunk
        self.history = History(model=model, vocab=vocab, optimizer=self.optimizer)
        self._smooth = 0.0

    @classmethod
    def resume(cls, checkpoint, text, **kw):
        """Continue from a checkpoint (``rnn_ext.io.load_checkpoint``).

        Uses the checkpoint's model, optimizer (if saved; its hyperparameters
        win over ``optimizer=``/``lr=``), step count and carried hidden state.
        Pass the same text, ``seq_len``, ``batch`` and (for a model with
        dropout) ``seed`` as the original run to continue exactly where it
        stopped.
        """
        trainer = cls(checkpoint.model, text, **kw)
        if checkpoint.optimizer is not None:
            trainer.optimizer = trainer.history.optimizer = checkpoint.optimizer
        trainer.step = trainer.history.step = int(checkpoint.step or 0)
        h = checkpoint.hidden
        if h is not None:
            m = trainer.model
            Ld = m.num_layers * m.num_directions
            if Ld == 1 and h.ndim == 3:
                h = h[0]  # (1, B, H): the seed's (B, H) form, as the trainer carries it
            want = (trainer.batch, m.hidden_size) if Ld == 1 else (Ld, trainer.batch, m.hidden_size)
            if h.shape != want:
                raise ValueError(
                    f"the checkpoint's hidden state has shape {h.shape}, "
                    f"expected {want} for batch={trainer.batch}"
                )
            trainer.h = h
        return trainer

    def _chunk(self, index):
        i = index * self.seq_len
        j = min(i + self.seq_len, self.streams.shape[0] - 1)
        return self.streams[i:j], self.streams[i + 1 : j + 1]

    def train_step(self):
        """One truncated-BPTT step; returns the chunk's loss in bits per character.

        Raises FloatingPointError, changing nothing, when the loss or a
        gradient is NaN or infinite.
        """
        with deferred():
            return self._commit_step(self._prepare_step())

    def _prepare_step(self):
        """The gradient pass of the next step: (loss, gradients, final state, characters).

        Changes no state that a checkpoint holds (a new pass over the text
        drops the carried state, which the step would drop anyway), so a
        step that diverges leaves the trainer as it was.
        """
        index = self.step % self.chunks_per_pass
        if index == 0:
            self.h = None  # a new pass over the text starts from a zero state
        loss, g, h_last, chars = self._loss_and_grad(index)
        at = f"training diverged at step {self.step + 1}"
        if not math.isfinite(loss):
            raise FloatingPointError(f"{at} (loss {loss}); try a lower learning rate or clipping")
        bad = _nonfinite(g)
        if bad is not None:
            raise FloatingPointError(f"{at}: the gradient of {bad} holds NaN or infinity (loss {loss:.6g}); "
                                     "try a lower learning rate or clipping")
        return loss, g, h_last, chars

    def _commit_step(self, prepared):
        """Apply a prepared step: clip, update, advance.  Call with signals deferred."""
        loss, g, h_last, chars = prepared
        if self.clip_norm is None:
            # clip_grad_value then step, in one pass over the gradient buffer
            self.optimizer.step(g, clip_value=self.clip)
        else:
            if self.clip is not None:
                clip_grad_value(g, self.clip)
            clip_grad_norm(g, self.clip_norm)
            self.optimizer.step(g)
        bad = _nonfinite(self.model.parameters())
        if bad is not None:  # finite gradients, but the update overflowed
            raise FloatingPointError(
                f"training diverged at step {self.step + 1}: the update made {bad} overflow to infinity; "
                "try a lower learning rate or clipping (the model now holds non-finite values, "
                "which save refuses)")
        self.h = h_last
        self.step += 1
        self.last_chars = chars
        per_char = loss / chars if self.reduction == "sum" else loss
        return per_char / _LN2

    def _loss_and_grad(self, index):
        """Chunk ``index`` from ``self.h``: (loss, gradients, final state, characters).

        The one piece a trainer that computes gradients elsewhere replaces.
        """
        x, y = self._chunk(index)
        m = self.model
        loss, g = m.loss_and_grad(_time_major(m, x), _time_major(m, y), h0=self.h, reduction=self.reduction,
                                  **self._train_kwargs())
        return loss, g, _carried(m, g), x.size

    def _train_kwargs(self):
        """``train=True`` and this step's dropout seed when the model drops out; else nothing."""
        if not self.model.dropout or self.model.num_layers == 1:
            return {}
        return {"train": True, "seed": step_seed(self.seed, self.step)}

    def evaluate(self, split="val"):
        """Loss in bits per character on ``"val"`` (one stream) or ``"train"`` (``batch`` streams)."""
        if split == "val":
            if len(self.val_ids) < 2:
                return None
            return evaluate(self.model, self.val_ids, streams=1)
        if split == "train":
            return evaluate(self.model, self.train_ids, streams=self.batch)
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")

    def run(self, steps, *, callback=None, eval_every=200, final_eval=True):
        """Train for ``steps`` more steps.

        Parameters
        ----------
        steps : int >= 0
        callback : callable(StepInfo) -> bool or None, optional
            Called after every step; returning True stops training.
        eval_every : int or None
            Validate every this many steps (None or 0: only at the end).
        final_eval : bool
            At the end, record the validation loss and the loss over the whole
            training part (``history.train_loss``).

        Returns
        -------
        History
        """
        steps = _check_int("steps", steps, low=0)
        if eval_every is not None:
            eval_every = _check_int("eval_every", eval_every, low=0) or None
        hist = self.history
        decay = 0.98
        for _ in range(steps):
            with deferred():  # the step and its record in the history, together
                t0 = time.perf_counter()
                loss = self._commit_step(self._prepare_step())
                hist.seconds += time.perf_counter() - t0
                hist.chars += self.last_chars
                hist.step = self.step
                hist.loss.append(loss)
                n = len(hist.loss)
                self._smooth = decay * self._smooth + (1 - decay) * loss
                smooth = self._smooth / (1 - decay**n)
                hist.smooth_loss.append(smooth)
            val = None
            if eval_every and self.step % eval_every == 0:
                val = self.evaluate("val")
                if val is not None:
                    with deferred():
                        hist.val_steps.append(self.step)
                        hist.val_loss.append(val)
            if callback is not None:
                info = StepInfo(self.step, loss, smooth, hist.chars_per_sec, val, self)
                if callback(info):
                    break
        if final_eval:
            if not hist.val_steps or hist.val_steps[-1] != self.step:
                val = self.evaluate("val")
                if val is not None:
                    with deferred():
                        hist.val_steps.append(self.step)
                        hist.val_loss.append(val)
            hist.train_loss = self.evaluate("train")
        return hist

    def save(self, path):
        """Write a checkpoint: the model, its vocab, the optimizer state, the step and the carried state.

        The write is atomic (:func:`rnn_ext.io.save`), and since a step never
        stops half-way the checkpoint is always one consistent state.
        """
        save(self.model, path, optimizer=self.optimizer, step=self.step, hidden=self.h)


def train(model, text, *, hidden=128, seq_len=25, batch=32, steps=2000, optimizer="adam", lr=None,
          clip=5.0, clip_norm=None, seed=0, val_fraction=0.1, callback=None, eval_every=200,
          final_eval=True, dtype=np.float32, nonlinearity="tanh", reduction="mean", num_layers=1,
          dropout=0.0):
    """Train a character-level RNN on ``text`` with truncated BPTT.

    ``train(None, text)`` builds a new model; ``train(model, text)`` trains
    ``model`` further.  The trained model gets ``model.vocab``.  See
    :class:`Trainer` for the parameters; ``steps``, ``callback``,
    ``eval_every`` and ``final_eval`` are passed to :meth:`Trainer.run`.

    Returns
    -------
    History
        Per-step losses, validation losses and throughput; ``.model`` is the
        trained model and ``.optimizer`` its optimizer (for checkpoints).
    """
    trainer = Trainer(model, text, hidden=hidden, seq_len=seq_len, batch=batch, optimizer=optimizer, lr=lr,
                      clip=clip, clip_norm=clip_norm, val_fraction=val_fraction, seed=seed, dtype=dtype,
                      nonlinearity=nonlinearity, reduction=reduction, num_layers=num_layers, dropout=dropout)
    return trainer.run(steps, callback=callback, eval_every=eval_every, final_eval=final_eval)

"""First-order optimizers that update an RNN's parameters in place.

Each optimizer follows PyTorch's update rule for the same name and defaults
(``torch.optim.SGD``, ``Adagrad`` and ``Adam``, single-tensor implementation,
no weight decay), so a model trained here and one trained with ``torch.optim``
from the same start agree to rounding.  State lives per parameter name
(``"U"``, ``"W"``, ``"V"``, ``"b"``, ``"c"``) and is exported by
:meth:`Optimizer.state_dict` as plain numbers and arrays, so it can be stored
in an ``.npz`` file without pickling.

Examples
--------
>>> opt = rnn_ext.optim.Adam(model, lr=2e-3)
>>> loss, g = model.loss_and_grad(x, y)
>>> rnn_ext.clip_grad_value(g, 5.0)
>>> opt.step(g)                     # model.U, model.W, ... change in place
"""

import math
import numbers

import numpy as np

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "from_state_dict"]


def _grad_arrays(grads):
    """Return ``{name: gradient array}`` for a Gradients object or a dict.

    For a Gradients object the arrays are its attributes (``grads.U`` ...),
    so in-place edits (clipping) are seen by whoever reads the object next.
    Entries that are ``None`` (no gradient for that parameter) are dropped.
    """
    if isinstance(grads, dict):
        items = grads.items()
    elif hasattr(grads, "parameters") and callable(grads.parameters):
        items = ((name, getattr(grads, name, g)) for name, g in grads.parameters().items())
    else:
        raise TypeError(
            "expected a Gradients object (from loss_and_grad) or a dict of name -> array, "
            f"got {type(grads).__name__}"
        )
    return {name: g for name, g in items if g is not None}


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_unit_interval(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


class Optimizer:
    """Base class: parameter lookup, gradient checks and state (de)serialization.

    Subclasses name their hyperparameters in ``_hyper`` and their per-parameter
    state arrays in ``_slots``, and implement ``_update(name, p, g, state)``.
    """

    _hyper: tuple[str, ...] = ()
    _slots: tuple[str, ...] = ()

    def __init__(self, model):
        if not (hasattr(model, "parameters") and callable(model.parameters)):
            raise TypeError(f"expected a model with .parameters(), got {type(model).__name__}")
        self.model = model
        self.state = {}  # name -> {"step": int, <slot>: ndarray}

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        return f"{type(self).__name__}({args})"

    def step(self, grads):
        """Apply one update to the model's parameters, in place.

        Parameters
        ----------
        grads : Gradients or dict of str -> ndarray
            Gradients shaped like the parameters (``loss_and_grad``'s second
            result, or e.g. ``{"U": dU, "W": dW, ...}``).  A parameter whose
            gradient is missing or None is skipped, as PyTorch skips
            parameters whose ``.grad`` is None.
        """
        params = self.model.parameters()
        garrs = _grad_arrays(grads)
        unknown = sorted(set(garrs) - set(params))
        if unknown:
            raise ValueError(
                f"gradients for unknown parameters {unknown}; the model has {sorted(params)}"
            )
        checked = {}
        for name, g in garrs.items():
            p = params[name]
            g = np.asarray(g)
            if g.shape != p.shape:
                raise ValueError(
                    f"gradient {name!r} has shape {g.shape}, expected {p.shape} like the parameter"
                )
            if g.dtype != p.dtype:
                if not np.issubdtype(g.dtype, np.floating):
                    raise TypeError(f"gradient {name!r} has dtype {g.dtype}, expected {p.dtype}")
                g = g.astype(p.dtype)
            checked[name] = g
        for name, g in checked.items():
            p = params[name]
            state = self.state.get(name)
            if state is None:
                state = self.state[name] = self._init_state(p)
            state["step"] += 1
            self._update(name, p, g, state)

    def _init_state(self, p):
        state = {"step": 0}
        for slot in self._slots:
            state[slot] = np.zeros_like(p)
        return state

    def _update(self, name, p, g, state):
        raise NotImplementedError

    # -- state --------------------------------------------------------------

    def state_dict(self):
        """Return the optimizer's state as a flat dict of plain values.

        Keys: ``"type"`` (class name), each hyperparameter, and for every
        parameter that has been updated ``"<name>.step"`` (int) and
        ``"<name>.<slot>"`` (ndarray copy).  Values are str, int, float or
        ndarray, so ``np.savez(path, **d)`` stores them without pickling.
        """
        d = {"type": type(self).__name__}
        for k in self._hyper:
            v = getattr(self, k)
            d[k] = np.array(v, dtype=np.float64) if isinstance(v, tuple) else v
        for name, state in self.state.items():
            d[f"{name}.step"] = int(state["step"])
            for slot in self._slots:
                d[f"{name}.{slot}"] = state[slot].copy()
        return d

    def load_state_dict(self, d):
        """Restore hyperparameters and state from :meth:`state_dict`'s output.

        Values may be numpy scalars or 0-d arrays (as read back from an
        ``.npz``).  Raises ValueError naming the first problem (wrong type,
        unknown parameter, wrong shape, missing entry).
        """
        if not isinstance(d, dict):
            raise TypeError(f"expected a dict, got {type(d).__name__}")
        kind = _plain(d.get("type"))
        if kind != type(self).__name__:
            raise ValueError(f"optimizer state is for {kind!r}, not {type(self).__name__!r}")
        hyper = {}
        for k in self._hyper:
            if k not in d:
                raise ValueError(f"optimizer state lacks hyperparameter {k!r}")
            v = np.asarray(d[k])
            if v.dtype.kind not in "fiu" or not np.all(np.isfinite(v)):
                raise ValueError(f"optimizer hyperparameter {k!r} is not a finite number: {d[k]!r}")
            hyper[k] = tuple(float(x) for x in v.ravel()) if v.ndim else float(v)
        params = self.model.parameters()
        state = {}
        for key, value in d.items():
            if key == "type" or key in self._hyper:
                continue
            name, _, field = key.partition(".")
            if name not in params:
                raise ValueError(f"optimizer state entry {key!r} names no parameter of the model")
            if field not in ("step", *self._slots):
                raise ValueError(f"unknown optimizer state entry {key!r}")
            state.setdefault(name, {})
            p = params[name]
            v = np.asarray(value)
            if field == "step":
                if v.ndim != 0 or v.dtype.kind not in "iu" or int(v) < 0:
                    raise ValueError(f"optimizer state {key!r} must be an int >= 0, got {value!r}")
                state[name]["step"] = int(v)
            else:
                if v.shape != p.shape:
                    raise ValueError(f"optimizer state {key!r} has shape {v.shape}, expected {p.shape}")
                if v.dtype != p.dtype:
                    raise ValueError(f"optimizer state {key!r} has dtype {v.dtype}, expected {p.dtype}")
                if not np.all(np.isfinite(v)):
                    raise ValueError(f"optimizer state {key!r} holds non-finite values")
                state[name][field] = np.array(v, dtype=p.dtype, order="C", copy=True)
        for name, s in state.items():
            missing = [f for f in ("step", *self._slots) if f not in s]
            if missing:
                raise ValueError(f"optimizer state for {name!r} lacks {missing}")
        self._set_hyper(**hyper)
        self.state = state

    def _set_hyper(self, **kw):
        raise NotImplementedError


def _plain(v):
    """A 0-d array or numpy scalar as the matching Python value."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    elif isinstance(v, np.generic):
        v = v.item()
    return v


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum.

    As ``torch.optim.SGD`` (dampening 0, no Nesterov)::

        buf = g                    (first step)
        buf = momentum * buf + g   (later steps)
        p  -= lr * buf             (p -= lr * g when momentum == 0)

    Parameters
    ----------
    model : RNN
    lr : float > 0
    momentum : float in [0, 1)
    """

    _hyper = ("lr", "momentum")
    _slots = ("momentum_buffer",)

    def __init__(self, model, lr, momentum=0.0):
        super().__init__(model)
        self._set_hyper(lr=lr, momentum=momentum)

    def _set_hyper(self, lr, momentum):
        self.lr = _check_positive("lr", lr)
        self.momentum = _check_unit_interval("momentum", momentum)

    def _update(self, name, p, g, state):
        if self.momentum == 0.0:
            # p.add_(g, alpha=-lr)
            p += -self.lr * g
            return
        buf = state["momentum_buffer"]
        if state["step"] == 1:
            buf[...] = g
        else:
            # buf.mul_(momentum).add_(g)
            buf *= self.momentum
            buf += g
        p += -self.lr * buf


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
    model : RNN
    lr : float > 0, default 0.1
    eps : float > 0, default 1e-8
    """

    _hyper = ("lr", "eps")
    _slots = ("sum",)

    def __init__(self, model, lr=0.1, eps=1e-8):
        super().__init__(model)
        self._set_hyper(lr=lr, eps=eps)

    def _set_hyper(self, lr, eps):
        self.lr = _check_positive("lr", lr)
        self.eps = _check_positive("eps", eps)

    def _update(self, name, p, g, state):
        s = state["sum"]
        # state_sum.addcmul_(g, g, value=1)
        s += g * g
        # std = state_sum.sqrt().add_(eps);  p.addcdiv_(g, std, value=-lr)
        std = np.sqrt(s)
        std += self.eps
        p += (-self.lr * g) / std


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (no weight decay, no AMSGrad)::

        t += 1
        m += (1 - beta1) * (g - m)                 # m.lerp_(g, 1 - beta1)
        v  = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    model : RNN
    lr : float > 0, default 1e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float > 0, default 1e-8
    """

    _hyper = ("lr", "betas", "eps")
    _slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(model)
        self._set_hyper(lr=lr, betas=betas, eps=eps)

    def _set_hyper(self, lr, betas, eps):
        self.lr = _check_positive("lr", lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair of numbers, got {betas!r}") from None
        self.betas = (_check_unit_interval("betas[0]", beta1), _check_unit_interval("betas[1]", beta2))
        self.eps = _check_positive("eps", eps)

    def _update(self, name, p, g, state):
        beta1, beta2 = self.betas
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        # exp_avg.lerp_(g, 1 - beta1)
        m += (1 - beta1) * (g - m)
        # exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        v *= beta2
        v += ((1 - beta2) * g) * g
        step_size = self.lr / (1 - beta1**t)
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        # denom = (v.sqrt() / bias_correction2_sqrt).add_(eps);  p.addcdiv_(m, denom, value=-step_size)
        denom = np.sqrt(v)
        denom /= bias_correction2_sqrt
        denom += self.eps
        p += (-step_size * m) / denom


_OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam}


def from_state_dict(model, d):
    """Build the optimizer described by ``d`` (a :meth:`Optimizer.state_dict`) for ``model``."""
    kind = _plain(d.get("type")) if isinstance(d, dict) else None
    cls = {c.__name__: c for c in _OPTIMIZERS.values()}.get(kind)
    if cls is None:
        raise ValueError(f"unknown optimizer type {kind!r}; expected one of {sorted(c.__name__ for c in _OPTIMIZERS.values())}")
    opt = cls.__new__(cls)
    Optimizer.__init__(opt, model)
    opt.load_state_dict(d)
    return opt


def make(name, model, lr=None):
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

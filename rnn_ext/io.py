"""Saving and loading models and training checkpoints as ``.npz`` files.

A file is a plain NumPy ``.npz`` archive, read back with
``allow_pickle=False``; every entry is a numeric or string array:

=====================  ======================================================
``format``             the string ``"rnn_ext"``
``format_version``     int, currently 2 (files of version 1 load too)
``config/<name>``      input_size, hidden_size, output_size, num_layers (int),
                       bias, batch_first, bidirectional (bool), dropout
                       (float), nonlinearity, dtype (str)
``param/<name>``       the model's parameters by ``model.parameters()``'s
                       names, in the model's dtype: U, W, V (and b, c with a
                       bias) for one layer and one direction; U_l0, W_l0,
                       b_l0, ..., U_l1_reverse, ..., V, c otherwise
``vocab``              optional: the characters' code points, int32 (K,)
``optimizer/<key>``    optional: ``Optimizer.state_dict()`` entries
``step``               optional: optimizer steps done, int
``hidden``             optional: hidden state carried by truncated BPTT,
                       (L*dirs, B, H), or (B, H) for one layer and direction
=====================  ======================================================

Version 2 added ``config/num_layers``, ``config/bidirectional`` and
``config/dropout`` (and the layer's parameter names they call for).  A
version-1 file (written before stacked and bidirectional models) has none
of them and is read as one layer, one direction, no dropout; versions of
rnn_ext that read only version 1 refuse a version-2 file by its version
rather than by a missing entry.

Any other entry is refused: a file holding one was not written by this
version of rnn_ext, and ignoring it could drop something the writer meant.
``save`` refuses what ``load`` would refuse (non-finite parameters or
optimizer state, a hidden state of the wrong dtype, ...), so every file it
writes loads.

The write is atomic: a temporary file in the same directory is written,
flushed to disk and renamed over ``path``, so a crash never leaves a
half-written model behind.  SIGINT and SIGTERM arriving during the write act
once it is done; any exception removes the temporary file.

Examples
--------
>>> rnn_ext.io.save(model, "model.npz", optimizer=opt, step=2000)
>>> model = rnn_ext.load("model.npz")              # model.vocab if it was trained on text
>>> ck = rnn_ext.io.load_checkpoint("model.npz")   # ck.model, ck.optimizer, ck.step, ck.hidden
"""

import errno
import os
import tempfile
from collections import namedtuple

import numpy as np

from . import optim
from ._layout import head_layout, recurrent_layout
from ._signals import deferred
from .model import RNN
from .text import Vocab

__all__ = ["save", "load", "load_checkpoint", "check_writable", "Checkpoint", "FORMAT_VERSION"]

FORMAT_VERSION = 2
_READS = (1, 2)  # format versions this rnn_ext reads
_MAGIC = "rnn_ext"
_DTYPES = ("float32", "float64")
_NONLINEARITIES = ("tanh", "relu")
_CONFIG = ("input_size", "hidden_size", "output_size", "num_layers", "bidirectional", "dropout",
           "bias", "batch_first", "nonlinearity", "dtype")
_KNOWN = {"format", "format_version", "vocab", "step", "hidden", *(f"config/{k}" for k in _CONFIG)}

Checkpoint = namedtuple("Checkpoint", ["model", "optimizer", "step", "hidden"])
Checkpoint.__doc__ = """A loaded file.

model : RNN (with ``.vocab`` when one was saved)
optimizer : rnn_ext.optim.Optimizer bound to ``model``, or None
step : int or None
hidden : ndarray of shape (L*dirs, B, H) (or (B, H) as saved for one layer and direction), or None
"""


def save(model, path, *, optimizer=None, step=None, hidden=None):
    """Write ``model`` (and optionally training state) to ``path`` atomically.

    Everything is checked as :func:`load_checkpoint` checks it before a byte
    is written, so a file ``save`` writes always loads.

    Parameters
    ----------
    model : RNN
        Its parameters, configuration and ``model.vocab`` (if set).
    path : str or os.PathLike
        Used as given (no ``.npz`` suffix is added).
    optimizer : rnn_ext.optim.Optimizer, optional
        Its ``state_dict()`` is stored.
    step : int >= 0, optional
        Number of optimizer steps taken.
    hidden : ndarray of shape (L*dirs, B, H), optional
        Hidden state carried between truncated-BPTT chunks, every layer's
        (``h_n``); (B, H) is also accepted for one layer and one direction.

    Raises
    ------
    ValueError
        For anything :func:`load_checkpoint` would refuse: a parameter, an
        optimizer state or the hidden state holding NaN or infinity (named),
        a hidden state of the wrong shape or dtype, a vocabulary whose size
        is not the model's input and output size.  Nothing is written.
    OSError
        The file cannot be written; the message names ``path``.  The previous
        file at ``path``, if any, is left as it was.
    """
    path = os.fspath(path)
    arrays = {
        "format": np.array(_MAGIC),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "config/input_size": np.array(model.input_size, dtype=np.int64),
        "config/hidden_size": np.array(model.hidden_size, dtype=np.int64),
        "config/output_size": np.array(model.output_size, dtype=np.int64),
        "config/num_layers": np.array(model.num_layers, dtype=np.int64),
        "config/bidirectional": np.array(bool(model.bidirectional)),
        "config/dropout": np.array(model.dropout, dtype=np.float64),
        "config/bias": np.array(bool(model.bias)),
        "config/batch_first": np.array(bool(model.batch_first)),
        "config/nonlinearity": np.array(str(model.nonlinearity)),
        "config/dtype": np.array(np.dtype(model.dtype).name),
    }
    for name, p in model.parameters().items():
        arrays[f"param/{name}"] = np.asarray(p)
    vocab = getattr(model, "vocab", None)
    if vocab is not None:
        arrays["vocab"] = vocab.codepoints
    if optimizer is not None:
        for key, value in optimizer.state_dict().items():
            arr = np.asarray(value)
            if arr.dtype.kind not in "biufU":
                raise TypeError(f"optimizer state {key!r} is not numeric or text: {type(value).__name__}")
            arrays[f"optimizer/{key}"] = arr
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        arrays["step"] = np.array(step, dtype=np.int64)
    if hidden is not None:
        arrays["hidden"] = np.asarray(hidden)
    entries = _Entries(arrays, f"cannot save {path}: ")
    parsed = _parse(entries)
    if parsed.optimizer_state is not None:
        _optimizer(model, parsed.optimizer_state, entries)  # built and dropped: what load will do
    _atomic_savez(path, arrays)


def _naming(exc, path):
    """``exc`` (an OSError about a temporary file) re-made to name the user's ``path``."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, path)  # OSError(errno, ...) picks the subclass


def check_writable(path):
    """Raise OSError naming ``path`` unless :func:`save` could write it now.

    Checks what ``save`` needs, without touching ``path`` itself: ``path``
    is not a directory, and a file can be created in its directory (one is
    created and removed).  Call it before long work whose result goes to
    ``path``.

    Raises
    ------
    IsADirectoryError, FileNotFoundError, PermissionError, OSError
        With ``filename`` set to ``path``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"no such directory {directory!r}", path)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _naming(exc, path) from None
    os.close(fd)
    os.unlink(tmp)


def _hidden_fits(shape, Ld, H):
    """(Ld, B, H), or (B, H) when there is one layer and one direction."""
    return ((len(shape) == 3 and shape[0] == Ld and shape[2] == H)
            or (Ld == 1 and len(shape) == 2 and shape[1] == H))


def _hidden_shape(Ld, H):
    return f"({Ld}, B, {H})" + (f" or (B, {H})" if Ld == 1 else "")


def _param_shapes(D, H, K, L, dirs, bias):
    """{name: shape} of the parameters of a model of this configuration,
    named as its ``parameters()`` names them."""
    if L == 1 and dirs == 1:
        shapes = {"U": (H, D), "W": (H, H), "V": (K, H)}
        if bias:
            shapes.update(b=(H,), c=(K,))
        return shapes
    return dict((recurrent_layout(D, H, L, dirs, bias) + head_layout(dirs * H, K, bias)).entries())


def _atomic_savez(path, arrays):
    directory = os.path.dirname(os.path.abspath(path))
    # SIGINT/SIGTERM act after the block: the file is then complete and renamed,
    # and no temporary file is left behind
    with deferred():
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                       dir=directory)
        except OSError as exc:
            raise _naming(exc, path) from None
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
            os.replace(tmp, path)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise _naming(exc, path) from None
            raise
        try:  # make the rename itself durable; not every platform can fsync a directory
            dfd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)


class _Entries:
    """Entries of an open NpzFile (or of the dict ``save`` is about to write),
    every decoding failure turned into ValueError; ``prefix`` opens each message."""

    def __init__(self, source, prefix):
        self.source = source
        self.prefix = prefix
        self.names = set(source.files) if hasattr(source, "files") else set(source)

    def error(self, msg):
        return ValueError(f"{self.prefix}{msg}")

    def get(self, key, required=True):
        if key not in self.names:
            if required:
                raise self.error(f"missing entry {key!r}; not an rnn_ext model file or a damaged one")
            return None
        try:
            a = self.source[key]
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise self.error(f"entry {key!r} holds pickled Python objects, which are refused") from None
            raise self.error(f"entry {key!r} is unreadable ({exc})") from None
        except Exception as exc:  # zip/zlib/npy-header errors of a damaged file
            raise self.error(f"entry {key!r} is unreadable ({type(exc).__name__}: {exc})") from None
        if not isinstance(a, np.ndarray):  # NumPy hands back a member without the .npy magic as bytes
            raise self.error(f"entry {key!r} is not a .npy array")
        return a

    def scalar(self, key, kind, required=True):
        a = self.get(key, required)
        if a is None:
            return None
        if a.ndim != 0 or a.dtype.kind not in kind:
            raise self.error(f"entry {key!r} must be a scalar of kind {kind!r}, got {a.dtype} of shape {a.shape}")
        return a.item()


def load_checkpoint(path):
    """Read a model file with everything it holds.

    Returns
    -------
    Checkpoint
        ``(model, optimizer, step, hidden)``; the last three are None when
        the file does not hold them.

    Raises
    ------
    OSError
        The file cannot be read (missing, a directory, no permission).
    ValueError
        The file is not an ``.npz`` archive, is damaged, holds pickled
        objects, lacks an entry or holds one this version does not know, has
        a wrong shape, dtype or non-finite value, or has an unknown format
        version; the message names the problem.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        if fh.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise ValueError(f"{path}: not an rnn_ext model file (not an .npz archive)")
        fh.seek(0)
        try:
            npz = np.load(fh, allow_pickle=False)
        except Exception as exc:  # zipfile's errors for a damaged archive
            raise ValueError(f"{path}: damaged .npz archive ({type(exc).__name__}: {exc})") from None
        with npz:
            e = _Entries(npz, f"{path}: ")
            parsed = _parse(e)
            return _build(parsed, e)


_Parsed = namedtuple("_Parsed", ["config", "params", "vocab", "step", "hidden", "optimizer_state"])


def _parse(e):
    """Every entry checked, nothing built but the vocabulary: the rules both
    ``load`` and ``save`` hold a file to."""
    fmt = e.get("format")
    if fmt.dtype.kind != "U" or fmt.ndim != 0 or fmt.item() != _MAGIC:
        raise e.error("not an rnn_ext model file (bad 'format' entry)")
    version = e.scalar("format_version", "iu")
    if version not in _READS:
        raise e.error(f"unknown format version {version}; this rnn_ext reads versions {_READS}")

    cfg = {}
    for key in ("input_size", "hidden_size", "output_size"):
        v = e.scalar(f"config/{key}", "iu")
        if v < 1:
            raise e.error(f"config/{key} must be >= 1, got {v}")
        cfg[key] = v
    for key in ("bias", "batch_first"):
        cfg[key] = bool(e.scalar(f"config/{key}", "b"))
    nonlin = e.scalar("config/nonlinearity", "U")
    if nonlin not in _NONLINEARITIES:
        raise e.error(f"config/nonlinearity must be one of {_NONLINEARITIES}, got {nonlin!r}")
    cfg["nonlinearity"] = nonlin
    dtype_name = e.scalar("config/dtype", "U")
    if dtype_name not in _DTYPES:
        raise e.error(f"config/dtype must be one of {_DTYPES}, got {dtype_name!r}")
    dtype = cfg["dtype"] = np.dtype(dtype_name)
    L, dirs, dropout = _layers_config(e, version)
    cfg.update(num_layers=L, bidirectional=dirs == 2, dropout=dropout)

    D, H, K = cfg["input_size"], cfg["hidden_size"], cfg["output_size"]
    shapes = _param_shapes(D, H, K, L, dirs, cfg["bias"])
    params = {}
    for name, shape in shapes.items():
        a = e.get(f"param/{name}")
        if a.shape != shape:
            raise e.error(f"param/{name} has shape {a.shape}, expected {shape}")
        if a.dtype != dtype:
            raise e.error(f"param/{name} has dtype {a.dtype}, expected {dtype} (config/dtype)")
        if not np.all(np.isfinite(a)):
            raise e.error(f"param/{name} holds non-finite values (NaN or infinity)")
        params[name] = a
    extra = sorted(n[len("param/"):] for n in e.names if n.startswith("param/") and n[len("param/"):] not in shapes)
    if extra:
        raise e.error(f"unexpected parameters {extra} for a model with bias={cfg['bias']}, "
                      f"num_layers={L}, bidirectional={dirs == 2}")
    unknown = sorted(n for n in e.names
                     if n not in _KNOWN and not n.startswith(("param/", "optimizer/")))
    if unknown:
        raise e.error(f"unexpected entries {unknown}; this rnn_ext reads format version "
                      f"{FORMAT_VERSION}, which has none of that name")

    vocab = None
    cps = e.get("vocab", required=False)
    if cps is not None:
        try:
            vocab = Vocab.from_codepoints(cps)
        except ValueError as exc:
            raise e.error(f"bad vocab entry: {exc}") from None
        if len(vocab) != D or len(vocab) != K:
            raise e.error(f"the vocab has {len(vocab)} characters but the model maps {D} inputs to {K} outputs")

    step = e.scalar("step", "iu", required=False)
    if step is not None and step < 0:
        raise e.error(f"step must be >= 0, got {step}")

    hidden = e.get("hidden", required=False)
    if hidden is not None:
        if not _hidden_fits(hidden.shape, L * dirs, H) or hidden.dtype != dtype:
            raise e.error(f"hidden must be a {dtype} array of shape {_hidden_shape(L * dirs, H)}, "
                          f"got {hidden.dtype} {hidden.shape}")
        if not np.all(np.isfinite(hidden)):
            raise e.error("hidden holds non-finite values (NaN or infinity)")

    opt_keys = sorted(n for n in e.names if n.startswith("optimizer/"))
    state = None
    if opt_keys:
        state = {}
        for n in opt_keys:
            a = e.get(n)
            state[n[len("optimizer/"):]] = a.item() if a.ndim == 0 else a
    return _Parsed(cfg, params, vocab, step, hidden, state)


def _optimizer(model, state, e):
    try:
        return optim.from_state_dict(model, state)
    except (ValueError, TypeError) as exc:
        raise e.error(f"bad optimizer state: {exc}") from None


def _build(parsed, e):
    cfg = parsed.config
    model = RNN(cfg["input_size"], cfg["hidden_size"], cfg["output_size"],
                num_layers=cfg["num_layers"], bidirectional=cfg["bidirectional"],
                dropout=cfg["dropout"], bias=cfg["bias"], nonlinearity=cfg["nonlinearity"],
                dtype=cfg["dtype"], batch_first=cfg["batch_first"])
    model.set_params(parsed.params)
    model.vocab = parsed.vocab
    optimizer = None if parsed.optimizer_state is None else _optimizer(model, parsed.optimizer_state, e)
    return Checkpoint(model, optimizer, parsed.step, parsed.hidden)


def _layers_config(e, version):
    """(num_layers, num_directions, dropout); a version-1 file has one layer and direction."""
    keys = ("config/num_layers", "config/bidirectional", "config/dropout")
    if version == 1:
        present = [k for k in keys if k in e.names]
        if present:
            raise e.error(f"entries {present} are not part of format version 1")
        return 1, 1, 0.0
    L = e.scalar("config/num_layers", "iu")
    if L < 1:
        raise e.error(f"config/num_layers must be >= 1, got {L}")
    dirs = 2 if e.scalar("config/bidirectional", "b") else 1
    # every layer and direction has at least U and W: a count the file's
    # entries cannot back is refused before any per-layer work
    n_params = sum(1 for n in e.names if n.startswith("param/"))
    if 2 * L * dirs + 1 > n_params:
        raise e.error(f"config/num_layers={L} (bidirectional={dirs == 2}) needs at least "
                      f"{2 * L * dirs + 1} parameters, but the file holds {n_params}")
    dropout = e.scalar("config/dropout", "f")
    if not 0.0 <= dropout < 1.0:
        raise e.error(f"config/dropout must be in [0, 1), got {dropout}")
    return L, dirs, float(dropout)


def load(path):
    """Read a model saved by :func:`save` (``model.save``).

    Returns
    -------
    RNN
        With ``.vocab`` set when the file holds one.  Use
        :func:`load_checkpoint` for the optimizer state and step count too.

    Raises
    ------
    OSError, ValueError
        As :func:`load_checkpoint`.
    """
    return load_checkpoint(path).model

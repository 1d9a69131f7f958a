"""Character-level text: a vocabulary, batching for truncated BPTT, and sampling.

Examples
--------
>>> vocab = Vocab.from_text(text)
>>> ids = vocab.encode(text)                      # (N,) int64
>>> streams = batchify(ids, 32)                   # (N // 32, 32), time-major
>>> for x, y in iter_chunks(streams, 25):         # x, y are (T, 32); y is x shifted by one
...     loss, g = model.loss_and_grad(x, y, h0=h)
>>> print(sample(model, vocab, prime="The ", length=200, temperature=0.8, seed=1))
"""

import math
import numbers

import numpy as np

from . import _sample
from ._memory import check_fits

__all__ = ["Vocab", "batchify", "iter_chunks", "num_chunks", "sample", "default_corpus"]


def default_corpus():
    """The text of CPython's documentation topics (``pydoc_data.topics``), about 460k characters.

    Every CPython ships it, so training needs no download.  Raises
    ImportError if this Python was built without it.
    """
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def _codepoints(s):
    """The code points of ``s`` as a uint32 array (lone surrogates allowed)."""
    return np.frombuffer(s.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class Vocab:
    """A character vocabulary: character <-> integer id.

    Parameters
    ----------
    chars : str
        The characters, each once; ``chars[i]`` has id ``i``.
        :meth:`from_text` sorts them by code point.
    """

    def __init__(self, chars):
        if not isinstance(chars, str):
            raise TypeError(f"chars must be a str, got {type(chars).__name__}")
        if not chars:
            raise ValueError("a vocabulary needs at least one character")
        cps = _codepoints(chars)
        order = np.argsort(cps, kind="stable")
        sorted_cps = cps[order]
        dup = np.flatnonzero(sorted_cps[1:] == sorted_cps[:-1])
        if dup.size:
            raise ValueError(f"character {chr(sorted_cps[dup[0]])!r} appears twice in the vocabulary")
        self._chars = chars
        self._cps = np.ascontiguousarray(cps)
        self._sorted_cps = sorted_cps
        self._sorted_ids = order.astype(np.int64)

    @classmethod
    def from_text(cls, text):
        """The sorted unique characters of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("cannot build a vocabulary from empty text")
        cps = np.unique(_codepoints(text))
        return cls(cps.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass"))

    @classmethod
    def from_codepoints(cls, codepoints):
        """Rebuild a vocabulary from :attr:`codepoints` (as stored in a model file)."""
        cps = np.asarray(codepoints)
        if cps.ndim != 1 or cps.dtype.kind not in "iu":
            raise ValueError(f"code points must be a 1-d integer array, got {cps.dtype} of shape {cps.shape}")
        if cps.size and (cps.min() < 0 or cps.max() > 0x10FFFF):
            raise ValueError("code points must be in [0, 0x10FFFF]")
        return cls(cps.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass"))

    @property
    def chars(self):
        """The characters in id order, as one string."""
        return self._chars

    @property
    def codepoints(self):
        """The characters' code points in id order, an int32 array of shape (len(vocab),)."""
        return self._cps.astype(np.int32)

    def __len__(self):
        return len(self._chars)

    def __contains__(self, ch):
        return isinstance(ch, str) and len(ch) == 1 and ch in self._chars

    def __eq__(self, other):
        return isinstance(other, Vocab) and self._chars == other._chars

    def __hash__(self):
        return hash(self._chars)

    def __repr__(self):
        shown = self._chars if len(self._chars) <= 40 else self._chars[:37] + "..."
        return f"Vocab({len(self)} chars: {shown!r})"

    def encode(self, text):
        """Map a string to ids.

        Returns
        -------
        ndarray of shape (len(text),), int64

        Raises
        ------
        ValueError
            For a character not in the vocabulary (named, with its position).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        cps = _codepoints(text)
        pos = np.searchsorted(self._sorted_cps, cps)
        np.minimum(pos, len(self._sorted_cps) - 1, out=pos)
        bad = np.flatnonzero(self._sorted_cps[pos] != cps)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"character {text[i]!r} (U+{ord(text[i]):04X}) at position {i} is not in the vocabulary"
                + (f" ({bad.size} unknown characters in all)" if bad.size > 1 else "")
            )
        return self._sorted_ids[pos]

    def decode(self, ids):
        """Map ids (any integer array-like, or one int) back to a string."""
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
            raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
        arr = arr.ravel().astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= len(self)):
            bad = arr[(arr < 0) | (arr >= len(self))][0]
            raise ValueError(f"id {bad} is out of range for a vocabulary of {len(self)} characters")
        return self._cps[arr].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


def batchify(ids, batch_size):
    """Cut one id stream into ``batch_size`` parallel streams, time-major.

    Stream ``b`` is the contiguous piece ``ids[b*N : (b+1)*N]`` with
    ``N = len(ids) // batch_size``; the last ``len(ids) % batch_size`` ids are
    dropped.  Reading the result down a column follows the text.

    Parameters
    ----------
    ids : array-like of shape (L,), integers
    batch_size : int >= 1

    Returns
    -------
    ndarray of shape (N, batch_size), int64, C-contiguous
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"ids must be a 1-d integer array, got {ids.dtype} of shape {ids.shape}")
    b = _check_count("batch_size", batch_size)
    n = ids.size // b
    if n == 0:
        raise ValueError(f"{ids.size} ids cannot fill {b} streams")
    return np.ascontiguousarray(ids[: n * b].reshape(b, n).T, dtype=np.int64)


def num_chunks(n_steps, seq_len):
    """How many chunks :func:`iter_chunks` yields for streams of ``n_steps`` rows."""
    seq_len = _check_count("seq_len", seq_len)
    return max(0, math.ceil((n_steps - 1) / seq_len))


def iter_chunks(streams, seq_len, start=0):
    """Yield ``(x, y)`` chunks of ``seq_len`` steps along the streams.

    ``x = streams[i : i+T]`` and ``y = streams[i+1 : i+1+T]`` for
    ``i = 0, T, 2T, ...``: the target at each step is the next character.
    The last chunk is shorter when ``N - 1`` is not a multiple of ``T``.
    Consecutive chunks continue each other, so a caller may carry the final
    hidden state of one chunk into the next (truncated BPTT).

    Parameters
    ----------
    streams : ndarray of shape (N, B), from :func:`batchify`
    seq_len : int >= 1
    start : int, optional
        Index of the first chunk to yield (to resume part-way through).

    Yields
    ------
    x, y : ndarray of shape (T, B), int64, C-contiguous  (T <= seq_len)
    """
    streams = np.asarray(streams)
    if streams.ndim != 2:
        raise ValueError(f"streams must be 2-d (N, B), got shape {streams.shape}")
    t = _check_count("seq_len", seq_len)
    n = streams.shape[0]
    for i in range(start * t, n - 1, t):
        j = min(i + t, n - 1)
        yield np.ascontiguousarray(streams[i:j]), np.ascontiguousarray(streams[i + 1 : j + 1])


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _batch1(ids, batch_first):
    """Unbatched ids (T,) as a batch of one, in the model's layout."""
    return ids[None, :] if batch_first else ids[:, None]


# characters per call of the compiled loop (src/_sample.pyx): a fraction of a
# second each at H = 128
_CHUNK = 1 << 16


def _sample_bytes(length):
    """Peak memory of a sample of ``length`` characters: the ids (int64) and their decoding."""
    return 32 * length


def sample(model, vocab=None, prime="", length=200, temperature=1.0, top_k=None, seed=None):
    """Generate text one character at a time.

    The prime is run through the model once (one forward pass); then each
    new character is drawn from ``softmax(z / temperature)`` and fed back
    with the carried hidden state.  Equivalent to::

        state = forward(prime).h_n;  h = state[-1]       # every layer's; the top one's
        u = rng.random(length)                           # when temperature > 0
        for i in range(length):
            z = V h + c;  ch ~ softmax(z / temperature) by u[i];  state, _ = step(ch, state)

    The softmax is computed in float64 as ``exp((z - max z) / temperature)``,
    so any temperature > 0 gives a proper distribution, approaching greedy
    decoding as it goes to 0.  A character is the first id whose cumulative
    probability exceeds ``u[i]`` (inverse-CDF sampling, one uniform per
    character).  The loop is compiled and runs without the GIL, a chunk of
    characters per call (src/_sample.pyx); it reads the parameters once, a
    copy taken after the prime's pass.

    Parameters
    ----------
    model : RNN
        Trained with ``input_size == output_size == len(vocab)``; one
        direction, any number of layers (every layer's state is carried).
    vocab : Vocab, optional
        Defaults to ``model.vocab``.
    prime : str
        Context to start from (not included in the result).  If empty, a
        newline is used when the vocabulary has one, else the first character.
    length : int >= 0
        Number of characters to generate.  A length whose result cannot fit
        in the memory available is refused before anything is allocated.
    temperature : float >= 0
        Lower is more conservative; 0 means greedy (argmax) decoding.
    top_k : int >= 1, optional
        Sample only among the ``top_k`` most likely characters (exactly
        ``top_k``: ties at the cut go to the lower id).
    seed : int or numpy Generator, optional
        The same seed gives the same text.

    Returns
    -------
    str of ``length`` characters (the continuation only; ``prime + result``
    is the full text).

    Raises
    ------
    ValueError
        For bad arguments (before anything runs), and when the hidden state
        overflows to NaN or infinity (as a relu model's can), or with
        temperature > 0 the logits do: there is no state to step from or
        distribution to draw from.
    """
    if vocab is None:
        vocab = getattr(model, "vocab", None)
        if vocab is None:
            raise ValueError("the model has no vocabulary; pass vocab=")
    if not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a Vocab, got {type(vocab).__name__}")
    if getattr(model, "bidirectional", False):
        raise ValueError("cannot sample from a bidirectional model: its reverse direction reads "
                         "characters that are not written yet")
    k = len(vocab)
    if model.input_size != k or model.output_size != k:
        raise ValueError(
            f"the model maps {model.input_size} inputs to {model.output_size} outputs, "
            f"but the vocabulary has {k} characters"
        )
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 0:
        raise ValueError(f"length must be an int >= 0, got {length!r}")
    check_fits(_sample_bytes(length), f"length={length}: the sample")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None:
        top_k = _check_count("top_k", top_k)
    if not isinstance(prime, str):
        raise TypeError(f"prime must be a str, got {type(prime).__name__}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    context = prime or ("\n" if "\n" in vocab else vocab.chars[0])
    ids = vocab.encode(context)
    fwd = model.forward(_batch1(ids, model.batch_first))
    state = np.array(fwd.h_n, dtype=model.dtype, order="C")  # every layer's, (L, 1, H)
    flat, offs, V, c = model._generation_params()
    top = 0 if top_k is None or top_k >= k else top_k
    temperature = float(temperature)
    relu = model.nonlinearity == "relu"
    out = np.empty(length, dtype=np.intp)
    # a chunk at a time: the loop holds no GIL, so Ctrl-C and other threads get
    # a turn between chunks; the uniforms are drawn in the order characters use them
    for i in range(0, length, _CHUNK):
        n = min(_CHUNK, length - i)
        u = rng.random(n) if temperature > 0 else None
        bad = _sample.generate(state, flat, offs, k, relu, V, c, temperature, top, u,
                               out[i : i + n], i + n < length)
        if bad >= 0:
            raise ValueError(f"the model's state overflowed: its hidden state or logits hold NaN "
                             f"or infinity at character {i + bad} of the sample")
    return vocab.decode(out)

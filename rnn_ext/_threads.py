"""Thread control for the BLAS that rnn_ext's kernel calls.

The kernel calls BLAS through ``scipy.linalg.cython_blas``, i.e. scipy's own
OpenBLAS (``scipy.libs/libscipy_openblas*``).  NumPy wheels carry a separate
copy (``numpy.libs/libscipy_openblas64_*``); rnn_ext never calls it, so it is
left alone.  Where scipy links a BLAS outside its own package (conda, Linux
distributions) numpy and scipy share that BLAS, and every BLAS found is
controlled.

Three entry points:

``set_num_threads(n)``
    Process-wide: the kernel's BLAS uses ``n`` threads for every call from
    now on; ``None`` returns to the automatic choice (below) and restores the
    BLAS's own count as it was when rnn_ext first looked.
``threads(n)``
    The same for a ``with`` block; the previous setting comes back on exit,
    also when the block raises.
``pass_threads(T, B, D, H, K)``
    What the model enters around a whole pass (never per step).  With no
    user setting it picks the count per call: one BLAS thread when the pass
    is small (see ``_auto_threads``), the BLAS's own count otherwise.  With a
    user setting it does nothing.

The controller is a cached ``threadpoolctl.ThreadpoolController``, created
once, lazily: building one scans every loaded library (~1-3 ms); after that
reading or setting the count is a ctypes call of well under a microsecond,
and a small pass's switch to one thread and back costs a few microseconds.

The BLAS thread count is process state.  When several Python threads run
passes at once, a small pass drops the BLAS to one thread until the last
concurrent small pass ends; the count in force before the first one is then
restored (counted under a lock, so overlapping passes never leave the BLAS
at a stale count).
"""

import operator
import os
import threading

__all__ = ["set_num_threads", "get_num_threads", "threads", "pass_threads", "blas_info"]

# Guards every change of the BLAS count and of the state below.  Not
# reentrant: _libs() is always called before taking it.
_lock = threading.Lock()
# Serialises the one-time construction of the controller.
_init_lock = threading.Lock()
# ThreadpoolController restricted to the kernel's BLAS; built on first use,
# with a getter and a setter of the thread count per library.
_controller = None
_getters: list = []
_setters: list = []
# BLAS thread counts when rnn_ext first looked: what set_num_threads(None) restores.
_default_counts: list[int] = []
# The user's setting: None (automatic, per call) or a positive int.
_user_n: int | None = None
# Small passes in flight, and the counts to restore when the last one ends.
_auto_depth = 0
_auto_saved: list[int] | None = None

# Passes smaller than this (forward flops) run their BLAS on one thread when
# the user has not chosen a count ...
AUTO_MIN_FLOPS = 20e6
# ... and so do passes with a batch below AUTO_MIN_BATCH whose per-step
# recurrence product, (B, H) x (H, H), has fewer flops than
# AUTO_MIN_STEP_FLOPS = 2·1024·1024 (B = 1: H below 1024).
AUTO_MIN_BATCH = 8
AUTO_MIN_STEP_FLOPS = 2 * 1024 * 1024
# A pass on rnn_ext's own pool runs on one thread, whatever the setting, when
# a step's recurrent product (B·H·H multiply-adds) is below this: the threads
# meet once per step, and below about 2^15 the barrier costs more than the
# second thread saves (B = 1, H = 64 on two threads: 1.1-1.4x the time of
# one).  Results do not depend on the count, so this changes no bits.
POOL_MIN_STEP = 1 << 15
# A pass so small that the BLAS runs each of its calls on one thread anyway
# skips setting the BLAS to one thread and back (about 2 us a call, most of
# a tiny pass's fixed cost).  Every product of a pass multiplies an (M, K) by
# a (K, N) with one of M, N, K in {T*B, B} and the other two in {D, H, K},
# so M*N*K <= T*B*m*m with m = max(D, H, K); OpenBLAS runs a GEMM on one
# thread up to M*N*K = 4 * 2^16 and a GEMV below M*N = 4 * 2304
# (interface/gemm.c, gemv.c: GEMM_MULTITHREAD_THRESHOLD 4), a quarter of
# which these bounds keep.  (With another BLAS at worse a tiny pass runs
# some call on its threads: no other effect.)
BLAS_SERIAL_MNK = 1 << 16
BLAS_SERIAL_MN = 2304


def _find_kernel_blas():
    """ThreadpoolController over the BLAS that scipy.linalg.cython_blas calls."""
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library so it can be found)
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    scipy_dir = os.path.dirname(os.path.realpath(scipy.__file__))
    # Wheels vendor the library inside the package (macOS: scipy/.dylibs)
    # or beside it (Linux, Windows: scipy.libs).
    roots = (scipy_dir + os.sep, scipy_dir + ".libs" + os.sep)
    own = [
        lib.filepath
        for lib in blas.lib_controllers
        if os.path.realpath(lib.filepath).startswith(roots)
    ]
    return blas.select(filepath=own) if own else blas


def _accessors(lib):
    """(get, set) of one library's thread count, the cheapest that is correct.

    threadpoolctl >= 3.8 lets only the first Python thread that sets an
    OpenBLAS count set it again and silently ignores the others, so a pass in
    a worker thread could neither drop to one thread nor restore.  All of
    rnn_ext's changes are serialised by _lock and undone in order, so they go
    to the library itself: for pthreads OpenBLAS its own get/set functions
    (a ctypes call, ~0.2 µs, against ~1 µs through threadpoolctl's
    properties); for anything else threadpoolctl's per-library setter.
    """
    get_symbol = getattr(lib, "_get_symbol", None)
    if lib.internal_api == "openblas" and lib.threading_layer == "pthreads" and get_symbol:
        get_n = get_symbol("openblas_get_num_threads")
        set_n = get_symbol("openblas_set_num_threads")
        if get_n is not None and set_n is not None:
            return get_n, set_n
    return (lambda: lib.num_threads), getattr(lib, "_real_set_num_threads", lib.set_num_threads)


def _libs():
    global _controller, _getters, _setters, _default_counts
    if _controller is None:
        with _init_lock:
            if _controller is None:
                controller = _find_kernel_blas()
                libs = controller.lib_controllers
                _getters, _setters = map(list, zip(*map(_accessors, libs))) if libs else ([], [])
                _default_counts = [get_n() for get_n in _getters]
                _controller = controller
    return _controller.lib_controllers


def _check_n(n, allow_none=True):
    if n is None and allow_none:
        return None
    if isinstance(n, bool):
        raise TypeError(f"number of threads must be a positive int or None, got bool {n!r}")
    try:
        value = operator.index(n)
    except TypeError:
        raise TypeError(
            f"number of threads must be a positive int or None, got {type(n).__name__} {n!r}"
        ) from None
    if value < 1:
        raise ValueError(f"number of threads must be a positive int or None, got {value}")
    return value


def _baseline():
    """Counts in force outside any small pass (lock held)."""
    if _auto_depth:
        return list(_auto_saved)
    return [get_n() for get_n in _getters]


def _set_baseline(counts):
    """Make `counts` the counts in force outside any small pass (lock held)."""
    global _auto_saved
    if _auto_depth:
        # A small pass is running at one thread; it restores these on exit.
        _auto_saved = list(counts)
        return
    for get_n, set_n, n in zip(_getters, _setters, counts):
        if get_n() != n:
            set_n(n)


def _apply(n):
    """Set the user's choice `n` (validated; None = automatic) (lock held)."""
    global _user_n
    _set_baseline(list(_default_counts) if n is None else [n] * len(_getters))
    _user_n = n


def set_num_threads(n):
    """Set the number of BLAS threads rnn_ext's kernel uses, process-wide.

    Parameters
    ----------
    n : int or None
        A positive number of threads, or None for the automatic choice: one
        thread for small passes, the BLAS's default count for large ones.
        A set count is a ceiling: a float32 pass on rnn_ext's own pool whose
        per-step product has fewer than ``POOL_MIN_STEP`` (2^15)
        multiply-adds runs on one thread (its results do not depend on the
        count).

    Raises
    ------
    TypeError
        If `n` is not an int or None.
    ValueError
        If `n` is smaller than 1.
    """
    n = _check_n(n)
    _libs()
    with _lock:
        _apply(n)


def get_num_threads():
    """The user's setting: an int from set_num_threads/threads, or None (automatic)."""
    return _user_n


def blas_info():
    """threadpoolctl's info dicts for the BLAS rnn_ext's kernel calls."""
    _libs()
    return _controller.info()


class threads:
    """Context manager: rnn_ext's kernel uses `n` BLAS threads inside the block.

    ``with rnn_ext.threads(1): model.loss_and_grad(x, y)`` runs the pass on
    one BLAS thread; the previous setting (a number, or the automatic choice)
    returns on exit, also when the block raises.  ``threads(None)`` selects
    the automatic choice inside the block.  Like the BLAS count itself, the
    setting is process-wide, not per Python thread.

    Parameters
    ----------
    n : int or None
        A positive number of threads, or None.
    """

    __slots__ = ("_n", "_saved")

    def __init__(self, n):
        self._n = _check_n(n)
        self._saved = []

    def __enter__(self):
        _libs()
        with _lock:
            self._saved.append((_user_n, _baseline()))
            _apply(self._n)
        return self

    def __exit__(self, *exc):
        global _user_n
        with _lock:
            user_n, counts = self._saved.pop()
            _set_baseline(counts)
            _user_n = user_n
        return False

    def __repr__(self):
        return f"rnn_ext.threads({self._n!r})"


class _OneThreadPass:
    """Reentrant, shareable: BLAS at one thread while any small pass runs."""

    __slots__ = ()

    def __enter__(self):
        global _auto_depth, _auto_saved
        if _controller is None:
            _libs()
        with _lock:
            if not _auto_depth:
                if len(_getters) == 1:  # the usual case, kept short: this runs per call
                    n = _getters[0]()
                    _auto_saved = [n]
                    if n != 1:
                        _setters[0](1)
                else:
                    _auto_saved = saved = [get_n() for get_n in _getters]
                    for set_n, n in zip(_setters, saved):
                        if n != 1:
                            set_n(1)
            _auto_depth += 1
        return self

    def __exit__(self, *exc):
        global _auto_depth, _auto_saved
        with _lock:
            _auto_depth -= 1
            if not _auto_depth:
                for set_n, n in zip(_setters, _auto_saved):
                    if n != 1:
                        set_n(n)
                _auto_saved = None
        return False


class _NoChange:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_ONE_THREAD = _OneThreadPass()
_NO_CHANGE = _NoChange()


def _auto_threads(T, B, D, H, K):
    """1 if a pass of this size should run its BLAS on one thread, else None.

    A second BLAS thread pays only when there is enough work to split: the
    whole pass must be large (forward flops 2·T·B·(D·H + H·H + H·K) of at
    least AUTO_MIN_FLOPS), and with a small batch (B < AUTO_MIN_BATCH) so
    must each step of the recurrence, the sequential matrix-vector-like
    product that runs T times in forward and again in backward (2·B·H·H
    flops, at least AUTO_MIN_STEP_FLOPS).  Below that, waking and
    synchronising the BLAS threads costs about what the second core saves.
    On an idle 2-core machine (benchmarks/README.md) two threads were
    1.1-1.4x faster than one for B >= 8 above 20 MFLOP, 1.4-1.9x at B = 1,
    H = 1024 and at B = 32, H >= 256, and no faster (0.9-1.1x) for B = 1,
    H <= 256 or below 20 MFLOP.  When other processes hold the cores two
    BLAS threads lose badly, each step waiting for the slower thread: pin
    one with ``rnn_ext.threads(1)`` there.
    """
    total = 2.0 * T * B * (D * H + H * H + H * K)
    if total < AUTO_MIN_FLOPS:
        return 1
    if B < AUTO_MIN_BATCH and 2.0 * B * H * H < AUTO_MIN_STEP_FLOPS:
        return 1
    return None


def pass_threads(T, B, D, H, K):
    """Context manager the model enters around one whole pass.

    Does nothing when the user has chosen a count (set_num_threads/threads);
    otherwise runs the pass's BLAS on one thread if ``_auto_threads`` says the
    pass is small, and leaves the BLAS's own count for large passes.

    Parameters
    ----------
    T, B, D, H, K : int
        Time steps, batch, input, hidden and output sizes of the pass.
    """
    if (_user_n is not None or _auto_threads(T, B, D, H, K) is None
            or _blas_serial(T, B, D, H, K)):
        return _NO_CHANGE
    return _ONE_THREAD


def _blas_serial(T, B, D, H, K):
    """Whether the BLAS runs every call of such a pass on one thread by itself."""
    m = max(D, H, K)
    return T * B * m * m <= BLAS_SERIAL_MNK and m * m <= BLAS_SERIAL_MN


def pool_threads(T, B, D, H, K):
    """(context manager, n) for a pass whose recurrence runs on rnn_ext's own pool.

    Such a pass (float32, the weight-stationary recurrence: recurrent.use_packed) runs all
    its parallel work on the pool of ``src/wsr.c`` with ``n`` threads: the
    recurrence with one barrier per step, the large products cut into the
    same parts for every n (``src/_pgemm.pxd``), the row loops split by
    columns or, for the sums over rows, into the same runs of rows for every
    n (``src/_pcols.pxd``).  The BLAS runs on one thread meanwhile (the
    context manager): its own workers, spinning for a while after every
    multi-threaded call, would share the cores with the pool's.  ``n`` is
    the user's setting, or with none the BLAS's own count, or 1 for a small
    pass (``_auto_threads``); always 1 when a step's product has fewer than
    POOL_MIN_STEP multiply-adds, whatever the setting (the count is a
    ceiling).  Results are bit-identical for every ``n``.
    """
    if _controller is None:
        _libs()
    if B * H * H < POOL_MIN_STEP:
        n = 1
    elif _user_n is not None:
        n = _user_n
    elif _auto_threads(T, B, D, H, K) is not None:
        n = 1
    else:
        with _lock:
            n = max(_baseline(), default=1)
    return (_NO_CHANGE if _blas_serial(T, B, D, H, K) else _ONE_THREAD), n

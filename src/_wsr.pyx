"""Python-callable twin of the weight-stationary recurrence (src/wsr.h).

For tests and benchmarks: the C library is what the layer kernel links; this
module calls it on NumPy arrays, in place, with the GIL released.

Shape letters: T time steps, B batch, H hidden size.  Row by row,

    forward,  reverse=False:  hs[t+1] = f(hs[t+1] + hs[t] @ W.T)     t = 0 .. T-1
    forward,  reverse=True:   hs[t]   = f(hs[t] + hs[t+1] @ W.T)     t = T-1 .. 0
    backward, reverse=False:  delta[t] = (delta[t] + delta[t+1] @ W) * f'(hs[t+1])   t = T-1 .. 0
    backward, reverse=True:   delta[t] = (delta[t] + delta[t-1] @ W) * f'(hs[t])     t = 0 .. T-1

with f = tanh (f'(h) = 1 - h*h) or relu (f'(h) = [h > 0]), and the padded
rows (t >= lengths[b]) of each step set to 0 (to h0 = hs[T] for the reverse
forward).  Unlike the C library, which trusts its caller, these functions
check their arguments and raise ValueError / TypeError.
"""
from libc.stddef cimport ptrdiff_t

from _blas cimport gemm, gemv

import numpy as np

cdef extern from "wsr.h" nogil:
    size_t rnn_ext_wsr_packed_size(int H)
    void rnn_ext_wsr_pack(const float* W, int H, float* packed_fwd, float* packed_bwd)
    void rnn_ext_wsr_forward(const float* packed_fwd, int T, int B, int H, float* hs,
                             int reverse, const ptrdiff_t* lengths, int relu, int nthreads)
    void rnn_ext_wsr_backward(const float* packed_bwd, int T, int B, int H, float* delta,
                              const float* hs, int reverse, const ptrdiff_t* lengths,
                              int relu, int nthreads)
    const char* rnn_ext_wsr_path()
    int rnn_ext_wsr_set_path(const char* name)
    int rnn_ext_wsr_gemm_tn(int M, int N, int K, const float* A, ptrdiff_t lda, const float* B,
                            ptrdiff_t ldb, float* C, ptrdiff_t ldc)

cdef extern from "wsr_internal.h" nogil:
    int rnn_ext_wsr_supported(const char* name)

# the tanh loop of src/_kernels.pyx, for blas_forward; this module does not
# use the header's exp loop, which GCC would otherwise warn about
cdef extern from *:
    """
    #if defined(__GNUC__)
    #pragma GCC diagnostic push
    #pragma GCC diagnostic ignored "-Wunused-function"
    #endif
    #include "_fastmath.h"
    #if defined(__GNUC__)
    #pragma GCC diagnostic pop
    #endif
    """
    void rnn_ext_tanhf_inplace(float* a, Py_ssize_t n) nogil

#: every instruction-set path the library knows, best last
PATHS = ("portable", "neon", "avx2", "avx512")


def _check_array(name, a, ndim):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if 0 in a.shape:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")


def _check_lengths(lengths, B, T):
    if lengths is None:
        return None
    if not isinstance(lengths, np.ndarray) or lengths.dtype != np.intp:
        raise TypeError(f"lengths must be a numpy.ndarray of dtype intp, got "
                        f"{getattr(lengths, 'dtype', type(lengths).__name__)}")
    if lengths.shape != (B,) or not lengths.flags.c_contiguous:
        raise ValueError(f"lengths must be C-contiguous of shape ({B},), got {lengths.shape}")
    if lengths.min() < 1 or lengths.max() > T:
        raise ValueError(f"lengths must lie in [1, {T}], got [{lengths.min()}, {lengths.max()}]")
    return lengths


def _check_hs(hs):
    _check_array("hs", hs, 3)
    if hs.shape[0] < 2:
        raise ValueError(f"hs must have T+1 >= 2 rows, got shape {hs.shape}")


def _check_packed(name, packed, H):
    _check_array(name, packed, 1)
    want = rnn_ext_wsr_packed_size(H)
    if packed.shape[0] != want:
        raise ValueError(f"{name} must hold {want} floats for H={H}, got {packed.shape[0]}")


def _aligned_empty(n):
    """A float32 array of n elements starting on a 64-byte boundary."""
    raw = np.empty(n + 16, dtype=np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip:skip + n]


def pack(W, out=None):
    """Pack W once: returns (packed_fwd, packed_bwd), each of packed_size(H) floats.

    W : ndarray of shape (H, H), float32
    out : (packed_fwd, packed_bwd) to overwrite, each of shape (packed_size(H),),
        float32; None allocates them (64-byte aligned)
    """
    _check_array("W", W, 2)
    if W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square (H, H), got shape {W.shape}")
    cdef int H = W.shape[0]
    if out is None:
        fwd = _aligned_empty(rnn_ext_wsr_packed_size(H))
        bwd = _aligned_empty(rnn_ext_wsr_packed_size(H))
    else:
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError("out must be a tuple (packed_fwd, packed_bwd), got "
                            f"{type(out).__name__}")
        fwd, bwd = out
        _check_packed("out[0]", fwd, H)
        _check_packed("out[1]", bwd, H)
    cdef const float[:, ::1] w = W
    cdef float[::1] f = fwd
    cdef float[::1] b = bwd
    with nogil:
        rnn_ext_wsr_pack(&w[0, 0], H, &f[0], &b[0])
    return fwd, bwd


def packed_size(int H):
    """Floats in one packed copy of an (H, H) W."""
    if H < 1:
        raise ValueError(f"H must be >= 1, got {H}")
    return rnn_ext_wsr_packed_size(H)


def forward_packed(packed_fwd, hs, reverse=False, lengths=None, relu=False, int nthreads=1):
    """The forward recurrence on a W packed by pack(); hs is updated in place.

    packed_fwd : ndarray of shape (packed_size(H),), float32
    hs : ndarray of shape (T+1, B, H), float32; A[t] in the rows written, h0 in the other
    lengths : ndarray of shape (B,), intp, in [1, T]; or None
    """
    _check_hs(hs)
    cdef int T = hs.shape[0] - 1, B = hs.shape[1], H = hs.shape[2]
    _check_packed("packed_fwd", packed_fwd, H)
    lengths = _check_lengths(lengths, B, T)
    cdef const float[::1] p = packed_fwd
    cdef float[:, :, ::1] h = hs
    cdef const Py_ssize_t[::1] lens = lengths
    cdef const ptrdiff_t* pl = NULL
    if lengths is not None:
        pl = <const ptrdiff_t*>&lens[0]
    cdef int rev = bool(reverse), rl = bool(relu)
    with nogil:
        rnn_ext_wsr_forward(&p[0], T, B, H, &h[0, 0, 0], rev, pl, rl, nthreads)


def backward_packed(packed_bwd, delta, hs, reverse=False, lengths=None, relu=False,
                    int nthreads=1):
    """The BPTT recurrence (eq. 5) on a W packed by pack(); delta is updated in place.

    packed_bwd : ndarray of shape (packed_size(H),), float32
    delta : ndarray of shape (T, B, H), float32: dL/dh_t on entry, delta_t on exit
    hs : ndarray of shape (T+1, B, H), float32, the forward's states
    lengths : ndarray of shape (B,), intp, in [1, T]; or None
    """
    _check_array("delta", delta, 3)
    _check_hs(hs)
    cdef int T = delta.shape[0], B = delta.shape[1], H = delta.shape[2]
    if hs.shape != (T + 1, B, H):
        raise ValueError(f"hs must have shape {(T + 1, B, H)}, got {hs.shape}")
    if np.shares_memory(hs, delta):
        raise ValueError("hs and delta must not overlap")
    _check_packed("packed_bwd", packed_bwd, H)
    lengths = _check_lengths(lengths, B, T)
    cdef const float[::1] p = packed_bwd
    cdef float[:, :, ::1] d = delta
    cdef const float[:, :, ::1] h = hs
    cdef const Py_ssize_t[::1] lens = lengths
    cdef const ptrdiff_t* pl = NULL
    if lengths is not None:
        pl = <const ptrdiff_t*>&lens[0]
    cdef int rev = bool(reverse), rl = bool(relu)
    with nogil:
        rnn_ext_wsr_backward(&p[0], T, B, H, &d[0, 0, 0], &h[0, 0, 0], rev, pl, rl, nthreads)


def _check_W(W, H):
    _check_array("W", W, 2)
    if W.shape != (H, H):
        raise ValueError(f"W must have shape {(H, H)}, got {W.shape}")


def forward(W, hs, reverse=False, lengths=None, relu=False, int nthreads=1):
    """pack(W), then forward_packed: hs is updated in place.

    W : ndarray of shape (H, H), float32
    hs : ndarray of shape (T+1, B, H), float32
    """
    _check_hs(hs)
    _check_W(W, hs.shape[2])
    forward_packed(pack(W)[0], hs, reverse, lengths, relu, nthreads)


def backward(W, delta, hs, reverse=False, lengths=None, relu=False, int nthreads=1):
    """pack(W), then backward_packed: delta is updated in place.

    W : ndarray of shape (H, H), float32
    delta : ndarray of shape (T, B, H), float32; hs : ndarray of shape (T+1, B, H), float32
    """
    _check_hs(hs)
    _check_W(W, hs.shape[2])
    backward_packed(pack(W)[1], delta, hs, reverse, lengths, relu, nthreads)


def gemm_tn(A, B):
    """A.T @ B by the path's weight-gradient kernel, or None when the path has none.

    A : ndarray of shape (K, M), float32; B : ndarray of shape (K, N), float32, both
    C-contiguous.  Returns a new (M, N) float32 array (src/wsr.h: rnn_ext_wsr_gemm_tn).
    """
    _check_array("A", A, 2)
    _check_array("B", B, 2)
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must have as many rows, got {A.shape} and {B.shape}")
    cdef int K = A.shape[0], M = A.shape[1], N = B.shape[1]
    C = np.empty((M, N), dtype=np.float32)
    cdef const float[:, ::1] a = A
    cdef const float[:, ::1] b = B
    cdef float[:, ::1] c = C
    cdef int done
    with nogil:
        done = rnn_ext_wsr_gemm_tn(M, N, K, &a[0, 0], M, &b[0, 0], N, &c[0, 0], N)
    return C if done else None


def path():
    """The instruction-set path in use: "avx512", "avx2", "neon" or "portable"."""
    return rnn_ext_wsr_path().decode()


def set_path(name):
    """Use the path ``name`` from now on (process-wide); ValueError if unknown or unsupported."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if rnn_ext_wsr_set_path(name.encode()) != 0:
        raise ValueError(f"path must be one of {available_paths()} on this machine, got {name!r}")


def available_paths():
    """The paths this build and CPU can run, best last."""
    return tuple(name for name in PATHS if rnn_ext_wsr_supported(name.encode()))


def blas_forward(W, hs, relu=False):
    """For comparison: the forward recurrence as src/_kernels.pyx runs it, one BLAS call a step.

    hs[t+1] = f(hs[t+1] + hs[t] @ W.T) for t = 0 .. T-1 (no lengths, not reversed).
    W : ndarray of shape (H, H), float32;  hs : ndarray of shape (T+1, B, H), float32
    """
    _check_hs(hs)
    _check_W(W, hs.shape[2])
    WT = np.ascontiguousarray(W.T)
    cdef int T = hs.shape[0] - 1, B = hs.shape[1], H = hs.shape[2], t
    cdef Py_ssize_t i, BH = <Py_ssize_t>B * H
    cdef const float[:, ::1] w = W
    cdef const float[:, ::1] wt = WT
    cdef float[:, :, ::1] h = hs
    cdef bint rl = bool(relu)
    cdef float* cur
    with nogil:
        for t in range(T):
            cur = &h[t + 1, 0, 0]
            if B == 1:
                # cur += W @ prev
                gemv(c'N', H, H, 1, &w[0, 0], H, &h[t, 0, 0], 1, cur)
            else:
                # cur += prev @ W.T
                gemm(c'N', c'N', B, H, H, 1, &h[t, 0, 0], H, &wt[0, 0], H, 1, cur, H)
            if rl:
                for i in range(BH):
                    cur[i] = cur[i] if cur[i] > 0 else 0
            else:
                rnn_ext_tanhf_inplace(cur, BH)


def blas_backward(W, delta, hs, relu=False):
    """For comparison: eq. (5) as src/_kernels.pyx runs it, one BLAS call a step.

    delta[t] = (delta[t] + delta[t+1] @ W) * f'(hs[t+1]) for t = T-1 .. 0 (no lengths).
    W : ndarray of shape (H, H), float32;  delta : ndarray of shape (T, B, H), float32;
    hs : ndarray of shape (T+1, B, H), float32
    """
    _check_array("delta", delta, 3)
    _check_hs(hs)
    cdef int T = delta.shape[0], B = delta.shape[1], H = delta.shape[2], t
    _check_W(W, H)
    if hs.shape != (T + 1, B, H):
        raise ValueError(f"hs must have shape {(T + 1, B, H)}, got {hs.shape}")
    cdef Py_ssize_t i, BH = <Py_ssize_t>B * H
    cdef const float[:, ::1] w = W
    cdef float[:, :, ::1] d = delta
    cdef const float[:, :, ::1] h = hs
    cdef bint rl = bool(relu)
    cdef float* cur
    cdef const float* hh
    with nogil:
        for t in range(T - 1, -1, -1):
            cur = &d[t, 0, 0]
            if t < T - 1:
                if B == 1:
                    # cur += W.T @ delta[t+1]
                    gemv(c'T', H, H, 1, &w[0, 0], H, &d[t + 1, 0, 0], 1, cur)
                else:
                    # cur += delta[t+1] @ W
                    gemm(c'N', c'N', B, H, H, 1, &d[t + 1, 0, 0], H, &w[0, 0], H, 1, cur, H)
            hh = &h[t + 1, 0, 0]
            for i in range(BH):
                if rl:
                    cur[i] = cur[i] if hh[i] > 0 else 0
                else:
                    cur[i] = cur[i] * (1 - hh[i] * hh[i])

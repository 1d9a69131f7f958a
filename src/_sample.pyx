"""Text generation, compiled: rnn_ext.text.sample's loop over characters in
one GIL-free call.

Shape letters (DESIGN.md §2): D input size (the vocabulary), H hidden size,
K output size (the vocabulary again), L layers (one direction), n characters.

Per character, from the state h (L, H) of the text so far::

    z = V @ h[-1] + c                          eq. (2)'s logits, in float64
    temperature == 0:  id = argmax z           the lowest id on ties
    otherwise:         s = z - max z
                       s[all but the top_k largest] = -inf   ties at the cut: the lower ids stay
                       p = exp(s / temperature)
                       cdf = cumsum(p)
                       id = the first i with cdf[i] > u * cdf[-1]
                            (if u * cdf[-1] rounds up to cdf[-1]: the last i with p[i] > 0)
    h = step(id, h)                            eq. (1) through every layer

with one uniform u in [0, 1) per character, drawn by the caller.  This is
the rule rnn_ext/text.py used to run in NumPy one character at a time,
operation for operation and in the same order: z is computed from the
model-dtype state widened to float64 by the BLAS routine NumPy's matmul calls
for it (dgemv), then c is added; the softmax stays unnormalised (the draw
scales u by the total instead).  exp is libm's, which NumPy's vectorised exp
can differ from in the last bit: a draw can change only when u * cdf[-1]
lies within such a rounding of a cdf entry.  The step is _recurrence.pxd's
stack_step, the recurrence of model.step, which at B = 1 does what a
one-step forward pass does.  The loop stops where the state to step from
holds NaN or infinity (forward and step refuse such an h0) and, with
temperature > 0, where the logits do (no distribution to draw from).

Everything here trusts rnn_ext/text.py's validation; the checks below only
guard buffer sizes against a caller that bypassed it.
"""
from cython cimport floating
from libc.math cimport INFINITY, exp
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

# the recurrence's float32 tanh comes from this header; its exp loop, unused
# here, would draw GCC's unused-function warning (the include guard makes the
# cimports' own #include of it a no-op)
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

from _blas cimport gemv
from _recurrence cimport stack_step


cdef inline int expect(bint ok, str what) except -1:
    if not ok:
        raise ValueError(f"rnn_ext._sample: inconsistent arguments: {what}")
    return 0


cdef inline Py_ssize_t argmax(const double* z, Py_ssize_t K) noexcept nogil:
    """numpy.argmax: the first maximum, or the first NaN if there is one."""
    cdef Py_ssize_t k, best = 0
    for k in range(K):
        if z[k] != z[k]:
            return k
        if z[k] > z[best]:
            best = k
    return best


cdef inline double kth_largest(double* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The value at position k (0: the maximum) of a[:n] sorted in descending
    order; reorders a.  Quickselect (Hoare's partition); a holds no NaN."""
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j
    cdef double pivot, tmp
    while lo < hi:
        pivot = a[lo + (hi - lo) // 2]
        i = lo
        j = hi
        while i <= j:
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                tmp = a[i]
                a[i] = a[j]
                a[j] = tmp
                i += 1
                j -= 1
        # now a[lo:j+1] >= pivot, a[j+1:i] == pivot, a[i:hi+1] <= pivot
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return a[k]
    return a[k]


cdef inline double kth_largest_small(const double* a, Py_ssize_t n, Py_ssize_t k,
                                     double* best) noexcept nogil:
    """kth_largest for a small k: one pass keeping the k+1 largest so far,
    sorted, in best (k+1,).  Past the first few entries most fail the one
    comparison with the smallest kept, a branch the CPU predicts, where
    quickselect's partitioning mispredicts about every other one."""
    cdef Py_ssize_t i, j, kept = 0
    cdef double v
    for i in range(n):
        v = a[i]
        if kept <= k:
            kept += 1
        elif not (v > best[k]):
            continue
        # insert v into best[:kept], descending
        j = kept - 1
        while j > 0 and best[j - 1] < v:
            best[j] = best[j - 1]
            j -= 1
        best[j] = v
    return best[k]


cdef enum:
    # top_k up to this size is selected by kth_largest_small, above by quickselect
    SMALL_TOP_K = 16


cdef inline void keep_top_k(double* s, double* scratch, Py_ssize_t K,
                            Py_ssize_t top_k) noexcept nogil:
    """s[i] := -inf for all but the top_k largest entries, ties at the cut
    broken by index: exactly the first top_k of a stable descending sort
    survive (numpy: s[np.argsort(-s, kind="stable")[top_k:]] = -inf)."""
    cdef Py_ssize_t k, above = 0, ties
    cdef double cut
    if top_k <= SMALL_TOP_K:
        cut = kth_largest_small(s, K, top_k - 1, scratch)
    else:
        memcpy(scratch, s, K * sizeof(double))
        cut = kth_largest(scratch, K, top_k - 1)
    for k in range(K):
        if s[k] > cut:
            above += 1
    ties = top_k - above  # entries equal to the cut that stay, the lowest ids first
    for k in range(K):
        if s[k] < cut:
            s[k] = -INFINITY
        elif s[k] == cut:
            if ties > 0:
                ties -= 1
            else:
                s[k] = -INFINITY


cdef inline Py_ssize_t draw(const double* z, double* p, double* scratch, Py_ssize_t K,
                            double temperature, Py_ssize_t top_k, double u) noexcept nogil:
    """One id drawn from softmax(z / temperature) restricted to the top_k
    (see the module's docstring); -1 when z holds NaN or +inf (there is no
    distribution to draw from).  p (K,) and scratch (K,) are scratch."""
    cdef Py_ssize_t k
    cdef double m = z[0], total, x
    for k in range(K):
        if z[k] != z[k]:
            return -1
        if z[k] > m:
            m = z[k]
    if m == INFINITY:
        return -1
    # the maximum subtracted first: every entry <= 0, the largest exactly 0,
    # so for any temperature > 0 (however small) exp gives a finite p with max 1
    for k in range(K):
        p[k] = z[k] - m
    if 0 < top_k < K:
        keep_top_k(p, scratch, K, top_k)
    for k in range(K):
        p[k] = exp(p[k] / temperature)
    # cdf = cumsum(p), summed left to right; scratch holds it
    total = 0
    for k in range(K):
        total += p[k]
        scratch[k] = total
    # numpy.searchsorted(cdf, u * cdf[-1], side="right")
    x = u * total
    for k in range(K):
        if scratch[k] > x:
            return k
    # u * total rounded up to total: the last id with p > 0
    for k in range(K - 1, -1, -1):
        if p[k] != 0:
            return k
    return K - 1  # unreachable: the maximum has p = 1


cdef inline bint all_finite(const floating* a, Py_ssize_t n) noexcept nogil:
    """Whether a[:n] holds no NaN and no infinity."""
    cdef Py_ssize_t i
    for i in range(n):
        if not (a[i] - a[i] == 0):
            return False
    return True


def generate(floating[:, :, ::1] h not None, const floating[::1] flat not None,
             const Py_ssize_t[:, ::1] offs not None, int D, bint relu,
             const double[:, ::1] V not None, const double[::1] c, double temperature,
             Py_ssize_t top_k, const double[::1] u, Py_ssize_t[::1] out not None,
             bint step_last):
    """Generate n = len(out) characters, with the GIL released.

    h : (L, 1, H) the state before the first character; on exit the state
        after the last one's step (when step_last), else the state from which
        the last one was drawn
    flat, offs : the layer's parameters, as _kernels.step_pass takes them
    V : (K, H) float64;  c : (K,) float64 or None;  K <= D
    temperature : >= 0, 0 for argmax decoding
    top_k : in [1, K], or 0 for every id
    u : (n,) uniforms in [0, 1), one per character; None when temperature == 0
    out : (n,) receives the ids
    step_last : step on the last character too (more characters follow)

    Returns -1, or the index i of the character at which the loop stopped:
    the state to step from holds NaN or infinity (it overflowed), or, with
    temperature > 0, the logits hold NaN or +inf (there is no distribution to
    draw from).  out is written before i.
    """
    cdef Py_ssize_t L = h.shape[0], H = h.shape[2], K = V.shape[0], n = out.shape[0]
    cdef Py_ssize_t ld, need
    expect(h.shape[1] == 1 and L >= 1 and H >= 1, "h is (L, 1, H)")
    expect(offs.shape[0] == L and offs.shape[1] == 3, "offs is (L, 3)")
    for ld in range(L):
        need = max(offs[ld, 0] + H * (D if ld == 0 else H), offs[ld, 1] + H * H,
                   offs[ld, 2] + H)
        expect(offs[ld, 0] >= 0 and offs[ld, 1] >= 0 and offs[ld, 2] >= -1
               and need <= flat.shape[0], "offs beyond flat")
    expect(V.shape[1] == H and 1 <= K <= D, "V is (K, H), K <= D")
    expect(c is None or c.shape[0] == K, "c is (K,)")
    expect(temperature >= 0 and 0 <= top_k <= K, "temperature, top_k")
    expect(temperature == 0 or (u is not None and u.shape[0] >= n), "u")
    if n == 0:
        return -1
    cdef floating* cur = &h[0, 0, 0]
    cdef const floating* pflat = &flat[0]
    cdef const Py_ssize_t* poffs = &offs[0, 0]
    cdef const double* pV = &V[0, 0]
    cdef const double* pc = &c[0] if c is not None else NULL
    cdef const double* pu = &u[0] if temperature != 0 else NULL
    cdef Py_ssize_t* pout = &out[0]
    # scratch: the next state (L, H); the top state in float64 (H,); z, p and
    # a K-long buffer (top_k's selection, then the cdf)
    cdef floating* nxt_h = <floating*>malloc(L * H * sizeof(floating))
    cdef double* work = <double*>malloc((H + 3 * K) * sizeof(double))
    if nxt_h == NULL or work == NULL:
        free(nxt_h)
        free(work)
        raise MemoryError()
    cdef double* h64 = work
    cdef double* z = work + H
    cdef double* p = z + K
    cdef double* scratch = p + K
    cdef const double* top
    cdef floating* tmp
    cdef floating* first = cur
    cdef Py_ssize_t i, j, k, x_id, bad = -1
    with nogil:
        for i in range(n):
            # z = h[-1].astype(float64) @ V.T + c
            if floating is float:
                for j in range(H):
                    h64[j] = cur[(L - 1) * H + j]
                top = h64
            else:
                top = cur + (L - 1) * H
            memset(z, 0, K * sizeof(double))
            gemv(c'N', <int>K, <int>H, 1.0, pV, <int>H, top, 0.0, z)
            if pc != NULL:
                for k in range(K):
                    z[k] += pc[k]
            if temperature == 0:
                x_id = argmax(z, K)
            else:
                x_id = draw(z, p, scratch, K, temperature, top_k, pu[i])
                if x_id < 0:
                    bad = i
                    break
            pout[i] = x_id
            if i + 1 < n or step_last:
                # a state that overflowed goes no further (forward and step
                # refuse such an h0 too)
                if not all_finite(cur, L * H):
                    bad = i
                    break
                # eq. (1) through every layer: h = step(id, h)
                stack_step(<const floating*>NULL, &x_id, cur, nxt_h, pflat, poffs, 1, D,
                           <int>H, <int>L, relu)
                tmp = cur
                cur = nxt_h
                nxt_h = tmp
        if cur != first:
            memcpy(first, cur, L * H * sizeof(floating))
            nxt_h = cur
    free(nxt_h)
    free(work)
    return bad

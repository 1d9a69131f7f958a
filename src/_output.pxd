# The heads: a linear output layer (eq. (2)'s z = V h + c) with either the
# fused softmax cross-entropy of eqs. (2)-(4) or the squared error of MSE.
#
# Shape letters: N rows (T*B per step, or B per sequence), F features, K outputs.
# The features may come in `parts` column blocks that live in separate
# buffers (a bidirectional layer's two directions); part e is V[:, e*P:(e+1)*P].
from cython cimport floating
from libc.math cimport exp, log
from libc.string cimport memcpy, memset

from _blas cimport gemv
from _pgemm cimport pgemm, pgemm_tn_sum
from _elementwise cimport rnn_ext_expf_shift_inplace, column_sums

# What a loss kernel leaves in Z.
cdef enum Mode:
    PROBS = 0      # Z := softmax(Z) (or the predictions, for MSE); no loss
    LOSS_ONLY = 1  # loss only; Z is scratch afterwards
    DZ = 2         # loss, and Z := scale * dL/dZ


cdef inline void output_forward(floating* Z, const floating* F0, const floating* F1,
                                const floating* V, const floating* c, Py_ssize_t N,
                                int P, int K, int nthreads) noexcept nogil:
    """Z := [F0, F1] @ V.T + c.  Overwrites Z.

    Z is (N, K); F0 is (N, P); F1 is (N, P) or NULL (one part);
    V is (K, parts*P); c is (K,) or NULL; nthreads: the pass's (src/_pgemm.pxd)
    """
    cdef int parts = 1 if F1 == NULL else 2
    cdef Py_ssize_t r
    cdef int e
    if c != NULL:
        for r in range(N):
            memcpy(Z + r * K, c, K * sizeof(floating))
    if N == 1 and parts == 1:
        # one row (a single step): z = V @ f + z, a GEMV, not a 1-row GEMM
        gemv(c'N', K, P, 1, V, P, F0, 1 if c != NULL else 0, Z)
        return
    for e in range(parts):
        # Z += F_e @ V[:, e*P:(e+1)*P].T
        pgemm(nthreads, c'N', c'T', <int>N, K, P, 1, F0 if e == 0 else F1, P, V + e * P,
              parts * P, 1 if (c != NULL or e > 0) else 0, Z, K)


cdef inline void output_backward(const floating* dZ, const floating* F0,
                                 const floating* F1, const floating* V, floating* dV,
                                 floating* dc, floating* dF0, floating* dF1, Py_ssize_t N,
                                 int P, int K, floating* scratch, Py_ssize_t n_scratch,
                                 int nthreads) noexcept nogil:
    """Eq. (4) and the features' gradient.  Overwrites its outputs.

    dZ is (N, K); F0, F1, V as in output_forward; dV (K, parts*P); dc (K,) or NULL;
    dF0 (and dF1 with two parts) (N, P) receive dL/dF, or are NULL; scratch: n_scratch
    free elements for dV's sum in parts (pgemm_tn_sum), or NULL; nthreads as there
    """
    cdef int e, parts = 1 if F1 == NULL else 2
    for e in range(parts):
        # eq. (4): dV = dZ.T @ F, one column block per part, a weight gradient
        # summed over the N rows (src/_pgemm.pxd)
        pgemm_tn_sum(nthreads, K, P, <int>N, dZ, K, F0 if e == 0 else F1, P, dV + e * P,
                     parts * P, scratch, n_scratch)
        if dF0 != NULL:
            # forward: z = f @ V.T + c  ->  df = dz @ V
            pgemm(nthreads, c'N', c'N', <int>N, P, K, 1, dZ, K, V + e * P, parts * P, 0,
                  dF0 if e == 0 else dF1, P)
    if dc != NULL:
        # eq. (4): dc = Σ_t dZ_t
        column_sums(dc, dZ, N, K)


cdef inline bint counted_row(Py_ssize_t row, int B, const Py_ssize_t* lengths) noexcept nogil:
    """Whether row t*B + b lies within sequence b's length."""
    return lengths == NULL or row // B < lengths[row % B]


cdef inline double softmax_loss(floating* Z, const Py_ssize_t* yi, const floating* ys,
                                const Py_ssize_t* lengths, Py_ssize_t N, int B, int K,
                                Py_ssize_t ignore_index, floating scale,
                                Mode mode) noexcept nogil:
    """Row-wise stable softmax and eq. (3)'s loss, fused into one pass over Z.

    Z is (N, K) logits on entry, rows t*B + b; see Mode for what it holds on exit
    yi is (N,) class ids (ignore_index counts nothing), or NULL
    ys is (N, K) target rows (soft targets), or NULL
    lengths is (B,) or NULL: rows at t >= lengths[b] count nothing
    Returns the summed loss, accumulated in double whatever the dtype.
    """
    cdef double total = 0, s, s0, s1, s2, s3, ysum, ydotz, zt = 0
    cdef floating m, m0, m1, m2, m3, inv
    cdef floating* z
    cdef const floating* y
    cdef Py_ssize_t row, k, target = 0
    cdef bint counted
    for row in range(N):
        z = Z + row * K
        counted = counted_row(row, B, lengths)
        if counted and yi != NULL:
            target = yi[row]
            counted = target != ignore_index
        if not counted and mode != PROBS:
            if mode == DZ:
                # this row contributes no loss and no gradient
                memset(z, 0, K * sizeof(floating))
            continue
        # log-softmax with the row's max subtracted: exact, and exp <= 1.  Four
        # running maxima (k mod 4), each from z[0], so that no comparison waits
        # on the one before: the same maximum as one chain (max is exact, and
        # NaNs past z[0] are passed over either way)
        m0 = z[0]
        m1 = m0
        m2 = m0
        m3 = m0
        k = 1
        while k + 3 < K:
            if z[k] > m0:
                m0 = z[k]
            if z[k + 1] > m1:
                m1 = z[k + 1]
            if z[k + 2] > m2:
                m2 = z[k + 2]
            if z[k + 3] > m3:
                m3 = z[k + 3]
            k += 4
        while k < K:
            if z[k] > m0:
                m0 = z[k]
            k += 1
        m = m0
        if m1 > m:
            m = m1
        if m2 > m:
            m = m2
        if m3 > m:
            m = m3
        ysum = 0
        ydotz = 0
        y = ys + row * K if ys != NULL else NULL
        if yi != NULL:
            zt = z[target] - m
        elif y != NULL:
            for k in range(K):
                ysum += y[k]
                ydotz += y[k] * (z[k] - m)
        if floating is float:
            rnn_ext_expf_shift_inplace(z, K, m)
        else:
            for k in range(K):
                z[k] = exp(z[k] - m)
        # Σ exp in double, four running sums (k mod 4) added pairwise: a chain
        # of conversions and adds waited on itself (B = 1, H = 64, K = 65: the
        # max and this sum were ~6 % of a loss_and_grad)
        s0 = 0
        s1 = 0
        s2 = 0
        s3 = 0
        k = 0
        while k + 3 < K:
            s0 += z[k]
            s1 += z[k + 1]
            s2 += z[k + 2]
            s3 += z[k + 3]
            k += 4
        while k < K:
            s0 += z[k]
            k += 1
        s = (s0 + s1) + (s2 + s3)
        if mode == PROBS:
            inv = <floating>(1 / s)
            for k in range(K):
                z[k] *= inv
            continue
        # eq. (3): L_t = -y_t . log p_t, with log p_k = z_k - m - log s
        if yi != NULL:
            total += log(s) - zt
        else:
            total += ysum * log(s) - ydotz
        if mode == DZ:
            # eq. (4)'s ŷ - y, for any target row: dL/dz = ŷ Σy - y
            if yi != NULL:
                inv = <floating>(scale / s)
                for k in range(K):
                    z[k] *= inv
                z[target] -= scale
            else:
                inv = <floating>(scale * ysum / s)
                for k in range(K):
                    z[k] = z[k] * inv - scale * y[k]
    return total


cdef inline double squared_error(floating* Z, const floating* ys, const Py_ssize_t* lengths,
                                 Py_ssize_t N, int B, int K, floating scale,
                                 Mode mode) noexcept nogil:
    """torch.nn.MSELoss's sum of (ŷ - y)² over counted rows, fused with its gradient.

    Z is (N, K) predictions on entry; with DZ, scale * 2 (ŷ - y) on exit
    (zero on rows that count nothing); ys is (N, K); lengths as in softmax_loss
    Returns the summed loss in double.
    """
    cdef double total = 0, diff
    cdef Py_ssize_t row, k
    cdef floating* z
    if mode == PROBS:
        return 0
    for row in range(N):
        z = Z + row * K
        if not counted_row(row, B, lengths):
            if mode == DZ:
                memset(z, 0, K * sizeof(floating))
            continue
        for k in range(K):
            diff = <double>z[k] - ys[row * K + k]
            total += diff * diff
            if mode == DZ:
                # forward: L = (z - y)²  ->  dz = 2 (z - y)
                z[k] = <floating>(2 * scale * diff)
    return total

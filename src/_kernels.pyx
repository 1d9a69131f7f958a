"""Forward propagation and backpropagation through time for the Elman RNN.

Shape letters (DESIGN.md §2), used in every comment below:
    T time steps, B batch, D input size, H hidden size, K output size.

Every array is C-contiguous and time-major.  Row by row, the batched equations
of DESIGN.md §1 are

    a_t = x_t @ U.T + h_{t-1} @ W.T + b      h_t = f(a_t)      (eq. 1)
    z_t = h_t @ V.T + c                      p_t = softmax(z_t) (eq. 2)

Hidden states live in one buffer ``hs`` of T+1 rows with h0 in row 0, so both
H = hs[1:] and H_prev = hs[:-1] are contiguous (T*B, H) matrices and every
weight gradient is one GEMM over all T*B rows.  Only the recurrence is a loop.

The kernels trust their inputs: rnn_ext/_validation.py checks dtypes, shapes,
contiguity, ranges and finiteness before anything here runs.  Each pass runs
without the GIL, and all scratch is allocated by the caller per call, so
concurrent calls on one model share nothing mutable.
"""
from cython cimport floating
from libc.math cimport exp, log, tanh
from libc.string cimport memcpy, memset

from _blas cimport gemm, gemv

cdef extern from *:
    """
    #ifndef RNN_EXT_DEBUG
    #define RNN_EXT_DEBUG 0
    #endif
    """
    bint RNN_EXT_DEBUG

cdef extern from "_fastmath.h" nogil:
    void rnn_ext_tanhf_inplace(float* a, Py_ssize_t n)
    void rnn_ext_expf_shift_inplace(float* z, Py_ssize_t n, float m)
    bint RNN_EXT_HAVE_CLONES

#: True in a build made with RNN_EXT_DEBUG=1 (bounds and wraparound checks on).
DEBUG = bool(RNN_EXT_DEBUG)
#: True when the float32 tanh/exp loops also carry an AVX2 clone picked at load.
SIMD_CLONES = bool(RNN_EXT_HAVE_CLONES)

# What softmax_loss leaves in Z.
cdef enum Mode:
    PROBS = 0   # Z := softmax(Z); no loss
    LOSS_ONLY = 1  # loss only; Z is scratch afterwards
    DZ = 2      # loss, and Z := scale * dL/dZ (eq. 4's ŷ - y)


# ---------------------------------------------------------------------------
# elementwise pieces

cdef inline void activate(floating* a, Py_ssize_t n, bint relu) noexcept nogil:
    """a := f(a) in place; f is tanh or max(0, .)."""
    cdef Py_ssize_t i
    if relu:
        for i in range(n):
            a[i] = a[i] if a[i] > 0 else 0
    elif floating is float:
        rnn_ext_tanhf_inplace(a, n)
    else:
        for i in range(n):
            a[i] = tanh(a[i])


cdef inline void activate_backward(floating* d, const floating* h, Py_ssize_t n,
                                   bint relu) noexcept nogil:
    """d := d * f'(a), with f' written through h = f(a)."""
    cdef Py_ssize_t i
    if relu:
        # forward: h = max(0, a)  ->  da = [a > 0] dh, and a > 0 iff h > 0
        for i in range(n):
            d[i] = d[i] if h[i] > 0 else 0
    else:
        # forward: h = tanh(a)  ->  da = (1 - h*h) dh
        for i in range(n):
            d[i] = d[i] * (1 - h[i] * h[i])


cdef inline void add_row(floating* out, const floating* row, Py_ssize_t n) noexcept nogil:
    """out += row."""
    cdef Py_ssize_t i
    for i in range(n):
        out[i] += row[i]


cdef inline void column_sums(floating* out, const floating* A, Py_ssize_t rows,
                             Py_ssize_t cols) noexcept nogil:
    """out := A.sum(axis=0) for a row-major (rows, cols) A; overwrites out."""
    cdef Py_ssize_t r
    memset(out, 0, cols * sizeof(floating))
    for r in range(rows):
        add_row(out, A + r * cols, cols)


# ---------------------------------------------------------------------------
# the recurrence: eq. (1) forward, eqs. (5)-(7) backward

cdef void rnn_forward(floating* hs, const floating* xf, const Py_ssize_t* xi,
                      const floating* U, const floating* UT, const floating* W,
                      const floating* WT, const floating* b, const Py_ssize_t* lengths,
                      int T, int B, int D, int H, bint relu) noexcept nogil:
    """Eq. (1) over the whole sequence.  Overwrites hs[1:].

    hs is (T+1, B, H); hs[0] = h0 on entry
    xf is (T, B, D) float input, or NULL when xi is given
    xi is (T, B) ids in [0, D), or NULL
    U is (H, D); UT is U.T (D, H) contiguous, or NULL (then ids gather strided)
    W is (H, H); WT is W.T (H, H) contiguous, or NULL; b is (H,) or NULL
    lengths is (B,) in [1, T], or NULL
    """
    cdef Py_ssize_t TB = <Py_ssize_t>T * B, r, j, t, bb, i
    cdef floating* A = hs + <Py_ssize_t>B * H     # A aliases hs[1:]
    cdef floating* cur
    cdef const floating* prev
    # input projection, all T*B rows at once: A = X @ U.T + b
    if xf != NULL:
        if b != NULL:
            for r in range(TB):
                memcpy(A + r * H, b, H * sizeof(floating))
        # A = X @ U.T + A
        gemm(c'N', c'T', <int>TB, H, D, 1, xf, D, U, D,
             1 if b != NULL else 0, A, H)
    else:
        # an id i stands for the one-hot e_i, so U x_t is column i of U
        for r in range(TB):
            i = xi[r]
            cur = A + r * H
            if UT != NULL:
                memcpy(cur, UT + i * H, H * sizeof(floating))
            else:
                for j in range(H):
                    cur[j] = U[j * D + i]
            if b != NULL:
                add_row(cur, b, H)
    # the recurrence: one BLAS call per step
    for t in range(T):
        prev = hs + t * B * H
        cur = hs + (t + 1) * B * H
        if B == 1:
            # cur += W @ prev
            gemv(c'N', H, H, 1, W, H, prev, 1, cur)
        elif WT != NULL:
            # cur += prev @ W.T, read from W.T's rows: the no-transpose GEMM,
            # which OpenBLAS runs up to 3x faster at small B than the other
            gemm(c'N', c'N', B, H, H, 1, prev, H, WT, H, 1, cur, H)
        else:
            # cur += prev @ W.T
            gemm(c'N', c'T', B, H, H, 1, prev, H, W, H, 1, cur, H)
        activate(cur, <Py_ssize_t>B * H, relu)
        if lengths != NULL:
            # packed-sequence semantics: a finished sequence's state is zero
            for bb in range(B):
                if t >= lengths[bb]:
                    memset(cur + bb * H, 0, H * sizeof(floating))


cdef void rnn_backward(floating* delta, const floating* hs, const floating* xf,
                       const Py_ssize_t* xi, const floating* U, const floating* W,
                       floating* dU, floating* dUT, floating* dW, floating* db,
                       floating* dh0, floating* dx,
                       int T, int B, int D, int H, bint relu) noexcept nogil:
    """BPTT, eqs. (5)-(7).  Overwrites every output it is given.

    delta is (T, B, H): dL/dh_t from the output layer on entry (dZ @ V),
        the δ_t of eq. (5) on exit
    hs is (T+1, B, H), the forward's hidden states with h0 in row 0
    xf is (T, B, D) or NULL; xi is (T, B) ids or NULL
    dU (H, D), dW (H, H), db (H,) or NULL, dh0 (B, H), dx (T, B, D) or NULL
    dUT is (D, H) scratch for the id scatter-add, or NULL (then strided)

    Steps past a sequence's length need no mask here: their rows of dZ are
    zero, so δ is zero there by induction from δ_T = 0.
    """
    cdef Py_ssize_t TB = <Py_ssize_t>T * B, r, j, i, t
    cdef floating* cur
    cdef const floating* row
    # eq. (5), back to front: δ_t = (dH[t] + δ_{t+1} @ W) * f'(a_t)
    for t in range(T - 1, -1, -1):
        cur = delta + t * B * H
        if t < T - 1:
            if B == 1:
                # cur += W.T @ δ_{t+1}
                gemv(c'T', H, H, 1, W, H, cur + H, 1, cur)
            else:
                # cur += δ_{t+1} @ W
                gemm(c'N', c'N', B, H, H, 1, cur + B * H, H, W, H, 1, cur, H)
        activate_backward(cur, hs + (t + 1) * B * H, <Py_ssize_t>B * H, relu)
    # eq. (6): dW = δ.T @ H_prev over all T*B rows (H_prev = hs[:-1])
    gemm(c'T', c'N', H, H, <int>TB, 1, delta, H, hs, H, 0, dW, H)
    if db != NULL:
        # eq. (6): db = Σ_t δ_t
        column_sums(db, delta, TB, H)
    if xf != NULL:
        # eq. (6): dU = δ.T @ X
        gemm(c'T', c'N', H, D, <int>TB, 1, delta, H, xf, D, 0, dU, D)
        # eq. (7): dx = δ @ U
        if dx != NULL:
            gemm(c'N', c'N', <int>TB, D, H, 1, delta, H, U, D, 0, dx, D)
    elif dUT != NULL:
        # eq. (6) for ids: dU[:, i] += δ_t row, scattered into dU.T's rows
        memset(dUT, 0, <Py_ssize_t>D * H * sizeof(floating))
        for r in range(TB):
            add_row(dUT + xi[r] * H, delta + r * H, H)
        for i in range(D):
            for j in range(H):
                dU[j * D + i] = dUT[i * H + j]
    else:
        memset(dU, 0, <Py_ssize_t>H * D * sizeof(floating))
        for r in range(TB):
            i = xi[r]
            row = delta + r * H
            for j in range(H):
                dU[j * D + i] += row[j]
    # eq. (7): dh0 = δ_0 @ W
    if B == 1:
        gemv(c'T', H, H, 1, W, H, delta, 0, dh0)
    else:
        gemm(c'N', c'N', B, H, H, 1, delta, H, W, H, 0, dh0, H)


# ---------------------------------------------------------------------------
# the output layer: eqs. (2)-(4)

cdef void output_forward(floating* Z, const floating* hs1, const floating* V,
                         const floating* c, Py_ssize_t TB, int H,
                         int K) noexcept nogil:
    """Eq. (2)'s logits.  Overwrites Z.

    Z is (T*B, K); hs1 is H = hs[1:] as (T*B, H); V is (K, H); c is (K,) or NULL
    """
    cdef Py_ssize_t r
    if c != NULL:
        for r in range(TB):
            memcpy(Z + r * K, c, K * sizeof(floating))
    # Z = H @ V.T + Z
    gemm(c'N', c'T', <int>TB, K, H, 1, hs1, H, V, H, 1 if c != NULL else 0, Z, K)


cdef double softmax_loss(floating* Z, const Py_ssize_t* yi, const floating* ys,
                         const Py_ssize_t* lengths, int T, int B, int K,
                         Py_ssize_t ignore_index, floating scale,
                         Mode mode) noexcept nogil:
    """Row-wise stable softmax and eq. (3)'s loss, fused into one pass over Z.

    Z is (T, B, K) logits on entry; see Mode for what it holds on exit
    yi is (T, B) class ids (ignore_index counts nothing), or NULL
    ys is (T, B, K) target rows (soft targets), or NULL
    lengths is (B,) or NULL: rows at t >= lengths[b] count nothing
    Returns the summed loss, accumulated in double whatever the dtype.
    """
    cdef double total = 0, s, ysum, ydotz, zt = 0
    cdef floating m, inv
    cdef floating* z
    cdef const floating* y
    cdef Py_ssize_t t, bb, k, target = 0
    cdef bint counted
    for t in range(T):
        for bb in range(B):
            z = Z + (t * B + bb) * K
            counted = lengths == NULL or t < lengths[bb]
            if counted and yi != NULL:
                target = yi[t * B + bb]
                counted = target != ignore_index
            if not counted and mode != PROBS:
                if mode == DZ:
                    # this row contributes no loss and no gradient
                    memset(z, 0, K * sizeof(floating))
                continue
            # log-softmax with the row's max subtracted: exact, and exp <= 1
            m = z[0]
            for k in range(1, K):
                if z[k] > m:
                    m = z[k]
            s = 0
            ysum = 0
            ydotz = 0
            y = ys + (t * B + bb) * K if ys != NULL else NULL
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
            for k in range(K):
                s += z[k]
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


cdef void output_backward(const floating* dZ, const floating* hs1,
                          const floating* V, floating* dV, floating* dc,
                          floating* dH, Py_ssize_t TB, int H,
                          int K) noexcept nogil:
    """Eq. (4) and the output layer's share of eq. (5).  Overwrites its outputs.

    dZ is (T*B, K); hs1 is H = hs[1:] as (T*B, H); V is (K, H)
    dV (K, H); dc (K,) or NULL; dH (T*B, H) or NULL
    """
    # eq. (4): dV = dZ.T @ H
    gemm(c'T', c'N', K, H, <int>TB, 1, dZ, K, hs1, H, 0, dV, H)
    if dc != NULL:
        # eq. (4): dc = Σ_t dZ_t
        column_sums(dc, dZ, TB, K)
    if dH != NULL:
        # forward: z = h @ V.T + c  ->  dh = dz @ V
        gemm(c'N', c'N', <int>TB, H, K, 1, dZ, K, V, H, 0, dH, H)


# ---------------------------------------------------------------------------
# the Python-facing passes: memoryviews in, the GIL released around the work

cdef inline int expect(bint ok, str what) except -1:
    # The model validates everything; this guards the buffers' sizes against
    # a caller that bypassed it (a model changed in place, a direct call).
    if not ok:
        raise ValueError(f"rnn_ext._kernels: inconsistent shapes: {what}")
    return 0


cdef inline const floating* ptr1(const floating[::1] a) noexcept:
    return &a[0] if a is not None else NULL


cdef inline const floating* ptr2(const floating[:, ::1] a) noexcept:
    return &a[0, 0] if a is not None else NULL


cdef inline const Py_ssize_t* iptr(const Py_ssize_t[::1] a) noexcept:
    return &a[0] if a is not None else NULL


cdef int check_pass(floating[:, :, ::1] hs, floating[:, ::1] Z,
                    const floating[:, ::1] xf, const Py_ssize_t[::1] xi,
                    const floating[:, ::1] U, const floating[:, ::1] UT,
                    const floating[:, ::1] W, const floating[:, ::1] WT,
                    const floating[::1] b,
                    const floating[:, ::1] V, const floating[::1] c,
                    const Py_ssize_t[::1] lengths) except -1:
    """The shapes every pass shares, against hs (T+1, B, H) and Z (T*B, K)."""
    cdef Py_ssize_t T = hs.shape[0] - 1, B = hs.shape[1], H = hs.shape[2]
    cdef Py_ssize_t D = U.shape[1], K = Z.shape[1]
    expect(T >= 1 and B >= 1 and H >= 1 and D >= 1 and K >= 1, "empty")
    expect(U.shape[0] == H and W.shape[0] == H and W.shape[1] == H, "U, W")
    expect(WT is None or (WT.shape[0] == H and WT.shape[1] == H), "WT")
    expect(V.shape[0] == K and V.shape[1] == H and Z.shape[0] == T * B, "V, Z")
    expect(b is None or b.shape[0] == H, "b")
    expect(c is None or c.shape[0] == K, "c")
    expect((xf is None) != (xi is None), "exactly one of xf, xi")
    expect(xf is None or (xf.shape[0] == T * B and xf.shape[1] == D), "xf")
    expect(xi is None or xi.shape[0] == T * B, "xi")
    expect(UT is None or (xi is not None and UT.shape[0] == D and UT.shape[1] == H), "UT")
    expect(lengths is None or lengths.shape[0] == B, "lengths")
    return 0


# What run_pass computes (the model passes these codes as ``what``).
FORWARD = -1  # h and the probabilities (Z := softmax); no targets
LOSS = 0      # the loss alone
GRAD_V = 1    # the loss, dV and dc (eq. 4)
FULL = 2      # the loss and every gradient (eqs. 4-7)


def run_pass(floating[:, :, ::1] hs not None, floating[:, ::1] Z not None,
             const floating[:, ::1] xf, const Py_ssize_t[::1] xi,
             const Py_ssize_t[::1] yi, const floating[:, ::1] ys,
             const floating[:, ::1] U not None, const floating[:, ::1] UT,
             const floating[:, ::1] W not None, const floating[:, ::1] WT,
             const floating[::1] b,
             const floating[:, ::1] V not None, const floating[::1] c,
             const Py_ssize_t[::1] lengths, bint relu,
             Py_ssize_t ignore_index, double scale, int what,
             floating[:, ::1] dV, floating[::1] dc,
             floating[:, :, ::1] delta, floating[:, ::1] dU,
             floating[:, ::1] dUT, floating[:, ::1] dW, floating[::1] db,
             floating[:, ::1] dh0, floating[:, ::1] dx):
    """Eqs. (1)-(7): one whole pass, forward and, by ``what``, backward.

    what : FORWARD, LOSS, GRAD_V or FULL (module constants)
    hs : (T+1, B, H), hs[0] = h0 on entry; hs[1:] = h on exit (overwritten)
    Z : (T*B, K): the probabilities on exit with FORWARD, scratch otherwise
    xf : (T*B, D) float input, or None;  xi : (T*B,) ids, or None
    yi : (T*B,) class ids, or None;  ys : (T*B, K) target rows, or None
        (both None with FORWARD, exactly one otherwise)
    U (H, D), UT (D, H) or None, W (H, H), WT (H, H) or None, b (H,) or None,
    V (K, H), c (K,) or None
    lengths : (B,) or None
    scale : 1 for reduction="sum", 1/count for "mean"; applied to dZ only
    dV (K, H), dc (K,) or None: overwritten with GRAD_V and FULL
    delta (T, B, H), dU (H, D), dUT (D, H) or None, dW (H, H), db (H,) or None,
    dh0 (B, H), dx (T*B, D) or None: overwritten with FULL
    Returns the summed (unscaled) loss as a float (0.0 with FORWARD).
    """
    check_pass(hs, Z, xf, xi, U, UT, W, WT, b, V, c, lengths)
    cdef Py_ssize_t n = Z.shape[0], k = Z.shape[1]
    cdef Py_ssize_t h = hs.shape[2], d = U.shape[1], nb = hs.shape[1]
    expect(FORWARD <= what <= FULL, "what")
    if what == FORWARD:
        expect(yi is None and ys is None, "targets given to a forward pass")
    else:
        expect((yi is None) != (ys is None), "exactly one of yi, ys")
    expect(yi is None or yi.shape[0] == n, "yi")
    expect(ys is None or (ys.shape[0] == n and ys.shape[1] == k), "ys")
    if what >= GRAD_V:
        expect(dV is not None and dV.shape[0] == k and dV.shape[1] == h, "dV")
        expect((dc is None) == (c is None) and (dc is None or dc.shape[0] == k), "dc")
    if what == FULL:
        expect(delta is not None and delta.shape[0] * delta.shape[1] == n
               and delta.shape[1] == nb and delta.shape[2] == h, "delta")
        expect(dU is not None and dU.shape[0] == h and dU.shape[1] == d, "dU")
        expect(dUT is None or (xi is not None and dUT.shape[0] == d and dUT.shape[1] == h), "dUT")
        expect(dW is not None and dW.shape[0] == h and dW.shape[1] == h, "dW")
        expect((db is None) == (b is None) and (db is None or db.shape[0] == h), "db")
        expect(dh0 is not None and dh0.shape[0] == nb and dh0.shape[1] == h, "dh0")
        expect(dx is None or (xf is not None and dx.shape[0] == n and dx.shape[1] == d), "dx")
    cdef int T = hs.shape[0] - 1, B = hs.shape[1], H = hs.shape[2]
    cdef int D = U.shape[1], K = V.shape[0]
    cdef Py_ssize_t TB = <Py_ssize_t>T * B
    cdef floating* phs = &hs[0, 0, 0]
    cdef floating* pZ = &Z[0, 0]
    cdef const floating* pxf = ptr2(xf)
    cdef const Py_ssize_t* pxi = iptr(xi)
    cdef const Py_ssize_t* pyi = iptr(yi)
    cdef const floating* pys = ptr2(ys)
    cdef const floating* pU = &U[0, 0]
    cdef const floating* pUT = ptr2(UT)
    cdef const floating* pW = &W[0, 0]
    cdef const floating* pWT = ptr2(WT)
    cdef const floating* pb = ptr1(b)
    cdef const floating* pV = &V[0, 0]
    cdef const floating* pc = ptr1(c)
    cdef const Py_ssize_t* plen = iptr(lengths)
    cdef floating* pdV = NULL
    cdef floating* pdc = NULL
    cdef floating* pdelta = NULL
    cdef floating* pdU = NULL
    cdef floating* pdUT = NULL
    cdef floating* pdW = NULL
    cdef floating* pdb = NULL
    cdef floating* pdh0 = NULL
    cdef floating* pdx = NULL
    cdef Mode mode = PROBS if what == FORWARD else (LOSS_ONLY if what == LOSS else DZ)
    cdef double total
    if what >= GRAD_V:
        pdV = &dV[0, 0]
        pdc = <floating*>ptr1(dc)
    if what == FULL:
        pdelta = &delta[0, 0, 0]
        pdU = &dU[0, 0]
        pdUT = <floating*>ptr2(dUT)
        pdW = &dW[0, 0]
        pdb = <floating*>ptr1(db)
        pdh0 = &dh0[0, 0]
        pdx = <floating*>ptr2(dx)
    with nogil:
        rnn_forward(phs, pxf, pxi, pU, pUT, pW, pWT, pb, plen, T, B, D, H, relu)
        output_forward(pZ, phs + <Py_ssize_t>B * H, pV, pc, TB, H, K)
        total = softmax_loss(pZ, pyi, pys, plen, T, B, K, ignore_index,
                             <floating>scale, mode)
        if mode == DZ:
            output_backward(pZ, phs + <Py_ssize_t>B * H, pV, pdV, pdc, pdelta,
                            TB, H, K)
        if pdelta != NULL:
            rnn_backward(pdelta, phs, pxf, pxi, pU, pW, pdU, pdUT, pdW, pdb,
                         pdh0, pdx, T, B, D, H, relu)
    return total


# ---------------------------------------------------------------------------
# a helper for validation (rnn_ext/_validation.py): one pass, not three

def id_range(const Py_ssize_t[::1] ids not None, Py_ssize_t ignore, bint use_ignore):
    """(min, max, count) over the ids, leaving out those equal to ``ignore``
    when ``use_ignore``; (0, -1, 0) when none is left."""
    cdef Py_ssize_t i, v, lo = 0, hi = -1, n = 0
    with nogil:
        for i in range(ids.shape[0]):
            v = ids[i]
            if use_ignore and v == ignore:
                continue
            if n == 0 or v < lo:
                lo = v
            if n == 0 or v > hi:
                hi = v
            n += 1
    return lo, hi, n

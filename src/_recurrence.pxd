# The recurrent layer: eq. (1) forward and eqs. (5)-(7) backward, for a stack
# of L layers, each in one or two directions (DESIGN.md §6).
#
# Shape letters: T steps, B batch, D input size, H hidden size, L layers,
# dirs directions (1 or 2), In the input size of a layer (D for layer 0,
# dirs*H above it).  Rows are time-major: row t*B + b is step t of sequence b.
#
# Each layer-direction ld = k*dirs + d has one hidden-state buffer of T+1 rows
# of (B, H), so that both its states and their predecessors are contiguous:
#   forward  (d = 0): row 0 = h0, row t+1 = h_t;      H = rows 1..T, H_prev = rows 0..T-1
#   reverse  (d = 1): row T = h0, row t   = h_t;      H = rows 0..T-1, H_prev = rows 1..T
# After a forward pass every state row past a sequence's length is zero (the
# packed-sequence convention), in both directions.
#
# Parameters live in one flat buffer; offs (L*dirs, 3) holds each
# layer-direction's offsets of U (H, In), W (H, H) and b (H,) (-1: no bias).
#
# Everything here trusts its inputs: rnn_ext/_validation.py and the entry
# points of _kernels.pyx check shapes first.
from cython cimport floating
from libc.string cimport memcpy, memset

from libc.stddef cimport ptrdiff_t

from _blas cimport gemm, gemv
from _pgemm cimport pgemm, pgemm_tn_sum
from _pcols cimport pcolumn_sums, pgather, pscatter, ptranspose
from _elementwise cimport activate, activate_backward, add_row, column_sums, transpose


cdef extern from "wsr.h" nogil:
    # the weight-stationary float32 recurrence (src/wsr.h, DESIGN.md §7)
    size_t rnn_ext_wsr_packed_size(int H)
    void rnn_ext_wsr_pack(const float* W, int H, float* pf, float* pb)
    void rnn_ext_wsr_pack_threads(const float* W, int H, float* pf, float* pb, int nthreads)
    void rnn_ext_wsr_forward(const float* pf, int T, int B, int H, float* hs, int reverse,
                             const ptrdiff_t* lengths, int relu, int nthreads)
    void rnn_ext_wsr_backward(const float* pb, int T, int B, int H, float* delta,
                              const float* hs, int reverse, const ptrdiff_t* lengths,
                              int relu, int nthreads)
    const char* rnn_ext_wsr_path()


cdef inline floating* state_rows(floating* h, int B, int H, int d) noexcept nogil:
    """The (T*B, H) block of states inside a direction's (T+1, B, H) buffer."""
    return h + (<Py_ssize_t>B * H if d == 0 else 0)


# ---------------------------------------------------------------------------
# one direction's recurrence

cdef inline void recur_forward(floating* hs, const floating* W, const floating* WT,
                               int T, int B, int H, bint reverse,
                               const Py_ssize_t* lengths, bint relu) noexcept nogil:
    """Eq. (1)'s recurrence for one layer-direction.  Overwrites the state rows.

    hs is (T+1, B, H) laid out as in the header; on entry each state row holds
    A[t] = x_t @ U.T + b, on exit h_t = f(A[t] + h_prev @ W.T)
    W is (H, H); WT is W.T (H, H) contiguous or NULL
    lengths is (B,) or NULL.  Rows past a length: forward zero; reverse a copy
    of h0, so the sequence's own last valid step starts from h0 (the caller
    zeroes them afterwards with clear_padded).
    """
    cdef Py_ssize_t BH = <Py_ssize_t>B * H, s, t, bb
    cdef floating* cur
    cdef const floating* prev
    cdef const floating* h0 = hs + <Py_ssize_t>T * BH if reverse else hs
    for s in range(T):
        t = T - 1 - s if reverse else s
        cur = hs + (t if reverse else t + 1) * BH
        prev = hs + (t + 1 if reverse else t) * BH
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
        activate(cur, BH, relu)
        if lengths != NULL:
            for bb in range(B):
                if t >= lengths[bb]:
                    if reverse:
                        memcpy(cur + bb * H, h0 + bb * H, H * sizeof(floating))
                    else:
                        memset(cur + bb * H, 0, H * sizeof(floating))


cdef inline void clear_padded(floating* hs, int T, int B, int H,
                              const Py_ssize_t* lengths) noexcept nogil:
    """Zero a reverse direction's state rows past each sequence's length."""
    cdef Py_ssize_t t, bb
    for t in range(T):
        for bb in range(B):
            if t >= lengths[bb]:
                memset(hs + (t * B + bb) * H, 0, H * sizeof(floating))


cdef inline void recur_backward(floating* delta, const floating* hs, const floating* W,
                                int T, int B, int H, bint reverse,
                                const Py_ssize_t* lengths, bint relu) noexcept nogil:
    """Eq. (5) for one layer-direction, in the opposite order of its forward.

    delta is (T, B, H): dL/dh_t from above on entry, δ_t on exit
    hs is the forward's (T+1, B, H) buffer; W is (H, H)
    Rows past a sequence's length are zeroed whatever the upstream held.
    """
    cdef Py_ssize_t BH = <Py_ssize_t>B * H, s, t, bb
    cdef floating* cur
    cdef const floating* nxt
    for s in range(T):
        t = s if reverse else T - 1 - s
        cur = delta + t * BH
        if s > 0:
            nxt = delta + (t - 1 if reverse else t + 1) * BH
            if B == 1:
                # cur += W.T @ δ_next
                gemv(c'T', H, H, 1, W, H, nxt, 1, cur)
            else:
                # cur += δ_next @ W
                gemm(c'N', c'N', B, H, H, 1, nxt, H, W, H, 1, cur, H)
        if lengths != NULL:
            for bb in range(B):
                if t >= lengths[bb]:
                    memset(cur + bb * H, 0, H * sizeof(floating))
        # forward: h = f(a)  ->  δ = dh * f'(a)
        activate_backward(cur, hs + (t if reverse else t + 1) * BH, BH, relu)


# ---------------------------------------------------------------------------
# the whole stack

cdef inline void stack_forward(floating* hs, const floating* xf, const Py_ssize_t* xi,
                               const floating* flat, const Py_ssize_t* offs,
                               const floating* masks, floating* xin,
                               floating* WT, floating* UT, const Py_ssize_t* lengths,
                               int T, int B, int D, int H, int L, int dirs,
                               bint relu, float* packed, int nthreads) noexcept nogil:
    """Eq. (1) for every layer and direction.  Overwrites every state row.

    hs is (L*dirs, T+1, B, H), each direction's h0 row set on entry
    xf is (T*B, D) float input, or NULL when xi (T*B,) ids in [0, D) is given
    flat, offs: the parameters (see the header)
    masks is (L-1, T*B, dirs*H) dropout multipliers between layers, or NULL;
        then xin (L-1, T*B, dirs*H) receives each upper layer's masked input
    WT is (H, H) scratch for W.T (used when B > 1), or NULL
    UT is (D, H) scratch for gathering ids from U.T's rows, or NULL (strided)
    lengths is (B,) in [1, T], or NULL
    packed is rnn_ext_wsr_packed_size(H) floats of scratch for the float32
        weight-stationary recurrence (W packed once per layer-direction, then
        every step on the panels, nthreads threads), or NULL: a GEMM per step
    """
    cdef Py_ssize_t TB = <Py_ssize_t>T * B, BH = <Py_ssize_t>B * H
    cdef Py_ssize_t S = (T + 1) * BH, r, j, i, e
    cdef int k, d, ld, Hd = dirs * H
    cdef const floating* U
    cdef const floating* W
    cdef const floating* b
    cdef const floating* M
    cdef floating* h
    cdef floating* A
    cdef floating* X
    cdef floating beta
    cdef bint pooled
    for k in range(L):
        for d in range(dirs):
            ld = k * dirs + d
            U = flat + offs[3 * ld]
            W = flat + offs[3 * ld + 1]
            b = flat + offs[3 * ld + 2] if offs[3 * ld + 2] >= 0 else NULL
            h = hs + ld * S
            A = state_rows(h, B, H, d)
            # the input projection, all T*B rows at once: A = X @ U.T + b
            pooled = floating is float and nthreads > 1 and k == 0 and xi != NULL and UT != NULL
            if pooled:
                # the gather below, split by columns on the pool: the same bits (_pcols.pxd)
                ptranspose(<float*>UT, <const float*>U, H, D, nthreads)
                pgather(<float*>A, <const float*>UT, <const float*>b, xi, TB, H, nthreads)
            elif b != NULL:
                for r in range(TB):
                    memcpy(A + r * H, b, H * sizeof(floating))
            beta = 1 if b != NULL else 0
            if pooled:
                pass
            elif k == 0 and xi != NULL:
                # an id i stands for the one-hot e_i, so U x_t is column i of U
                if UT != NULL:
                    transpose(UT, U, H, D)
                for r in range(TB):
                    i = xi[r]
                    if UT != NULL:
                        if b != NULL:
                            add_row(A + r * H, UT + i * H, H)
                        else:
                            memcpy(A + r * H, UT + i * H, H * sizeof(floating))
                    else:
                        for j in range(H):
                            A[r * H + j] = U[j * D + i] + (b[j] if b != NULL else 0)
            elif k == 0:
                # A = X @ U.T + A
                pgemm(nthreads, c'N', c'T', <int>TB, H, D, 1, xf, D, U, D, beta, A, H)
            elif masks != NULL:
                # A = (layer below ⊙ mask) @ U.T + A
                pgemm(nthreads, c'N', c'T', <int>TB, H, Hd, 1, xin + (k - 1) * TB * Hd, Hd, U, Hd,
                      beta, A, H)
            else:
                # A = [h_below_fwd, h_below_rev] @ U.T + A, one GEMM per half of U:
                # the layer below is read where it lies, never concatenated
                for e in range(dirs):
                    pgemm(nthreads, c'N', c'T', <int>TB, H, H, 1,
                          state_rows(hs + ((k - 1) * dirs + e) * S, B, H, <int>e), H,
                          U + e * H, Hd, beta if e == 0 else 1, A, H)
            if floating is float and packed != NULL:
                rnn_ext_wsr_pack_threads(W, H, packed, NULL, nthreads)
                rnn_ext_wsr_forward(packed, T, B, H, h, d == 1, <const ptrdiff_t*>lengths,
                                    relu, nthreads)
            else:
                if B > 1 and WT != NULL:
                    transpose(WT, W, H, H)
                recur_forward(h, W, WT if B > 1 else NULL, T, B, H, d == 1, lengths, relu)
            if d == 1 and lengths != NULL:
                clear_padded(h, T, B, H, lengths)
        if masks != NULL and k < L - 1:
            # dropout between layers: the next layer reads [h_fwd, h_rev] ⊙ mask
            X = xin + k * TB * Hd
            M = masks + k * TB * Hd
            for e in range(dirs):
                A = state_rows(hs + (k * dirs + e) * S, B, H, <int>e)
                for r in range(TB):
                    for j in range(H):
                        X[r * Hd + e * H + j] = A[r * H + j] * M[r * Hd + e * H + j]


cdef inline void stack_backward(floating* delta, const floating* hs, const floating* xf,
                                const Py_ssize_t* xi, const floating* flat,
                                const Py_ssize_t* offs, const floating* masks,
                                const floating* xin, const floating* d_hn,
                                floating* dflat, floating* dx, floating* dh0,
                                floating* dUT, floating* G, floating* dX,
                                const Py_ssize_t* lengths, int T, int B, int D, int H,
                                int L, int dirs, bint relu, float* packed,
                                int nthreads) noexcept nogil:
    """BPTT through the whole stack, eqs. (5)-(7).  Overwrites every output.

    delta is (L*dirs, T, B, H): on entry the top layer's directions hold
        dL/doutput (any values; padded steps are ignored), the rest is scratch;
        on exit δ of every layer-direction
    hs is the forward's (L*dirs, T+1, B, H); xf/xi, flat, offs, masks, xin as
        in stack_forward; d_hn is (L*dirs, B, H) dL/dh_n, or NULL
    dflat is shaped like flat: every parameter's gradient
    dx is (T*B, D) dL/dx, or NULL (ids or not wanted); dh0 is (L*dirs, B, H)
    dUT is (D, H) scratch for the id scatter-add, or NULL (strided)
    G is (B, H) scratch; dX is (T*B, dirs*H) scratch when masks, else NULL
    packed, nthreads: as in stack_forward (W's backward panels)
    """
    cdef Py_ssize_t TB = <Py_ssize_t>T * B, BH = <Py_ssize_t>B * H
    cdef Py_ssize_t S = (T + 1) * BH, r, j, i, e, bb, t, n
    cdef int k, d, ld, Hd = dirs * H
    cdef const floating* W
    cdef const floating* h
    cdef const floating* h0
    cdef const floating* first
    cdef const floating* M
    cdef floating* dl
    cdef floating* dU
    cdef floating* dW
    cdef floating* out
    # the weight gradients' scratch (_pgemm.pxd's pgemm_tn_sum): the packed
    # panels, float32 only
    cdef floating* scratch = NULL
    cdef Py_ssize_t n_scratch = 0
    if floating is float and packed != NULL:
        scratch = packed
        n_scratch = <Py_ssize_t>rnn_ext_wsr_packed_size(H)
    for k in range(L - 1, -1, -1):
        for d in range(dirs):
            ld = k * dirs + d
            W = flat + offs[3 * ld + 1]
            dU = dflat + offs[3 * ld]
            dW = dflat + offs[3 * ld + 1]
            h = hs + ld * S
            dl = delta + ld * T * BH
            if d_hn != NULL:
                # h_n is the state at each sequence's last valid step (forward)
                # or at t = 0 (reverse): its gradient joins the upstream there
                for bb in range(B):
                    t = (lengths[bb] - 1 if lengths != NULL else T - 1) if d == 0 else 0
                    add_row(dl + (t * B + bb) * H, d_hn + (ld * B + bb) * H, H)
            # eq. (5)
            if floating is float and packed != NULL:
                rnn_ext_wsr_pack_threads(W, H, NULL, packed, nthreads)
                rnn_ext_wsr_backward(packed, T, B, H, dl, h, d == 1,
                                     <const ptrdiff_t*>lengths, relu, nthreads)
            else:
                recur_backward(dl, h, W, T, B, H, d == 1, lengths, relu)
            # eq. (6): dW = δ.T @ H_prev over all T*B rows; the packed panels,
            # done with until the next layer-direction, are its scratch
            pgemm_tn_sum(nthreads, H, H, <int>TB, dl, H, h + (BH if d == 1 else 0), H, dW, H,
                         scratch, n_scratch)
            if offs[3 * ld + 2] >= 0:
                # eq. (6): db = Σ_t δ_t
                if floating is float and packed != NULL:
                    # in fixed parts of rows, on the pool: the same bits for every
                    # thread count (_pcols.pxd)
                    pcolumn_sums(<float*>dflat + offs[3 * ld + 2], <const float*>dl, TB, H,
                                 <float*>scratch, n_scratch, nthreads)
                else:
                    column_sums(dflat + offs[3 * ld + 2], dl, TB, H)
            # each sequence's first step in this direction's order: t = 0
            # forward, its last valid step reverse; its predecessor is h0
            if d == 0:
                first = dl
            else:
                for bb in range(B):
                    t = lengths[bb] - 1 if lengths != NULL else T - 1
                    memcpy(G + bb * H, dl + (t * B + bb) * H, H * sizeof(floating))
                first = G
            # eq. (7): dh0 = δ_first @ W
            if B == 1:
                gemv(c'T', H, H, 1, W, H, first, 0, dh0 + ld * BH)
            else:
                gemm(c'N', c'N', B, H, H, 1, first, H, W, H, 0, dh0 + ld * BH, H)
            if d == 1 and lengths != NULL:
                # H_prev's row after a short sequence's last valid step is zero
                # padding, but that step's predecessor is h0: dW += δ ⊗ h0 there
                h0 = h + T * BH
                for bb in range(B):
                    if lengths[bb] < T:
                        # dW += G[b] ⊗ h0[b]
                        for i in range(H):
                            for j in range(H):
                                dW[i * H + j] += G[bb * H + i] * h0[bb * H + j]
            # eq. (6): dU = δ.T @ X
            if k == 0 and xi != NULL:
                # an id's one-hot column: dU[:, i] += δ row, scattered
                if floating is float and packed != NULL and dUT != NULL:
                    # the same, in fixed parts of rows, on the pool: the same bits
                    # for every thread count (_pcols.pxd)
                    pscatter(<float*>dU, <float*>dUT, <const float*>dl, xi, TB, H, D,
                             <float*>scratch, n_scratch, nthreads)
                elif dUT != NULL:
                    memset(dUT, 0, <Py_ssize_t>D * H * sizeof(floating))
                    for r in range(TB):
                        add_row(dUT + xi[r] * H, dl + r * H, H)
                    transpose(dU, dUT, D, H)
                else:
                    memset(dU, 0, <Py_ssize_t>H * D * sizeof(floating))
                    for r in range(TB):
                        i = xi[r]
                        for j in range(H):
                            dU[j * D + i] += dl[r * H + j]
            elif k == 0:
                pgemm_tn_sum(nthreads, H, D, <int>TB, dl, H, xf, D, dU, D, scratch, n_scratch)
            elif masks != NULL:
                pgemm_tn_sum(nthreads, H, Hd, <int>TB, dl, H, xin + (k - 1) * TB * Hd, Hd, dU,
                             Hd, scratch, n_scratch)
            else:
                for e in range(dirs):
                    pgemm_tn_sum(nthreads, H, H, <int>TB, dl, H,
                                 state_rows(<floating*>hs + ((k - 1) * dirs + e) * S, B, H,
                                            <int>e),
                                 H, dU + e * H, Hd, scratch, n_scratch)
        # eq. (7) and its stacked form: the gradient reaching this layer's input
        if k == 0:
            if dx != NULL:
                # dx = Σ_d δ_d @ U_d
                for d in range(dirs):
                    pgemm(nthreads, c'N', c'N', <int>TB, D, H, 1,
                          delta + (k * dirs + d) * T * BH, H,
                          flat + offs[3 * (k * dirs + d)], D, 0 if d == 0 else 1, dx, D)
        elif masks != NULL:
            # forward: x_k = [h_fwd, h_rev] ⊙ mask  ->  dh_below = (Σ_d δ_d @ U_d) ⊙ mask
            for d in range(dirs):
                pgemm(nthreads, c'N', c'N', <int>TB, Hd, H, 1, delta + (k * dirs + d) * T * BH, H,
                      flat + offs[3 * (k * dirs + d)], Hd, 0 if d == 0 else 1, dX, Hd)
            M = masks + (k - 1) * TB * Hd
            for e in range(dirs):
                out = delta + ((k - 1) * dirs + e) * T * BH
                for r in range(TB):
                    for j in range(H):
                        n = r * Hd + e * H + j
                        out[r * H + j] = dX[n] * M[n]
        else:
            # dh_below_e = Σ_d δ_d @ U_d[:, e*H:(e+1)*H]
            for e in range(dirs):
                out = delta + ((k - 1) * dirs + e) * T * BH
                for d in range(dirs):
                    pgemm(nthreads, c'N', c'N', <int>TB, H, H, 1,
                          delta + (k * dirs + d) * T * BH, H,
                          flat + offs[3 * (k * dirs + d)] + e * H, Hd, 0 if d == 0 else 1,
                          out, H)


cdef inline void stack_step(const floating* xf, const Py_ssize_t* xi, const floating* h,
                            floating* h_out, const floating* flat, const Py_ssize_t* offs,
                            int B, int D, int H, int L, bint relu) noexcept nogil:
    """Eq. (1) for one time step through L one-direction layers.  Overwrites h_out.

    xf is (B, D) or NULL when xi (B,) ids is given; h, h_out are (L, B, H)
    """
    cdef Py_ssize_t BH = <Py_ssize_t>B * H, r, j, i
    cdef int k
    cdef const floating* U
    cdef const floating* W
    cdef const floating* b
    cdef const floating* below
    cdef floating* a
    for k in range(L):
        U = flat + offs[3 * k]
        W = flat + offs[3 * k + 1]
        b = flat + offs[3 * k + 2] if offs[3 * k + 2] >= 0 else NULL
        a = h_out + k * BH
        if b != NULL:
            for r in range(B):
                memcpy(a + r * H, b, H * sizeof(floating))
        if k == 0 and xi != NULL:
            # a += U[:, id]: the one-hot's column
            for r in range(B):
                i = xi[r]
                for j in range(H):
                    a[r * H + j] = U[j * D + i] + (a[r * H + j] if b != NULL else 0)
        else:
            below = xf if k == 0 else h_out + (k - 1) * BH
            if B == 1:
                # a += U @ x
                gemv(c'N', H, D if k == 0 else H, 1, U, D if k == 0 else H, below,
                     1 if b != NULL else 0, a)
            else:
                # a += X @ U.T
                gemm(c'N', c'T', B, H, D if k == 0 else H, 1, below, D if k == 0 else H, U,
                     D if k == 0 else H, 1 if b != NULL else 0, a, H)
        if B == 1:
            # a += W @ h
            gemv(c'N', H, H, 1, W, H, h + k * BH, 1, a)
        else:
            # a += h @ W.T
            gemm(c'N', c'T', B, H, H, 1, h + k * BH, H, W, H, 1, a, H)
        activate(a, BH, relu)

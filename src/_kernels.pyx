"""The compiled core's entry points: each validates buffer shapes, then runs
one whole pass without the GIL.

Shape letters (DESIGN.md §2), used in every comment below:
    T time steps, B batch, D input size, H hidden size, K output size,
    L layers, dirs directions (1 or 2), Ld = L*dirs layer-directions.

The computations live beside this file, one job each:
    _recurrence.pxd   the stacked, bidirectional recurrent layer (eqs. 1, 5-7)
    _output.pxd       the heads: linear output, fused softmax cross-entropy, MSE
    _elementwise.pxd  activations, row sums, transpose
    _blas.pxd         the one BLAS shim

Every array is C-contiguous and time-major.  The kernels trust their inputs:
rnn_ext/_validation.py checks dtypes, shapes, contiguity, ranges and
finiteness before anything here runs; the checks below only guard buffer
sizes against a caller that bypassed it.  Scratch is the caller's, new for
each call, or on the short path FastPass's own buffer, which its next call
reuses and no two calls in flight share: concurrent calls share nothing
mutable.
"""
cimport numpy as cnp
cimport cython
from cython cimport floating
from libc.string cimport memcpy, memset

from _elementwise cimport RNN_EXT_HAVE_CLONES
from _output cimport (Mode, PROBS, LOSS_ONLY, DZ, output_forward, output_backward,
                      softmax_loss, squared_error)
from _recurrence cimport (stack_forward, stack_backward, stack_step, state_rows,
                          rnn_ext_wsr_packed_size, rnn_ext_wsr_path)

cdef extern from *:
    """
    #ifndef RNN_EXT_DEBUG
    #define RNN_EXT_DEBUG 0
    #endif
    """
    bint RNN_EXT_DEBUG

cnp.import_array()

#: True in a build made with RNN_EXT_DEBUG=1 (bounds and wraparound checks on).
DEBUG = bool(RNN_EXT_DEBUG)
#: True when the float32 tanh/exp loops also carry an AVX2 clone picked at load.
SIMD_CLONES = bool(RNN_EXT_HAVE_CLONES)

# What a pass computes (the Python classes pass these codes as ``what``).
cdef enum What:
    W_FORWARD = -1  # states and the head's output (probabilities / predictions)
    W_LOSS = 0      # the loss alone
    W_GRAD_V = 1    # the loss and the head's gradients (eq. 4)
    W_FULL = 2      # the loss and every gradient (eqs. 4-7)

FORWARD = W_FORWARD
LOSS = W_LOSS
GRAD_V = W_GRAD_V
FULL = W_FULL

#: The short path's size limit: T*B*max(D, H, K) elements, so that its
#: buffers (FastPass.run allocates them) need no memory check.
cdef enum:
    C_SHORT_MAX = 1 << 22
SHORT_MAX = C_SHORT_MAX

# The heads' losses.
SOFTMAX = 0
MSE = 1


cdef inline int expect(bint ok, str what) except -1:
    if not ok:
        raise ValueError(f"rnn_ext._kernels: inconsistent shapes: {what}")
    return 0


cdef inline const floating* ptr1(const floating[::1] a) noexcept:
    return &a[0] if a is not None else NULL


cdef inline const floating* ptr2(const floating[:, ::1] a) noexcept:
    return &a[0, 0] if a is not None else NULL


cdef inline const floating* ptr3(const floating[:, :, ::1] a) noexcept:
    return &a[0, 0, 0] if a is not None else NULL


cdef inline const Py_ssize_t* iptr(const Py_ssize_t[::1] a) noexcept:
    return &a[0] if a is not None else NULL


cdef int check_offs(const floating[::1] flat, const Py_ssize_t[:, ::1] offs, Py_ssize_t D,
                    Py_ssize_t H, int dirs) except -1:
    """offs (Ld, 3): each layer-direction's U (H, In), W (H, H), b (H,) (-1: none)
    lie inside flat; In is D for layer 0, dirs*H above."""
    cdef Py_ssize_t ld, In, need
    expect(offs.shape[1] == 3, "offs")
    for ld in range(offs.shape[0]):
        In = D if ld < dirs else dirs * H
        need = max(offs[ld, 0] + H * In, offs[ld, 1] + H * H, offs[ld, 2] + H)
        expect(offs[ld, 0] >= 0 and offs[ld, 1] >= 0 and offs[ld, 2] >= -1
               and need <= flat.shape[0], "offs beyond flat")
    return 0


cdef int check_stack(floating[:, :, :, ::1] hs, const floating[:, ::1] xf,
                     const Py_ssize_t[::1] xi, const floating[::1] flat,
                     const Py_ssize_t[:, ::1] offs, const floating[:, :, ::1] masks,
                     const floating[:, :, ::1] xin, const Py_ssize_t[::1] lengths,
                     int D, int dirs) except -1:
    """The shapes the layer's forward and backward share; hs is (Ld, T+1, B, H)."""
    cdef Py_ssize_t Ld = hs.shape[0], T = hs.shape[1] - 1, B = hs.shape[2], H = hs.shape[3]
    cdef Py_ssize_t L = Ld // dirs
    expect(dirs in (1, 2) and Ld == L * dirs and L >= 1 and T >= 1 and B >= 1 and H >= 1
           and D >= 1, "hs, dirs")
    expect(offs.shape[0] == Ld, "offs")
    check_offs(flat, offs, D, H, dirs)
    expect((xf is None) != (xi is None), "exactly one of xf, xi")
    expect(xf is None or (xf.shape[0] == T * B and xf.shape[1] == D), "xf")
    expect(xi is None or xi.shape[0] == T * B, "xi")
    expect((masks is None) == (xin is None), "masks and xin together")
    if masks is not None:
        expect(masks.shape[0] == L - 1 and masks.shape[1] == T * B
               and masks.shape[2] == dirs * H, "masks")
        expect(xin.shape[0] == L - 1 and xin.shape[1] == T * B
               and xin.shape[2] == dirs * H, "xin")
    expect(lengths is None or lengths.shape[0] == B, "lengths")
    return 0


cdef int check_scratch(floating[:, ::1] WT, floating[:, ::1] UT, Py_ssize_t D, Py_ssize_t H,
                       bint ids) except -1:
    expect(WT is None or (WT.shape[0] == H and WT.shape[1] == H), "WT")
    expect(UT is None or (ids and UT.shape[0] == D and UT.shape[1] == H), "UT")
    return 0


cdef int check_backward(floating[:, :, :, ::1] hs, floating[:, :, :, ::1] delta,
                        const floating[::1] flat, floating[::1] dflat, floating[:, ::1] dx,
                        floating[:, :, ::1] dh0, floating[:, ::1] dUT, floating[:, ::1] G,
                        floating[:, ::1] dX, const floating[:, ::1] xf,
                        const floating[:, :, ::1] masks) except -1:
    cdef Py_ssize_t Ld = hs.shape[0], T = hs.shape[1] - 1, B = hs.shape[2], H = hs.shape[3]
    expect(delta.shape[0] == Ld and delta.shape[1] == T and delta.shape[2] == B
           and delta.shape[3] == H, "delta")
    expect(dflat.shape[0] == flat.shape[0], "dflat")
    expect(dx is None or (xf is not None and dx.shape[0] == xf.shape[0]
                          and dx.shape[1] == xf.shape[1]), "dx")
    expect(dh0.shape[0] == Ld and dh0.shape[1] == B and dh0.shape[2] == H, "dh0")
    expect(dUT is None or dUT.shape[1] == H, "dUT")
    expect(G.shape[0] == B and G.shape[1] == H, "G")
    expect((masks is None) or (dX is not None and dX.shape[0] == T * B
                               and dX.shape[1] == masks.shape[2]), "dX")
    return 0


cdef float* check_packed(float[::1] packed, Py_ssize_t H) except? NULL:
    if packed is None:
        return NULL
    expect(<size_t>packed.shape[0] >= rnn_ext_wsr_packed_size(<int>H), "packed")
    return &packed[0]


def wsr_packed_size(int H):
    """Floats of scratch the weight-stationary recurrence packs W into."""
    return rnn_ext_wsr_packed_size(H)


def wsr_path():
    """The instruction-set path of the float32 weight-stationary recurrence."""
    return rnn_ext_wsr_path().decode()


# ---------------------------------------------------------------------------
# the recurrent layer

def layer_forward(floating[:, :, :, ::1] hs not None, const floating[:, ::1] xf,
                  const Py_ssize_t[::1] xi, const floating[::1] flat not None,
                  const Py_ssize_t[:, ::1] offs not None, int D, int dirs,
                  const floating[:, :, ::1] masks, floating[:, :, ::1] xin,
                  floating[:, ::1] WT, floating[:, ::1] UT,
                  const Py_ssize_t[::1] lengths, bint relu, float[::1] packed=None,
                  int nthreads=0):
    """Eq. (1) through every layer and direction, in one GIL-free call.

    hs : (Ld, T+1, B, H), each direction's h0 row set (forward: row 0,
        reverse: row T; see _recurrence.pxd); the states on exit
    xf : (T*B, D) floats, or None;  xi : (T*B,) ids, or None
    flat : every parameter; offs : (Ld, 3) offsets of U, W, b (-1: no bias)
    masks : (L-1, T*B, dirs*H) dropout multipliers, or None; xin : scratch like
        masks (the upper layers' masked inputs, kept for the backward), or None
    WT : (H, H) scratch, or None;  UT : (D, H) scratch for ids, or None
    lengths : (B,), or None
    packed : float32 scratch of wsr_packed_size(H) for the weight-stationary
        recurrence (float32 only), or None: a GEMM per step
    nthreads : 0: the BLAS threads as it likes (no pool); n >= 1: every
        parallel part of the pass on n threads of rnn_ext's pool, the large
        products cut into the same parts for every n (src/_pgemm.pxd), so the
        results are bit-identical for every n >= 1
    """
    check_stack(hs, xf, xi, flat, offs, masks, xin, lengths, D, dirs)
    check_scratch(WT, UT, D, hs.shape[3], xi is not None)
    cdef float* ppacked = check_packed(packed, hs.shape[3])
    cdef int T = hs.shape[1] - 1, B = hs.shape[2], H = hs.shape[3]
    cdef int L = hs.shape[0] // dirs
    cdef floating* phs = &hs[0, 0, 0, 0]
    cdef const floating* pxf = ptr2(xf)
    cdef const Py_ssize_t* pxi = iptr(xi)
    cdef const floating* pflat = &flat[0]
    cdef const Py_ssize_t* poffs = &offs[0, 0]
    cdef const floating* pmasks = ptr3(masks)
    cdef floating* pxin = <floating*>ptr3(xin)
    cdef floating* pWT = <floating*>ptr2(WT)
    cdef floating* pUT = <floating*>ptr2(UT)
    cdef const Py_ssize_t* plen = iptr(lengths)
    with nogil:
        stack_forward(phs, pxf, pxi, pflat, poffs, pmasks, pxin, pWT, pUT, plen,
                      T, B, D, H, L, dirs, relu, ppacked, nthreads)


def layer_backward(floating[:, :, :, ::1] delta not None,
                   floating[:, :, :, ::1] hs not None, const floating[:, ::1] xf,
                   const Py_ssize_t[::1] xi, const floating[::1] flat not None,
                   const Py_ssize_t[:, ::1] offs not None, int D, int dirs,
                   const floating[:, :, ::1] masks, floating[:, :, ::1] xin,
                   const floating[:, :, ::1] d_hn, floating[::1] dflat not None,
                   floating[:, ::1] dx, floating[:, :, ::1] dh0 not None,
                   floating[:, ::1] dUT, floating[:, ::1] G not None, floating[:, ::1] dX,
                   const Py_ssize_t[::1] lengths, bint relu, float[::1] packed=None,
                   int nthreads=0):
    """BPTT through every layer and direction (eqs. 5-7), in one GIL-free call.

    delta : (Ld, T, B, H); on entry the top layer's directions hold
        dL/doutput (padded steps are ignored); δ of every layer on exit
    hs, xf, xi, flat, offs, masks, xin, lengths : as given to layer_forward
    d_hn : (Ld, B, H) dL/dh_n, or None
    dflat : like flat, overwritten with every parameter's gradient
    dx : (T*B, D) or None; dh0 : (Ld, B, H); both overwritten
    dUT : (D, H) scratch for ids, or None; G : (B, H) scratch;
    dX : (T*B, dirs*H) scratch when masks, else None
    packed, nthreads : as in layer_forward
    """
    check_stack(hs, xf, xi, flat, offs, masks, xin, lengths, D, dirs)
    check_backward(hs, delta, flat, dflat, dx, dh0, dUT, G, dX, xf, masks)
    cdef float* ppacked = check_packed(packed, hs.shape[3])
    expect(d_hn is None or (d_hn.shape[0] == hs.shape[0] and d_hn.shape[1] == hs.shape[2]
                            and d_hn.shape[2] == hs.shape[3]), "d_hn")
    cdef int T = hs.shape[1] - 1, B = hs.shape[2], H = hs.shape[3]
    cdef int L = hs.shape[0] // dirs
    cdef floating* pdelta = &delta[0, 0, 0, 0]
    cdef const floating* phs = &hs[0, 0, 0, 0]
    cdef const floating* pxf = ptr2(xf)
    cdef const Py_ssize_t* pxi = iptr(xi)
    cdef const floating* pflat = &flat[0]
    cdef const Py_ssize_t* poffs = &offs[0, 0]
    cdef const floating* pmasks = ptr3(masks)
    cdef const floating* pxin = ptr3(xin)
    cdef const floating* pd_hn = ptr3(d_hn)
    cdef floating* pdflat = &dflat[0]
    cdef floating* pdx = <floating*>ptr2(dx)
    cdef floating* pdh0 = &dh0[0, 0, 0]
    cdef floating* pdUT = <floating*>ptr2(dUT)
    cdef floating* pG = &G[0, 0]
    cdef floating* pdX = <floating*>ptr2(dX)
    cdef const Py_ssize_t* plen = iptr(lengths)
    with nogil:
        stack_backward(pdelta, phs, pxf, pxi, pflat, poffs, pmasks, pxin, pd_hn, pdflat,
                       pdx, pdh0, pdUT, pG, pdX, plen, T, B, D, H, L, dirs, relu, ppacked,
                       nthreads)


# ---------------------------------------------------------------------------
# the heads

def head_pass(floating[:, ::1] Z not None, const floating[:, ::1] F not None,
              const Py_ssize_t[::1] yi, const floating[:, ::1] ys,
              const floating[:, ::1] V not None, const floating[::1] c,
              const Py_ssize_t[::1] lengths, int B, int loss, Py_ssize_t ignore_index,
              double scale, int what, floating[:, ::1] dV, floating[::1] dc,
              floating[:, ::1] dF):
    """A head on its own: z = F @ V.T + c, then its loss and gradients by ``what``.

    Z : (N, K) the probabilities (SOFTMAX) or predictions (MSE) on exit with
        FORWARD, scratch otherwise;  F : (N, P) features, rows t*B + b
    yi : (N,) class ids or None; ys : (N, K) target rows or None
    V : (K, P); c : (K,) or None; lengths : (B,) or None (rows past a length
        count nothing); loss : SOFTMAX or MSE; scale : 1, or 1/count for "mean"
    dV (K, P), dc (K,) or None: overwritten from GRAD_V; dF (N, P) with FULL
    Returns the summed (unscaled) loss (0.0 with FORWARD).
    """
    cdef Py_ssize_t N = Z.shape[0]
    cdef int K = Z.shape[1], P = F.shape[1]
    expect(F.shape[0] == N and V.shape[0] == K and V.shape[1] == P and B >= 1
           and N % B == 0, "Z, F, V")
    expect(c is None or c.shape[0] == K, "c")
    expect(lengths is None or lengths.shape[0] == B, "lengths")
    expect(loss in (SOFTMAX, MSE) and FORWARD <= what <= FULL, "loss, what")
    if what != FORWARD:
        expect((yi is None) != (ys is None) and (loss == SOFTMAX or ys is not None), "targets")
    expect(yi is None or yi.shape[0] == N, "yi")
    expect(ys is None or (ys.shape[0] == N and ys.shape[1] == K), "ys")
    if what >= GRAD_V:
        expect(dV is not None and dV.shape[0] == K and dV.shape[1] == P, "dV")
        expect((dc is None) == (c is None) and (dc is None or dc.shape[0] == K), "dc")
    if what == FULL:
        expect(dF is not None and dF.shape[0] == N and dF.shape[1] == P, "dF")
    cdef floating* pZ = &Z[0, 0]
    cdef const floating* pF = &F[0, 0]
    cdef const Py_ssize_t* pyi = iptr(yi)
    cdef const floating* pys = ptr2(ys)
    cdef const floating* pV = &V[0, 0]
    cdef const floating* pc = ptr1(c)
    cdef const Py_ssize_t* plen = iptr(lengths)
    cdef floating* pdV = <floating*>ptr2(dV) if what >= GRAD_V else NULL
    cdef floating* pdc = <floating*>ptr1(dc) if what >= GRAD_V else NULL
    cdef floating* pdF = <floating*>ptr2(dF) if what == FULL else NULL
    cdef Mode mode = PROBS if what == FORWARD else (LOSS_ONLY if what == LOSS else DZ)
    cdef bint softmax = loss == SOFTMAX
    cdef double total
    with nogil:
        output_forward(pZ, pF, <const floating*>NULL, pV, pc, N, P, K, 1)
        if softmax:
            total = softmax_loss(pZ, pyi, pys, plen, N, B, K, ignore_index,
                                 <floating>scale, mode)
        else:
            total = squared_error(pZ, pys, plen, N, B, K, <floating>scale, mode)
        if mode == DZ:
            output_backward(pZ, pF, <const floating*>NULL, pV, pdV, pdc, pdF,
                            <floating*>NULL, N, P, K, <floating*>NULL, 0, 1)
    return total


# ---------------------------------------------------------------------------
# the model: the layer and the softmax head in one fused pass

cdef double run_model(floating* hs, floating* Z, const floating* xf, const Py_ssize_t* xi,
                      const Py_ssize_t* yi, const floating* ys, const floating* flat,
                      const Py_ssize_t* offs, const floating* V, const floating* c,
                      const floating* masks, floating* xin, floating* WT, floating* UT,
                      const Py_ssize_t* lengths, floating* dV, floating* dc, floating* dflat,
                      floating* delta, floating* dx, floating* dh0, floating* dUT,
                      floating* G, floating* dX, int T, int B, int D, int H, int L, int dirs,
                      int K, bint relu, Py_ssize_t ignore_index, floating scale, int what,
                      float* packed, int nthreads) noexcept nogil:
    """The model's pass on checked buffers (model_pass, FastPass): the layer, the
    softmax head and, by ``what``, BPTT.  Returns the summed loss."""
    cdef Py_ssize_t TB = <Py_ssize_t>T * B, BH = <Py_ssize_t>B * H
    cdef Py_ssize_t top = <Py_ssize_t>(L - 1) * dirs
    # the head reads the top layer's states where they lie ...
    cdef const floating* F0 = state_rows(hs + top * (T + 1) * BH, B, H, 0)
    cdef const floating* F1 = (state_rows(hs + (top + 1) * (T + 1) * BH, B, H, 1)
                               if dirs == 2 else NULL)
    # ... and writes dL/doutput straight into the top layer's δ buffers
    cdef floating* dF0 = delta + top * T * BH if what == W_FULL else NULL
    cdef floating* dF1 = dF0 + T * BH if what == W_FULL and dirs == 2 else NULL
    cdef Mode mode = PROBS if what == W_FORWARD else (LOSS_ONLY if what == W_LOSS else DZ)
    cdef double total
    stack_forward(hs, xf, xi, flat, offs, masks, xin, WT, UT, lengths,
                  T, B, D, H, L, dirs, relu, packed, nthreads)
    output_forward(Z, F0, F1, V, c, TB, H, K, nthreads)
    total = softmax_loss(Z, yi, ys, lengths, TB, B, K, ignore_index, scale, mode)
    if mode == DZ:
        # dV's scratch: the packed panels, free between the two recurrences
        output_backward(Z, F0, F1, V, dV, dc, dF0, dF1, TB, H, K,
                        <floating*>packed if floating is float else NULL,
                        <Py_ssize_t>rnn_ext_wsr_packed_size(H) if packed != NULL else 0,
                        nthreads)
    if what == W_FULL:
        stack_backward(delta, hs, xf, xi, flat, offs, masks, xin, <const floating*>NULL,
                       dflat, dx, dh0, dUT, G, dX, lengths, T, B, D, H, L, dirs, relu,
                       packed, nthreads)
    return total


def model_pass(floating[:, :, :, ::1] hs not None, floating[:, ::1] Z not None,
               const floating[:, ::1] xf, const Py_ssize_t[::1] xi,
               const Py_ssize_t[::1] yi, const floating[:, ::1] ys,
               const floating[::1] flat not None, const Py_ssize_t[:, ::1] offs not None,
               int D, int dirs, const floating[:, ::1] V not None, const floating[::1] c,
               const floating[:, :, ::1] masks, floating[:, :, ::1] xin,
               floating[:, ::1] WT, floating[:, ::1] UT, const Py_ssize_t[::1] lengths,
               bint relu, Py_ssize_t ignore_index, double scale, int what,
               floating[::1] dflat, floating[:, ::1] dV, floating[::1] dc,
               floating[:, :, :, ::1] delta, floating[:, ::1] dx, floating[:, :, ::1] dh0,
               floating[:, ::1] dUT, floating[:, ::1] G, floating[:, ::1] dX,
               float[::1] packed=None, int nthreads=0):
    """Eqs. (1)-(7): the layer, the softmax head and, by ``what``, BPTT.

    what : FORWARD, LOSS, GRAD_V or FULL
    hs, xf, xi, flat, offs, D, dirs, masks, xin, WT, UT, lengths : as in
        layer_forward;  Z : (T*B, K), the probabilities on exit with FORWARD
    yi : (T*B,) class ids or ys : (T*B, K) target rows (None with FORWARD)
    V : (K, dirs*H); c : (K,) or None
    scale : 1 for reduction="sum", 1/count for "mean"; applied to dZ only
    dV (K, dirs*H), dc: overwritten from GRAD_V; with FULL also dflat, delta,
        dx, dh0 and the scratch dUT, G, dX as in layer_backward
    packed, nthreads : as in layer_forward
    Returns the summed (unscaled) loss (0.0 with FORWARD).
    """
    check_stack(hs, xf, xi, flat, offs, masks, xin, lengths, D, dirs)
    check_scratch(WT, UT, D, hs.shape[3], xi is not None)
    cdef float* ppacked = check_packed(packed, hs.shape[3])
    cdef int T = hs.shape[1] - 1, B = hs.shape[2], H = hs.shape[3]
    cdef int L = hs.shape[0] // dirs, K = Z.shape[1]
    cdef Py_ssize_t TB = <Py_ssize_t>T * B
    expect(Z.shape[0] == TB and V.shape[0] == K and V.shape[1] == dirs * H, "Z, V")
    expect(c is None or c.shape[0] == K, "c")
    expect(FORWARD <= what <= FULL, "what")
    if what == FORWARD:
        expect(yi is None and ys is None, "targets given to a forward pass")
    else:
        expect((yi is None) != (ys is None), "exactly one of yi, ys")
    expect(yi is None or yi.shape[0] == TB, "yi")
    expect(ys is None or (ys.shape[0] == TB and ys.shape[1] == K), "ys")
    if what >= GRAD_V:
        expect(dV is not None and dV.shape[0] == K and dV.shape[1] == dirs * H, "dV")
        expect((dc is None) == (c is None) and (dc is None or dc.shape[0] == K), "dc")
    if what == FULL:
        expect(dflat is not None and delta is not None and dh0 is not None and G is not None,
               "backward buffers")
        check_backward(hs, delta, flat, dflat, dx, dh0, dUT, G, dX, xf, masks)
    cdef floating* phs = &hs[0, 0, 0, 0]
    cdef floating* pZ = &Z[0, 0]
    cdef const floating* pxf = ptr2(xf)
    cdef const Py_ssize_t* pxi = iptr(xi)
    cdef const Py_ssize_t* pyi = iptr(yi)
    cdef const floating* pys = ptr2(ys)
    cdef const floating* pflat = &flat[0]
    cdef const Py_ssize_t* poffs = &offs[0, 0]
    cdef const floating* pV = &V[0, 0]
    cdef const floating* pc = ptr1(c)
    cdef const floating* pmasks = ptr3(masks)
    cdef floating* pxin = <floating*>ptr3(xin)
    cdef floating* pWT = <floating*>ptr2(WT)
    cdef floating* pUT = <floating*>ptr2(UT)
    cdef const Py_ssize_t* plen = iptr(lengths)
    cdef floating* pdV = <floating*>ptr2(dV) if what >= GRAD_V else NULL
    cdef floating* pdc = <floating*>ptr1(dc) if what >= GRAD_V else NULL
    cdef floating* pdflat = NULL
    cdef floating* pdelta = NULL
    cdef floating* pdx = NULL
    cdef floating* pdh0 = NULL
    cdef floating* pdUT = NULL
    cdef floating* pG = NULL
    cdef floating* pdX = NULL
    if what == FULL:
        pdflat = &dflat[0]
        pdelta = &delta[0, 0, 0, 0]
        pdx = <floating*>ptr2(dx)
        pdh0 = &dh0[0, 0, 0]
        pdUT = <floating*>ptr2(dUT)
        pG = &G[0, 0]
        pdX = <floating*>ptr2(dX)
    cdef double total
    with nogil:
        total = run_model(phs, pZ, pxf, pxi, pyi, pys, pflat, poffs, pV, pc, pmasks, pxin,
                          pWT, pUT, plen, pdV, pdc, pdflat, pdelta, pdx, pdh0, pdUT, pG, pdX,
                          T, B, D, H, L, dirs, K, relu, ignore_index, <floating>scale, what,
                          ppacked, nthreads)
    return total


cdef inline cnp.ndarray new_f32(int nd, Py_ssize_t d0, Py_ssize_t d1=1, Py_ssize_t d2=1,
                                Py_ssize_t d3=1):
    """A new uninitialised C-contiguous float32 array of shape (d0, .., d{nd-1})."""
    cdef cnp.npy_intp dims[4]
    dims[0], dims[1], dims[2], dims[3] = d0, d1, d2, d3
    return cnp.PyArray_EMPTY(nd, dims, cnp.NPY_FLOAT32, 0)


cdef inline Py_ssize_t up16(Py_ssize_t n) noexcept nogil:
    """n rounded up to whole 64-byte lines of floats."""
    return (n + 15) & ~(<Py_ssize_t>15)


cdef class StepPass:
    """A float32 one-direction stack's parameters, and a model's output layer,
    bound once for the common call of generation and streaming: one int id x_t
    and h the float32 state the last step returned.

    ``model.step`` (through FastPass) and ``Recurrent.step`` (V None: the
    states only) run a few microseconds of arithmetic at B = 1, H = 128;
    :meth:`step` checks its two arguments through NumPy's C API and calls the
    kernel, converting nothing.  The arrays are held, not copied: the piece
    assigns into them in place.
    """

    cdef const float[::1] flat
    cdef const Py_ssize_t[:, ::1] offs
    cdef const float[:, ::1] V
    cdef const float[::1] c
    cdef int D, H, L, K
    cdef bint relu

    def __init__(self, const float[::1] flat not None, const Py_ssize_t[:, ::1] offs not None,
                 int D, int H, const float[:, ::1] V, const float[::1] c, bint relu):
        expect(D >= 1 and H >= 1 and offs.shape[0] >= 1, "offs")
        check_offs(flat, offs, D, H, 1)
        expect(V is None and c is None
               or V is not None and V.shape[1] == H and (c is None or c.shape[0] == V.shape[0]),
               "V, c")
        self.flat, self.offs, self.V, self.c = flat, offs, V, c
        self.D, self.H, self.L = D, H, <int>offs.shape[0]
        self.K = 0 if V is None else <int>V.shape[0]
        self.relu = relu

    cpdef object step(self, object x_t, object h):
        """step_pass for one int id x_t and h the float32 state the last step
        returned, (L, H) (or (H,) with one layer).

        Returns (h_out, probs), new arrays of shapes (L, H) and (K,), or h_out
        alone without an output layer, the same as step_pass's; or None,
        computing nothing, for any other x_t or h (an id out of range
        included): the general path then takes the call and reports what is
        wrong.
        """
        if type(x_t) is not int or type(h) is not cnp.ndarray:
            return None
        cdef int L = self.L, H = self.H, D = self.D, K = self.K
        if not 0 <= x_t < D:
            return None
        cdef Py_ssize_t x_id = x_t
        cdef cnp.ndarray a = <cnp.ndarray>h
        cdef int nd = cnp.PyArray_NDIM(a)
        cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(a)
        if (cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(a)
                or not ((nd == 2 and dims[0] == L and dims[1] == H)
                        or (nd == 1 and L == 1 and dims[0] == H))):
            return None
        cdef const float* ph = <const float*>cnp.PyArray_DATA(a)
        cdef cnp.ndarray h_out = new_f32(2, L, H)
        cdef cnp.ndarray Z = new_f32(1, K) if K > 0 else None
        cdef float* pout = <float*>cnp.PyArray_DATA(h_out)
        cdef float* pZ = <float*>cnp.PyArray_DATA(Z) if K > 0 else NULL
        cdef const float* pV = ptr2(self.V)
        cdef const float* pc = ptr1(self.c)
        with nogil:
            run_step(<const float*>NULL, &x_id, ph, pout, &self.flat[0], &self.offs[0, 0],
                     pV, pc, pZ, 1, D, H, L, K, self.relu)
        if K == 0:
            return h_out
        return h_out, Z


cdef class FastPass(StepPass):
    """A float32 model's parameters bound once, for the common call's short path.

    ``forward(x)``, ``loss(x, y)`` and ``loss_and_grad(x, y)`` with (T, B) int
    ids in and class ids out, one direction, no lengths, h0 = 0 and no
    dropout are most of a training loop and of inference; model_pass takes 30
    arguments, and converting them (typed memoryviews cost about 0.1 us each)
    and allocating the buffers one NumPy call at a time costs more than a
    small pass's arithmetic.  This binds what never changes between calls
    (the flat parameters, their offsets, V, c, the sizes and where dV and dc
    lie in the gradient buffer) once, checked as model_pass checks them;
    :meth:`run` then takes the ids and which scratch the caller's rules ask
    for, checks the ids through NumPy's C API and allocates the rest itself;
    :meth:`step`, StepPass's, is model.step's common call (an int id and the
    last state).  The arrays are held, not copied: the model assigns into them
    in place.

    The scratch a call does not return (packed W, W.T, U.T, δ, and the states
    and logits of a loss or a gradient) lives in one buffer that the next call
    reuses: a fresh buffer's pages are faulted in and zeroed by the operating
    system on first touch, which cost about 10 % of a two-thread
    loss_and_grad at T=100, B=32, D=K=256, H=1024 (both threads fault at
    once).  The buffer is held between calls while the model lives and grows
    to the largest call's need (34 MiB after that call); a call running
    while another holds it allocates its own, so concurrent calls still
    share nothing mutable.
    """

    cdef Py_ssize_t n_grad, off_V, off_c
    cdef object spare  # the scratch buffer between calls (1-D float32), or None

    def __init__(self, const float[::1] flat not None, const Py_ssize_t[:, ::1] offs not None,
                 int D, int H, const float[:, ::1] V not None, const float[::1] c, bint relu,
                 Py_ssize_t n_grad, Py_ssize_t off_V, Py_ssize_t off_c):
        StepPass.__init__(self, flat, offs, D, H, V, c, relu)
        cdef Py_ssize_t K = self.K
        # the gradient buffer: the layer's gradients (laid out like flat) first,
        # then dV and, with a bias, dc, each inside it and clear of the layer's
        expect(flat.shape[0] <= off_V and off_V + K * H <= n_grad, "off_V")
        expect((c is None) == (off_c < 0)
               and (c is None or (flat.shape[0] <= off_c and off_c + K <= n_grad
                                  and (off_c + K <= off_V or off_V + K * H <= off_c))),
               "off_c")
        self.n_grad, self.off_V, self.off_c = n_grad, off_V, off_c
        self.spare = None

    def run(self, int what, object x, object y, bint UT, bint WT, bint packed,
            int nthreads):
        """model_pass(what) for FORWARD, LOSS or FULL on ids x, a (T, B) C-contiguous
        intp array with T, B >= 1, and, unless FORWARD, class ids y of the same
        kind, reduction "sum"; h0 = 0.  UT, WT and packed say which scratch the
        caller's rules ask for (U.T, W.T, the packed W), as model_pass takes it.

        Returns None, computing nothing, when an id of x is outside [0, D) or
        a class id of y outside [0, K) and not -100 (the general path then
        reports it); otherwise (total, hs, Z, dflat, dh0, h_n), new arrays or
        None: hs (L, T+1, B, H) the states with h0 = 0 first and Z (T*B, K)
        the probabilities (FORWARD only); dflat the gradient buffer and dh0
        (L, B, H) (FULL only); h_n (L, B, H) the final states (FORWARD and
        FULL); total the summed loss (0.0 with FORWARD).
        """
        cdef int L = self.L, H = self.H, D = self.D, K = self.K
        expect(what == W_FORWARD or what == W_LOSS or what == W_FULL, "what")
        expect(isinstance(x, cnp.ndarray) and cnp.PyArray_NDIM(<cnp.ndarray>x) == 2, "x")
        cdef Py_ssize_t T = cnp.PyArray_DIMS(<cnp.ndarray>x)[0]
        cdef Py_ssize_t B = cnp.PyArray_DIMS(<cnp.ndarray>x)[1]
        cdef Py_ssize_t TB = T * B, BH = B * H, i, layer
        expect(T >= 1 and B >= 1 and TB * max(D, H, K) <= C_SHORT_MAX, "x shape")
        cdef const Py_ssize_t* pxi = <const Py_ssize_t*>array_data(x, "x", cnp.NPY_INTP, TB,
                                                                   False)
        cdef const Py_ssize_t* pyi = NULL
        expect((y is None) == (what == W_FORWARD), "y")
        if y is not None:
            pyi = <const Py_ssize_t*>array_data(y, "y", cnp.NPY_INTP, TB, False)
        cdef bint ok = True
        with nogil:
            for i in range(TB):
                if not (0 <= pxi[i] < D) or (pyi != NULL and not (0 <= pyi[i] < K)
                                             and pyi[i] != -100):
                    ok = False
                    break
        if not ok:
            return None
        # sizes of the reused scratch, each in whole 64-byte lines
        cdef bint full = what == W_FULL, fwd = what == W_FORWARD
        cdef Py_ssize_t n_hs = 0 if fwd else up16(L * (T + 1) * BH)
        cdef Py_ssize_t n_Z = 0 if fwd else up16(TB * K)
        cdef Py_ssize_t n_delta = up16(L * TB * H) if full else 0
        cdef Py_ssize_t n_G = up16(BH) if full else 0
        cdef Py_ssize_t n_UT = up16(<Py_ssize_t>D * H) if UT else 0
        cdef Py_ssize_t n_dUT = n_UT if full else 0
        cdef Py_ssize_t n_WT = up16(<Py_ssize_t>H * H) if WT else 0
        cdef Py_ssize_t n_packed = up16(rnn_ext_wsr_packed_size(H)) if packed else 0
        cdef Py_ssize_t n_all = n_hs + n_Z + n_delta + n_G + n_UT + n_dUT + n_WT + n_packed
        # take the held buffer (the GIL makes this atomic), or a new one
        cdef cnp.ndarray arena = self.spare
        self.spare = None
        if arena is None or cnp.PyArray_SIZE(arena) < n_all + 16:
            arena = new_f32(1, n_all + 16)
        cdef float* p = <float*>cnp.PyArray_DATA(arena)
        p += (16 - (<size_t>p // sizeof(float)) % 16) % 16  # to a 64-byte line
        cdef cnp.ndarray hs = None, Z = None
        cdef float* phs
        cdef float* pZ
        if fwd:
            hs, Z = new_f32(4, L, T + 1, B, H), new_f32(2, TB, K)
            phs, pZ = <float*>cnp.PyArray_DATA(hs), <float*>cnp.PyArray_DATA(Z)
        else:
            phs, pZ = p, p + n_hs
        p += n_hs + n_Z
        for layer in range(L):
            memset(phs + layer * (T + 1) * BH, 0, BH * sizeof(float))
        cdef float* pdelta = p if full else NULL
        cdef float* pG = p + n_delta if full else NULL
        p += n_delta + n_G
        cdef float* pUT = p if UT else NULL
        cdef float* pdUT = p + n_UT if UT and full else NULL
        p += n_UT + n_dUT
        cdef float* pWT = p if WT else NULL
        cdef float* ppacked = p + n_WT if packed else NULL
        dflat = dh0 = None
        cdef float* pdflat = NULL
        cdef float* pdh0 = NULL
        cdef float* pdV = NULL
        cdef float* pdc = NULL
        if full:
            dflat, dh0 = new_f32(1, self.n_grad), new_f32(3, L, B, H)
            pdflat = <float*>cnp.PyArray_DATA(<cnp.ndarray>dflat)
            pdh0 = <float*>cnp.PyArray_DATA(<cnp.ndarray>dh0)
            pdV = pdflat + self.off_V
            pdc = pdflat + self.off_c if self.off_c >= 0 else NULL
        cdef const float* pc = ptr1(self.c)
        cdef double total
        with nogil:
            total = run_model(phs, pZ, <const float*>NULL, pxi, pyi, <const float*>NULL,
                              &self.flat[0], &self.offs[0, 0], &self.V[0, 0], pc,
                              <const float*>NULL, <float*>NULL, pWT, pUT,
                              <const Py_ssize_t*>NULL, pdV, pdc, pdflat, pdelta, <float*>NULL,
                              pdh0, pdUT, pG, <float*>NULL, <int>T, <int>B, D, H, L, 1, K,
                              self.relu, -100, 1.0, what, ppacked, nthreads)
        h_n = None
        if what != W_LOSS:
            h_n = new_f32(3, L, B, H)
            for layer in range(L):
                memcpy(<float*>cnp.PyArray_DATA(<cnp.ndarray>h_n) + layer * BH,
                       phs + (layer * (T + 1) + T) * BH, BH * sizeof(float))
        # keep the larger buffer for the next call
        held = self.spare
        if held is None or cnp.PyArray_SIZE(<cnp.ndarray>held) < cnp.PyArray_SIZE(arena):
            self.spare = arena
        return total, hs, Z, dflat, dh0, h_n


# ---------------------------------------------------------------------------
# RNN.step and Recurrent.step themselves: the classes take these functions as
# their methods (``step = _kernels.model_step``), so that the common call (an
# int id and the state the last step returned) reaches the bound StepPass
# without running a Python frame (3-5 % of a three-microsecond call at B = 1,
# H = 128: benchmarks/README.md, thirteenth session).  Any other call goes on
# to the piece's ``_step``, which checks and converts its arguments.

cdef inline object bound_step(object piece, object fast, object x_t, object h):
    """fast's StepPass.step (None: the piece has none), else piece._step(x_t, h)."""
    if fast is not None:
        out = (<StepPass?>fast).step(x_t, h)
        if out is not None:
            return out
    return piece._step(x_t, h)


@cython.embedsignature(False)  # help() shows the method's own signature
def model_step(self, x_t, h=None):
    """One time step: the next state and the output probabilities.

    For generation, streaming and reinforcement learning: no sequence
    buffers, no backward state, one kernel call.

    Parameters
    ----------
    x_t : int id, (B,) ids, (D,) or (B, D) floats
    h : ndarray of shape (L, B, H) (or (L, H) for unbatched x_t), optional
        The state before the step, zeros by default; with one layer (B, H)
        or (H,) is also accepted.

    Returns
    -------
    h : ndarray of shape (L, B, H) (or (L, H)): every layer's new state
    probs : ndarray of shape (B, K) (or (K,)): softmax(V h_top + c)

    Equivalent to ``forward(x_t[None], h)`` read at its only step;
    unidirectional models only.
    """
    fast = self._fast
    return bound_step(self, fast if fast is not None else self._bound(), x_t, h)


@cython.embedsignature(False)
def layer_step(self, x_t, h=None):
    """One time step through every layer: the next state (generation, streaming).

    Parameters
    ----------
    x_t : int id, (B,) ids, (D,) or (B, D) floats
    h : ndarray of shape (L, B, H) (or (L, H) for unbatched x_t), optional
        The state before the step (zeros by default): what the previous
        step returned.

    Returns
    -------
    ndarray of shape (L, B, H) (or (L, H)): h_t of every layer.  Equal to
    ``forward(x[:1], h).h_n``; unidirectional layers only.
    """
    fast = self._stepper
    return bound_step(self, fast if fast is not None else self._bound_step(), x_t, h)


# named as the methods they are, for help() and inspect
model_step.__name__, model_step.__qualname__ = "step", "RNN.step"
layer_step.__name__, layer_step.__qualname__ = "step", "Recurrent.step"


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


# ---------------------------------------------------------------------------
# one time step, for generation and streaming
#
# model.step runs a few microseconds of arithmetic at B = 1, H = 128, so its
# entry point takes plain ndarrays checked through NumPy's C API (tens of
# nanoseconds for every argument) rather than typed memoryviews (about a
# microsecond for eleven of them).

cdef inline char* array_data(object a, str name, int typenum, Py_ssize_t size,
                             bint writeable) except NULL:
    """a's data, once a is checked to be a C-contiguous ndarray of typenum holding
    size elements (and writeable, when asked)."""
    if not isinstance(a, cnp.ndarray) \
            or cnp.PyArray_TYPE(<cnp.ndarray>a) != typenum \
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a) \
            or cnp.PyArray_SIZE(<cnp.ndarray>a) != size \
            or (writeable and not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>a)):
        expect(False, name)
    return <char*>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline void run_step(const floating* xf, const Py_ssize_t* xi, const floating* h,
                          floating* h_out, const floating* flat, const Py_ssize_t* offs,
                          const floating* V, const floating* c, floating* Z, int B, int D,
                          int H, int L, int K, bint relu) noexcept nogil:
    stack_step(xf, xi, h, h_out, flat, offs, B, D, H, L, relu)
    if V != NULL:
        output_forward(Z, h_out + <Py_ssize_t>(L - 1) * B * H, <const floating*>NULL, V, c,
                       B, H, K, 1)
        softmax_loss(Z, <const Py_ssize_t*>NULL, <const floating*>NULL,
                     <const Py_ssize_t*>NULL, B, B, K, 0, 1, PROBS)


def step_pass(object h, object xf, object xi, object flat, object offs, int D, bint relu,
              object V, object c, bint batched):
    """Eq. (1) for one step through every layer (one direction), then eq. (2).

    h : (L, B, H) the states before the step.  Any C-contiguous shape of
        L*B*H elements whose last axis is H will do: (L, H) or (H,) for B = 1
    xf : (B, D) floats or None;  xi : (B,) intp ids in [0, D), one int id
        (B = 1), or None
    flat, offs : as in layer_forward (offs is (L, 3));  V : (K, H) or None;
    c : (K,) or None.  h, xf, flat, V and c share one floating dtype.

    Returns (h_out, Z), new arrays of that dtype: the states after the step,
    (L, B, H), and the probabilities, (B, K), or None without V; (L, H) and
    (K,) when not batched (B = 1).
    """
    expect(isinstance(h, cnp.ndarray) and cnp.PyArray_NDIM(<cnp.ndarray>h) >= 1, "h")
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>h)
    expect(t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64, "h dtype")
    cdef Py_ssize_t H = cnp.PyArray_DIMS(<cnp.ndarray>h)[cnp.PyArray_NDIM(<cnp.ndarray>h) - 1]
    expect(isinstance(offs, cnp.ndarray) and cnp.PyArray_NDIM(<cnp.ndarray>offs) == 2
           and cnp.PyArray_DIMS(<cnp.ndarray>offs)[1] == 3, "offs")
    cdef Py_ssize_t L = cnp.PyArray_DIMS(<cnp.ndarray>offs)[0]
    cdef const Py_ssize_t* poffs = <const Py_ssize_t*>array_data(offs, "offs", cnp.NPY_INTP,
                                                                 3 * L, False)
    cdef Py_ssize_t B, x_id = 0, ld, need, i, K = 0, n_flat
    cdef const Py_ssize_t* pxi = NULL
    cdef const char* pxf = NULL
    expect((xf is None) != (xi is None), "exactly one of xf, xi")
    if xi is not None and isinstance(xi, int):
        x_id = xi
        B = 1
        pxi = &x_id
    elif xi is not None:
        expect(isinstance(xi, cnp.ndarray) and cnp.PyArray_NDIM(<cnp.ndarray>xi) == 1, "xi")
        B = cnp.PyArray_DIMS(<cnp.ndarray>xi)[0]
        pxi = <const Py_ssize_t*>array_data(xi, "xi", cnp.NPY_INTP, B, False)
    else:
        expect(isinstance(xf, cnp.ndarray) and cnp.PyArray_NDIM(<cnp.ndarray>xf) == 2, "xf")
        B = cnp.PyArray_DIMS(<cnp.ndarray>xf)[0]
        pxf = array_data(xf, "xf", t, B * D, False)
    if pxi != NULL:
        for i in range(B):
            expect(0 <= pxi[i] < D, "xi ids in [0, D)")
    expect(L >= 1 and B >= 1 and H >= 1 and D >= 1 and (batched or B == 1), "h, offs, x")
    cdef const char* ph = array_data(h, "h", t, L * B * H, False)
    expect(isinstance(flat, cnp.ndarray), "flat")
    n_flat = cnp.PyArray_SIZE(<cnp.ndarray>flat)
    cdef const char* pflat = array_data(flat, "flat", t, n_flat, False)
    for ld in range(L):
        need = max(poffs[3 * ld] + H * (D if ld == 0 else H), poffs[3 * ld + 1] + H * H,
                   poffs[3 * ld + 2] + H)
        expect(poffs[3 * ld] >= 0 and poffs[3 * ld + 1] >= 0 and poffs[3 * ld + 2] >= -1
               and need <= n_flat, "offs beyond flat")
    cdef const char* pV = NULL
    cdef const char* pc = NULL
    if V is not None:
        expect(isinstance(V, cnp.ndarray) and cnp.PyArray_NDIM(<cnp.ndarray>V) == 2, "V")
        K = cnp.PyArray_DIMS(<cnp.ndarray>V)[0]
        pV = array_data(V, "V", t, K * H, False)
        expect(cnp.PyArray_DIMS(<cnp.ndarray>V)[1] == H and K >= 1, "V")
        if c is not None:
            pc = array_data(c, "c", t, K, False)
    # the results: h_out (L, B, H) or (L, H), Z (B, K) or (K,)
    cdef cnp.npy_intp dims[3]
    dims[0] = L
    dims[1] = B if batched else H
    dims[2] = H
    h_out = cnp.PyArray_EMPTY(3 if batched else 2, dims, t, 0)
    cdef char* pout = <char*>cnp.PyArray_DATA(<cnp.ndarray>h_out)
    Z = None
    cdef char* pZ = NULL
    if pV != NULL:
        dims[0] = B if batched else K
        dims[1] = K
        Z = cnp.PyArray_EMPTY(2 if batched else 1, dims, t, 0)
        pZ = <char*>cnp.PyArray_DATA(<cnp.ndarray>Z)
    if t == cnp.NPY_FLOAT32:
        with nogil:
            run_step(<const float*>pxf, pxi, <const float*>ph, <float*>pout,
                     <const float*>pflat, poffs, <const float*>pV, <const float*>pc,
                     <float*>pZ, <int>B, D, <int>H, <int>L, <int>K, relu)
    else:
        with nogil:
            run_step(<const double*>pxf, pxi, <const double*>ph, <double*>pout,
                     <const double*>pflat, poffs, <const double*>pV, <const double*>pc,
                     <double*>pZ, <int>B, D, <int>H, <int>L, <int>K, relu)
    return h_out, Z

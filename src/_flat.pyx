"""Optimizer steps and gradient clipping over flat buffers: one loop each, no GIL.

Every array is 1-D, C-contiguous and of one floating dtype (float32 or
float64, fused): p is a piece's parameters (its ``.flat``, or a contiguous
run of it), g the gradient laid out the same way, and the optimizer's slots
(buf, sums, m, v) likewise.  rnn_ext/optim.py and rnn_ext/clip.py check
dtypes, sizes and finiteness before calling; here only the sizes are guarded
again.  The loops themselves are in _flat_loops.h (see _flat.h for the
instruction-set clones).

The update rules are torch.optim's single-tensor implementations (no weight
decay, no lr decay, dampening 0, no Nesterov, no AMSGrad) with the same
float operations in the same order, so results agree with PyTorch to
rounding: PyTorch's vectorised CPU kernels fuse some multiply-adds, these
never do.  Scalars arrive as Python floats; what PyTorch computes in Python
(bias corrections, step sizes) is computed here in double, and every scalar
that meets an array is then rounded to the array's dtype, as PyTorch rounds
a Python scalar to a tensor's dtype.
"""
from cython cimport floating
from libc.math cimport fabs, pow

cdef extern from "_flat.h" nogil:
    bint RNN_EXT_FLAT_HAVE_CLONES
    Py_ssize_t rnn_ext_first_nonfinite_f(const float* x, Py_ssize_t n)
    Py_ssize_t rnn_ext_first_nonfinite_d(const double* x, Py_ssize_t n)
    double rnn_ext_sumsq_f(const float* x, Py_ssize_t n)
    double rnn_ext_sumsq_d(const double* x, Py_ssize_t n)
    void rnn_ext_scale_f(float* x, Py_ssize_t n, float s)
    void rnn_ext_scale_d(double* x, Py_ssize_t n, double s)
    void rnn_ext_clip_value_f(float* x, Py_ssize_t n, float v)
    void rnn_ext_clip_value_d(double* x, Py_ssize_t n, double v)
    void rnn_ext_sgd_f(float* p, const float* g, float* buf, Py_ssize_t n, float nlr,
                       float mom, int mode)
    void rnn_ext_sgd_d(double* p, const double* g, double* buf, Py_ssize_t n, double nlr,
                       double mom, int mode)
    void rnn_ext_adagrad_f(float* p, const float* g, float* s, Py_ssize_t n, float nclr,
                           float e)
    void rnn_ext_adagrad_d(double* p, const double* g, double* s, Py_ssize_t n, double nclr,
                           double e)
    void rnn_ext_adam_f(float* p, const float* g, float* m, float* v, Py_ssize_t n, float w,
                        float one_w, int small, float b2, float c2, float nss, float bc2,
                        float e)
    void rnn_ext_adam_d(double* p, const double* g, double* m, double* v, Py_ssize_t n,
                        double w, double one_w, int small, double b2, double c2, double nss,
                        double bc2, double e)

#: True when the loops also carry x86-64-v3 and -v4 clones, picked at load.
SIMD_CLONES = bool(RNN_EXT_FLAT_HAVE_CLONES)


cdef inline int same_size(Py_ssize_t n, Py_ssize_t m, str what) except -1:
    # The Python side validates everything; this guards the buffers against a
    # caller that bypassed it.
    if n != m:
        raise ValueError(f"rnn_ext._flat: {what} has {m} elements, expected {n}")
    return 0


# ---------------------------------------------------------------------------
# checks and clipping


def first_nonfinite(const floating[::1] a not None):
    """Index of the first NaN or infinite element of ``a``, or -1 if all are finite.

    Equivalent to ``np.flatnonzero(~np.isfinite(a))[0]`` (or -1), in one pass.
    """
    cdef Py_ssize_t n = a.shape[0], k = -1
    if n == 0:
        return -1
    with nogil:
        if floating is float:
            k = rnn_ext_first_nonfinite_f(&a[0], n)
        else:
            k = rnn_ext_first_nonfinite_d(&a[0], n)
    return k


def sumsq(const floating[::1] a not None):
    """``sum(a * a)`` accumulated in double, for either dtype.

    Eight partial sums taken in turn, then added: the result differs from a
    left-to-right sum by double rounding only.  clip_grad_norm's total norm
    is ``sqrt`` of the sum of sumsq over its buffers.
    """
    cdef Py_ssize_t n = a.shape[0]
    cdef double s = 0
    if n == 0:
        return 0.0
    with nogil:
        if floating is float:
            s = rnn_ext_sumsq_f(&a[0], n)
        else:
            s = rnn_ext_sumsq_d(&a[0], n)
    return s


def scale(floating[::1] g not None, double s):
    """``g *= s`` in place, s rounded to g's dtype (torch's ``g.mul_(clip_coef)``)."""
    cdef Py_ssize_t n = g.shape[0]
    if n == 0:
        return
    with nogil:
        if floating is float:
            rnn_ext_scale_f(&g[0], n, <float>s)
        else:
            rnn_ext_scale_d(&g[0], n, s)


def clip_value(floating[::1] g not None, double v):
    """``g := clip(g, -v, v)`` in place, v rounded to g's dtype; NaN stays NaN.

    As ``np.clip(g, -v, v, out=g)`` and ``torch.Tensor.clamp_(-v, v)``.
    """
    cdef Py_ssize_t n = g.shape[0]
    if n == 0:
        return
    with nogil:
        if floating is float:
            rnn_ext_clip_value_f(&g[0], n, <float>v)
        else:
            rnn_ext_clip_value_d(&g[0], n, v)


# ---------------------------------------------------------------------------
# optimizer steps: p and the slots are written, g is only read


def sgd_step(floating[::1] p not None, const floating[::1] g not None,
             floating[::1] buf not None, double lr, double momentum, Py_ssize_t step):
    """One SGD step (``torch.optim.SGD``, dampening 0, no Nesterov), in place.

    momentum == 0:    p := p + (-lr) * g                       (buf untouched)
    step == 1:        buf := g;                   p := p + (-lr) * buf
    later steps:      buf := buf * momentum + g;  p := p + (-lr) * buf

    p, g, buf : ndarray of shape (n,)
    step : the number of the step being taken, from 1
    """
    cdef Py_ssize_t n = p.shape[0]
    same_size(n, g.shape[0], "g")
    same_size(n, buf.shape[0], "buf")
    # param.add_(grad, alpha=-lr); buf = grad.clone() or buf.mul_(momentum).add_(grad)
    cdef int mode = 0 if momentum == 0 else (1 if step == 1 else 2)
    if n == 0:
        return
    with nogil:
        if floating is float:
            rnn_ext_sgd_f(&p[0], &g[0], &buf[0], n, <float>(-lr), <float>momentum, mode)
        else:
            rnn_ext_sgd_d(&p[0], &g[0], &buf[0], n, -lr, momentum, mode)


def adagrad_step(floating[::1] p not None, const floating[::1] g not None,
                 floating[::1] sums not None, double lr, double eps, Py_ssize_t step):
    """One Adagrad step (``torch.optim.Adagrad``, lr_decay 0, accumulator from 0), in place.

    clr  = lr / (1 + (step - 1) * lr_decay)          (= lr)
    sums := sums + g * g                             (state_sum.addcmul_(g, g, value=1))
    p    := p + (-clr * g) / (sqrt(sums) + eps)      (p.addcdiv_(g, std, value=-clr))

    p, g, sums : ndarray of shape (n,)
    step : the number of the step being taken, from 1
    """
    cdef Py_ssize_t n = p.shape[0]
    same_size(n, g.shape[0], "g")
    same_size(n, sums.shape[0], "sums")
    cdef double clr = lr / (1 + (step - 1) * 0.0)
    if n == 0:
        return
    with nogil:
        if floating is float:
            rnn_ext_adagrad_f(&p[0], &g[0], &sums[0], n, <float>(-clr), <float>eps)
        else:
            rnn_ext_adagrad_d(&p[0], &g[0], &sums[0], n, -clr, eps)


def adam_step(floating[::1] p not None, const floating[::1] g not None,
              floating[::1] m not None, floating[::1] v not None,
              double lr, double beta1, double beta2, double eps, Py_ssize_t step):
    """One Adam step (``torch.optim.Adam``, no weight decay, no AMSGrad), in place.

    m := lerp(m, g, 1 - beta1)                (exp_avg.lerp_(g, 1 - beta1))
    v := v * beta2 + ((1 - beta2) * g) * g    (exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2))
    p := p + (-step_size * m) / (sqrt(v) / bias_correction2_sqrt + eps)   (p.addcdiv_(m, denom))
    with step_size = lr / (1 - beta1**step), bias_correction2_sqrt = (1 - beta2**step) ** 0.5

    p, g, m, v : ndarray of shape (n,)
    step : the number of the step being taken, from 1
    """
    cdef Py_ssize_t n = p.shape[0]
    same_size(n, g.shape[0], "g")
    same_size(n, m.shape[0], "m")
    same_size(n, v.shape[0], "v")
    # as torch, in Python floats
    cdef double step_size = lr / (1 - pow(beta1, <double>step))
    cdef double bc2_sqrt = pow(1 - pow(beta2, <double>step), 0.5)
    # torch.lerp(m, g, w) is m + w (g - m) for |w| < 0.5, else g - (g - m) (1 - w),
    # with w and 1 - w in the tensor's dtype
    cdef floating w = <floating>(1 - beta1)
    cdef floating one_w = 1 - w
    cdef int small = fabs(w) < 0.5
    if n == 0:
        return
    with nogil:
        if floating is float:
            rnn_ext_adam_f(&p[0], &g[0], &m[0], &v[0], n, w, one_w, small, <float>beta2,
                           <float>(1 - beta2), <float>(-step_size), <float>bc2_sqrt,
                           <float>eps)
        else:
            rnn_ext_adam_d(&p[0], &g[0], &m[0], &v[0], n, w, one_w, small, beta2, 1 - beta2,
                           -step_size, bc2_sqrt, eps)

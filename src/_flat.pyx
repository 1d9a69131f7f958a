"""Optimizer steps and gradient clipping over flat buffers: one loop each, no GIL.

Every array is 1-D, C-contiguous and of one floating dtype (float32 or
float64, fused): p is a piece's parameters (its ``.flat``, or a contiguous
run of it), g the gradient laid out the same way, and the optimizer's slots
(buf, sums, m, v) likewise.  rnn_ext/optim.py and rnn_ext/clip.py check
dtypes, sizes and finiteness before calling; here only the sizes are guarded
again.  The loops themselves are in _flat_loops.h (see _flat.h for the
instruction-set clones).

The arguments are plain ndarrays checked through NumPy's C API (tens of
nanoseconds each) rather than typed memoryviews: a fused-type memoryview
dispatch cost about a microsecond for Adam's four arrays, a tenth of the
whole update at H = 128.

The update rules are torch.optim's single-tensor implementations (no weight
decay, no lr decay, dampening 0, no Nesterov, no AMSGrad) with the same
float operations in the same order, so results agree with PyTorch to
rounding: PyTorch's vectorised CPU kernels fuse some multiply-adds, these
never do.  Scalars arrive as Python floats; what PyTorch computes in Python
(bias corrections, step sizes) is computed here in double, and every scalar
that meets an array is then rounded to the array's dtype, as PyTorch rounds
a Python scalar to a tensor's dtype.
"""
cimport numpy as cnp
from cpython.object cimport PyObject_GenericSetAttr
from libc.math cimport fabs, pow

cnp.import_array()

cdef extern from "_flat.h" nogil:
    bint RNN_EXT_FLAT_HAVE_CLONES
    int rnn_ext_flat_fused()
    Py_ssize_t rnn_ext_first_bad_f(const float* x, Py_ssize_t n, int nan_only)
    Py_ssize_t rnn_ext_first_bad_d(const double* x, Py_ssize_t n, int nan_only)
    double rnn_ext_sumsq_f(const float* x, Py_ssize_t n)
    double rnn_ext_sumsq_d(const double* x, Py_ssize_t n)
    void rnn_ext_scale_f(float* x, Py_ssize_t n, float s)
    void rnn_ext_scale_d(double* x, Py_ssize_t n, double s)
    void rnn_ext_clip_value_f(float* x, Py_ssize_t n, float v)
    void rnn_ext_clip_value_d(double* x, Py_ssize_t n, double v)
    void rnn_ext_sgd_f(float* p, float* g, float* buf, Py_ssize_t n, float nlr,
                       float mom, int mode, float cv)
    void rnn_ext_sgd_d(double* p, double* g, double* buf, Py_ssize_t n, double nlr,
                       double mom, int mode, double cv)
    void rnn_ext_adagrad_f(float* p, float* g, float* s, Py_ssize_t n, float nclr,
                           float e, float cv)
    void rnn_ext_adagrad_d(double* p, double* g, double* s, Py_ssize_t n, double nclr,
                           double e, double cv)
    void rnn_ext_adam_f(float* p, float* g, float* m, float* v, Py_ssize_t n, float w,
                        float one_w, int small, float b2, float c2, float nss, float bc2,
                        float rbc2, float e, int fused, float cv)
    void rnn_ext_adam_d(double* p, double* g, double* m, double* v, Py_ssize_t n,
                        double w, double one_w, int small, double b2, double c2, double nss,
                        double bc2, double rbc2, double e, int fused, double cv)

#: True when the loops also carry x86-64-v3 and -v4 clones, picked at load.
SIMD_CLONES = bool(RNN_EXT_FLAT_HAVE_CLONES)
#: True when float32 Adam divides by its bias correction with fused
#: multiply-adds (the same bits as the division; _flat_loops.h, div_const).
cdef int FUSED = rnn_ext_flat_fused()
FUSED_DIVISION = bool(FUSED)


cdef inline int dtype_of(object a, str name) except -1:
    """The NumPy type number of ``a``, the first array of a call: float32 or float64."""
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"rnn_ext._flat: {name} must be a numpy array, got {type(a).__name__}")
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"rnn_ext._flat: {name} has dtype {a.dtype}, expected float32 or float64")
    return t


cdef inline char* data_of(object a, str name, int typenum, Py_ssize_t n, bint writeable,
                          bint first=False) except NULL:
    """a's data, once a is checked to be a 1-D C-contiguous ndarray of typenum with n
    elements (and writeable when asked; n < 0 takes any size).  The Python side
    validates everything; this guards the buffers against a caller that bypassed it."""
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"rnn_ext._flat: {name} must be a numpy array, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_NDIM(arr) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"rnn_ext._flat: {name} must be 1-D and C-contiguous, got shape "
                         f"{a.shape} with strides {a.strides}")
    if cnp.PyArray_TYPE(arr) != typenum:
        raise TypeError(f"rnn_ext._flat: {name} has dtype {a.dtype}, expected "
                        f"{'float32' if typenum == cnp.NPY_FLOAT32 else 'float64'}")
    if n >= 0 and cnp.PyArray_DIMS(arr)[0] != n:
        raise ValueError(f"rnn_ext._flat: {name} has {cnp.PyArray_DIMS(arr)[0]} elements, "
                         f"expected {n}")
    if writeable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"rnn_ext._flat: {name} is read-only")
    return <char*>cnp.PyArray_DATA(arr)


cdef inline Py_ssize_t size_of(object a):
    return cnp.PyArray_DIMS(<cnp.ndarray>a)[0]


# ---------------------------------------------------------------------------
# checks and clipping


cdef Py_ssize_t scan(object a, bint nan_only) except -2:
    """Index of the first NaN (nan_only) or NaN or infinity of ``a``, or -1."""
    cdef int t = dtype_of(a, "a")
    cdef char* pa = data_of(a, "a", t, -1, False)
    cdef Py_ssize_t n = size_of(a), k = -1
    if n == 0:
        return -1
    with nogil:
        if t == cnp.NPY_FLOAT32:
            k = rnn_ext_first_bad_f(<const float*>pa, n, nan_only)
        else:
            k = rnn_ext_first_bad_d(<const double*>pa, n, nan_only)
    return k


def first_nonfinite(a):
    """Index of the first NaN or infinite element of ``a``, or -1 if all are finite.

    Equivalent to ``np.flatnonzero(~np.isfinite(a))[0]`` (or -1), in one pass.
    """
    return scan(a, False)


def first_nan(a):
    """Index of the first NaN of ``a``, or -1: what an update that clips must refuse."""
    return scan(a, True)


def sumsq(a):
    """``sum(a * a)`` accumulated in double, for either dtype.

    Eight partial sums taken in turn, then added: the result differs from a
    left-to-right sum by double rounding only.  clip_grad_norm's total norm
    is ``sqrt`` of the sum of sumsq over its buffers.
    """
    cdef int t = dtype_of(a, "a")
    cdef char* pa = data_of(a, "a", t, -1, False)
    cdef Py_ssize_t n = size_of(a)
    cdef double s = 0
    if n == 0:
        return 0.0
    with nogil:
        if t == cnp.NPY_FLOAT32:
            s = rnn_ext_sumsq_f(<const float*>pa, n)
        else:
            s = rnn_ext_sumsq_d(<const double*>pa, n)
    return s


def scale(g, double s):
    """``g *= s`` in place, s rounded to g's dtype (torch's ``g.mul_(clip_coef)``)."""
    cdef int t = dtype_of(g, "g")
    cdef char* pg = data_of(g, "g", t, -1, True)
    cdef Py_ssize_t n = size_of(g)
    if n == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            rnn_ext_scale_f(<float*>pg, n, <float>s)
        else:
            rnn_ext_scale_d(<double*>pg, n, s)


def clip_value(g, double v):
    """``g := clip(g, -v, v)`` in place, v rounded to g's dtype; NaN stays NaN.

    As ``np.clip(g, -v, v, out=g)`` and ``torch.Tensor.clamp_(-v, v)``.
    """
    cdef int t = dtype_of(g, "g")
    cdef char* pg = data_of(g, "g", t, -1, True)
    cdef Py_ssize_t n = size_of(g)
    if n == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            rnn_ext_clip_value_f(<float*>pg, n, <float>v)
        else:
            rnn_ext_clip_value_d(<double*>pg, n, v)


# ---------------------------------------------------------------------------
# optimizer steps: p and the slots are written; g only when clip > 0, which
# clamps g to [-clip, clip] in place first (clip_value's result), in the same pass


cdef Py_ssize_t update_args(object p, object g, double clip, tuple slots, tuple names,
                            int* t, char** a) except -1:
    """An update's arrays checked: parameters p (writeable), gradient g (writeable
    when it is clipped) and the slots (writeable, named for errors), all of p's
    dtype (in t) and size (returned); their data in a[0], a[1], a[2], ..."""
    t[0] = dtype_of(p, "p")
    a[0] = data_of(p, "p", t[0], -1, True)
    cdef Py_ssize_t n = size_of(p)
    a[1] = data_of(g, "g", t[0], n, clip > 0)
    for i in range(len(slots)):
        a[2 + i] = data_of(slots[i], names[i], t[0], n, True)
    return n


def sgd_step(p, g, buf, double lr, double momentum, Py_ssize_t step, double clip=0):
    """One SGD step (``torch.optim.SGD``, dampening 0, no Nesterov), in place.

    momentum == 0:    p := p + (-lr) * g                       (buf untouched)
    step == 1:        buf := g;                   p := p + (-lr) * buf
    later steps:      buf := buf * momentum + g;  p := p + (-lr) * buf

    p, g, buf : ndarray of shape (n,), one floating dtype
    step : the number of the step being taken, from 1
    clip : > 0 to clamp g to [-clip, clip] in place first (g must be writeable)
    """
    cdef int t
    cdef char* a[3]
    cdef Py_ssize_t n = update_args(p, g, clip, (buf,), ("buf",), &t, a)
    # param.add_(grad, alpha=-lr); buf = grad.clone() or buf.mul_(momentum).add_(grad)
    cdef int mode = 0 if momentum == 0 else (1 if step == 1 else 2)
    if n == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            rnn_ext_sgd_f(<float*>a[0], <float*>a[1], <float*>a[2], n, <float>(-lr),
                          <float>momentum, mode, <float>clip)
        else:
            rnn_ext_sgd_d(<double*>a[0], <double*>a[1], <double*>a[2], n, -lr, momentum, mode, clip)


def adagrad_step(p, g, sums, double lr, double eps, Py_ssize_t step, double clip=0):
    """One Adagrad step (``torch.optim.Adagrad``, lr_decay 0, accumulator from 0), in place.

    clr  = lr / (1 + (step - 1) * lr_decay)          (= lr)
    sums := sums + g * g                             (state_sum.addcmul_(g, g, value=1))
    p    := p + (-clr * g) / (sqrt(sums) + eps)      (p.addcdiv_(g, std, value=-clr))

    p, g, sums : ndarray of shape (n,), one floating dtype
    step : the number of the step being taken, from 1
    clip : > 0 to clamp g to [-clip, clip] in place first (g must be writeable)
    """
    cdef int t
    cdef char* a[3]
    cdef Py_ssize_t n = update_args(p, g, clip, (sums,), ("sums",), &t, a)
    cdef double clr = lr / (1 + (step - 1) * 0.0)
    if n == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            rnn_ext_adagrad_f(<float*>a[0], <float*>a[1], <float*>a[2], n, <float>(-clr),
                              <float>eps, <float>clip)
        else:
            rnn_ext_adagrad_d(<double*>a[0], <double*>a[1], <double*>a[2], n, -clr, eps, clip)


def adam_step(p, g, m, v, double lr, double beta1, double beta2, double eps, Py_ssize_t step,
              double clip=0):
    """One Adam step (``torch.optim.Adam``, no weight decay, no AMSGrad), in place.

    m := lerp(m, g, 1 - beta1)                (exp_avg.lerp_(g, 1 - beta1))
    v := v * beta2 + ((1 - beta2) * g) * g    (exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2))
    p := p + (-step_size * m) / (sqrt(v) / bias_correction2_sqrt + eps)   (p.addcdiv_(m, denom))
    with step_size = lr / (1 - beta1**step), bias_correction2_sqrt = (1 - beta2**step) ** 0.5

    p, g, m, v : ndarray of shape (n,), one floating dtype
    step : the number of the step being taken, from 1
    clip : > 0 to clamp g to [-clip, clip] in place first (g must be writeable)
    """
    cdef int t
    cdef char* a[4]
    cdef Py_ssize_t n = update_args(p, g, clip, (m, v), ("m", "v"), &t, a)
    # as torch, in Python floats
    cdef double step_size = lr / (1 - pow(beta1, <double>step))
    cdef double bc2_sqrt = pow(1 - pow(beta2, <double>step), 0.5)
    # torch.lerp(m, g, w) is m + w (g - m) for |w| < 0.5, else g - (g - m) (1 - w),
    # with w and 1 - w in the tensor's dtype
    cdef double w = 1 - beta1
    cdef float w_f = <float>w
    cdef int small = fabs(w_f if t == cnp.NPY_FLOAT32 else w) < 0.5
    cdef float bc2_f = <float>bc2_sqrt
    if n == 0:
        return
    with nogil:
        if t == cnp.NPY_FLOAT32:
            rnn_ext_adam_f(<float*>a[0], <float*>a[1], <float*>a[2], <float*>a[3], n, w_f,
                           1 - w_f, small, <float>beta2, <float>(1 - beta2),
                           <float>(-step_size), bc2_f, 1 / bc2_f, <float>eps, FUSED,
                           <float>clip)
        else:
            rnn_ext_adam_d(<double*>a[0], <double*>a[1], <double*>a[2], <double*>a[3], n, w,
                           1 - w, small, beta2, 1 - beta2, -step_size, bc2_sqrt,
                           1 / bc2_sqrt, eps, 0, clip)


# ---------------------------------------------------------------------------
# named views and the records that carry them


def views(flat, tuple spans):
    """``{name: view of flat}`` for ``spans`` of (name, offset, shape), in order.

    The same arrays as ``flat[offset:offset + n].reshape(shape)`` (n the
    product of shape): views sharing flat's memory, writeable when flat is,
    built through NumPy's C API in about a tenth of a microsecond each
    instead of half a microsecond (rnn_ext/_layout.py, Layout.views, which
    checks flat's shape; here the spans are checked against it again).
    """
    cdef int t = dtype_of(flat, "flat")
    data_of(flat, "flat", t, -1, False)
    cdef cnp.ndarray arr = <cnp.ndarray>flat
    cdef Py_ssize_t size = size_of(flat), at, n, nd, i
    cdef cnp.npy_intp dims[8]
    cdef bint writeable = cnp.PyArray_ISWRITEABLE(arr)
    cdef int typenum = cnp.PyArray_TYPE(arr)
    cdef char* base = <char*>cnp.PyArray_DATA(arr)
    cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(arr)
    cdef dict out = {}
    cdef cnp.ndarray view
    for name, at, shape in spans:
        nd = len(shape)
        if not 1 <= nd <= 8:
            raise ValueError(f"rnn_ext._flat.views: shape {shape!r} must have 1 to 8 axes")
        n = 1
        for i in range(nd):
            dims[i] = shape[i]
            if dims[i] < 0:
                raise ValueError(f"rnn_ext._flat.views: negative extent in shape {shape!r}")
            n *= dims[i]
        if at < 0 or at + n > size:
            raise ValueError(f"rnn_ext._flat.views: {name!r} at [{at}, {at + n}) lies outside "
                             f"flat's {size} elements")
        # C order (flags 0), read-only; then writeable like flat, and owned by it
        view = cnp.PyArray_New(cnp.ndarray, <int>nd, dims, typenum, NULL,
                               base + at * itemsize, 0, 0, None)
        if writeable:
            cnp.PyArray_ENABLEFLAGS(view, cnp.NPY_ARRAY_WRITEABLE)
        cnp.set_array_base(view, arr)
        out[name] = view
    return out


def record(cls, tuple values):
    """A new instance of the slotted (and frozen) dataclass ``cls`` holding
    ``values`` in its fields' order.

    What ``cls(*values)`` builds, without its ``__init__``: a frozen
    dataclass's sets each field through ``object.__setattr__``, about 0.15 us
    a field (1.7 us for Gradients); this sets them through the generic
    attribute setter from C.  Only for classes whose ``__init__`` does
    nothing but store its arguments (no defaults left out, no
    ``__post_init__``).
    """
    cdef tuple names = cls.__slots__
    if len(values) != len(names):
        raise ValueError(f"rnn_ext._flat.record: {cls.__name__} has {len(names)} fields, "
                         f"got {len(values)} values")
    obj = object.__new__(cls)
    cdef Py_ssize_t i
    for i in range(len(names)):
        PyObject_GenericSetAttr(obj, names[i], values[i])
    return obj

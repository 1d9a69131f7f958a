# Elementwise pieces shared by the recurrence and the heads: activations and
# their derivatives, row sums, a blocked transpose.  Plain loops the compiler
# vectorises; float32 tanh goes through src/_fastmath.h.
from cython cimport floating
from libc.math cimport tanh
from libc.string cimport memset

cdef extern from "_fastmath.h" nogil:
    void rnn_ext_tanhf_inplace(float* a, Py_ssize_t n)
    void rnn_ext_expf_shift_inplace(float* z, Py_ssize_t n, float m)
    void rnn_ext_transpose_f(float* out, Py_ssize_t ldo, const float* A, Py_ssize_t lda,
                             Py_ssize_t rows, Py_ssize_t cols)
    void rnn_ext_transpose_d(double* out, Py_ssize_t ldo, const double* A, Py_ssize_t lda,
                             Py_ssize_t rows, Py_ssize_t cols)
    bint RNN_EXT_HAVE_CLONES


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


cdef inline void add_column_sums(floating* out, const floating* A, Py_ssize_t rows,
                                 Py_ssize_t cols, Py_ssize_t lda) noexcept nogil:
    """out += A.sum(axis=0) for a row-major (rows, cols) A with row stride lda."""
    cdef Py_ssize_t r
    for r in range(rows):
        add_row(out, A + r * lda, cols)


cdef inline void column_sums(floating* out, const floating* A, Py_ssize_t rows,
                             Py_ssize_t cols) noexcept nogil:
    """out := A.sum(axis=0) for a row-major (rows, cols) A; overwrites out."""
    memset(out, 0, cols * sizeof(floating))
    add_column_sums(out, A, rows, cols, cols)


cdef inline void transpose(floating* out, const floating* A, Py_ssize_t rows,
                           Py_ssize_t cols) noexcept nogil:
    """out := A.T for a row-major (rows, cols) A; out is (cols, rows)
    (src/_fastmath.h: blocked, and a function of its own)."""
    transpose_block(out, rows, A, cols, rows, cols)


cdef inline void transpose_block(floating* out, Py_ssize_t ldo, const floating* A,
                                 Py_ssize_t lda, Py_ssize_t rows,
                                 Py_ssize_t cols) noexcept nogil:
    """out := A.T for a (rows, cols) A whose rows are lda apart; out's rows
    are ldo apart (src/_fastmath.h: blocked, and a function of its own)."""
    if floating is float:
        rnn_ext_transpose_f(out, ldo, A, lda, rows, cols)
    else:
        rnn_ext_transpose_d(out, ldo, A, lda, rows, cols)

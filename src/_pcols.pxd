# The memory-bound loops of a pass over all T*B rows, split by columns on the
# pass's pool (src/wsr.c): the id gather of the input projection, U's
# transpose for it, the id scatter-add of dU and the bias gradient's column
# sums.  Thread i of n owns a run of whole 16-column blocks (64 bytes, so no
# two threads write one cache line) for every row, and each output element
# is computed by the same operations in the same order as the serial loops
# of _recurrence.pxd and _elementwise.pxd: the results are the same bits for
# every thread count, including the serial loops'.  float32 only (the pool
# runs float32 passes); the callers keep the serial loops otherwise.
from libc.string cimport memcpy, memset

from _elementwise cimport add_column_sums, add_row
from _pgemm cimport rnn_ext_parallel


cdef enum:
    PCOLS_BLOCK = 16


cdef enum ColKind:
    GATHER = 0      # out[r] = bias + src[ids[r]]  (bias NULL: a copy)
    TRANSPOSE = 1   # out := src.T, src (rows, cols): out's columns split
    SCATTER = 2     # scratch := 0; scratch[ids[r]] += src[r]; out := scratch.T
    COLSUMS = 3     # out := src.sum(axis=0)


cdef struct ColTask:
    int kind
    float* out
    float* scratch
    const float* src
    const float* bias
    const Py_ssize_t* ids
    Py_ssize_t rows, cols, D


cdef inline void col_span(Py_ssize_t cols, int i, int n, Py_ssize_t* j0,
                          Py_ssize_t* j1) noexcept nogil:
    cdef Py_ssize_t blocks = (cols + PCOLS_BLOCK - 1) // PCOLS_BLOCK
    j0[0] = min(PCOLS_BLOCK * ((blocks * i) // n), cols)
    j1[0] = min(PCOLS_BLOCK * ((blocks * (i + 1)) // n), cols)


cdef inline void col_part(void* ctx, int i, int n) noexcept nogil:
    cdef ColTask* t = <ColTask*>ctx
    cdef Py_ssize_t j0, j1, r, j, d, w
    if t.kind == TRANSPOSE:
        # out (cols, rows) := src (rows, cols).T; this thread: out's columns
        # j0..j1, i.e. src's rows j0..j1
        col_span(t.rows, i, n, &j0, &j1)
        for d in range(t.cols):
            for j in range(j0, j1):
                t.out[d * t.rows + j] = t.src[j * t.cols + d]
        return
    col_span(t.cols, i, n, &j0, &j1)
    w = j1 - j0
    if w <= 0:
        return
    if t.kind == GATHER:
        # as the serial loop: the bias row, then += the id's row
        for r in range(t.rows):
            if t.bias != NULL:
                memcpy(t.out + r * t.cols + j0, t.bias + j0, w * sizeof(float))
                add_row(t.out + r * t.cols + j0, t.src + t.ids[r] * t.cols + j0, w)
            else:
                memcpy(t.out + r * t.cols + j0, t.src + t.ids[r] * t.cols + j0,
                       w * sizeof(float))
    elif t.kind == SCATTER:
        # scratch (D, cols) := 0, += each row at its id; out (cols, D) := scratch.T
        for d in range(t.D):
            memset(t.scratch + d * t.cols + j0, 0, w * sizeof(float))
        for r in range(t.rows):
            add_row(t.scratch + t.ids[r] * t.cols + j0, t.src + r * t.cols + j0, w)
        for j in range(j0, j1):
            for d in range(t.D):
                t.out[j * t.D + d] = t.scratch[d * t.cols + j]
    else:
        memset(t.out + j0, 0, w * sizeof(float))
        add_column_sums(t.out + j0, t.src + j0, t.rows, w, t.cols)


cdef inline void run_cols(ColTask* t, int nthreads) noexcept nogil:
    rnn_ext_parallel(col_part, t, nthreads)


cdef inline void pgather(float* out, const float* src, const float* bias,
                         const Py_ssize_t* ids, Py_ssize_t rows, Py_ssize_t cols,
                         int nthreads) noexcept nogil:
    """out[r] = bias + src[ids[r]] for r < rows (rows of cols floats)."""
    cdef ColTask t
    t.kind, t.out, t.src, t.bias, t.ids, t.rows, t.cols = GATHER, out, src, bias, ids, rows, cols
    run_cols(&t, nthreads)


cdef inline void ptranspose(float* out, const float* src, Py_ssize_t rows, Py_ssize_t cols,
                            int nthreads) noexcept nogil:
    """out (cols, rows) := src (rows, cols).T"""
    cdef ColTask t
    t.kind, t.out, t.src, t.rows, t.cols = TRANSPOSE, out, src, rows, cols
    run_cols(&t, nthreads)


cdef inline void pscatter(float* out, float* scratch, const float* src,
                          const Py_ssize_t* ids, Py_ssize_t rows, Py_ssize_t cols,
                          Py_ssize_t D, int nthreads) noexcept nogil:
    """scratch (D, cols) := Σ_r e_{ids[r]} ⊗ src[r];  out (cols, D) := scratch.T"""
    cdef ColTask t
    t.kind, t.out, t.scratch, t.src, t.ids = SCATTER, out, scratch, src, ids
    t.rows, t.cols, t.D = rows, cols, D
    run_cols(&t, nthreads)


cdef inline void pcolumn_sums(float* out, const float* src, Py_ssize_t rows, Py_ssize_t cols,
                              int nthreads) noexcept nogil:
    """out := src.sum(axis=0), src (rows, cols)"""
    cdef ColTask t
    t.kind, t.out, t.src, t.rows, t.cols = COLSUMS, out, src, rows, cols
    run_cols(&t, nthreads)

# The memory-bound loops of a pass over all T*B rows on the pass's pool
# (src/wsr.c): the id gather of the input projection, U's transpose for it,
# the id scatter-add of dU and the bias gradient's column sums.  Split by
# columns, thread i of n owns a run of whole 16-column blocks (64 bytes, so
# no two threads write one cache line) for every row.  The gather and the
# transpose compute each element as the serial loops of _recurrence.pxd do.
#
# The two sums (the scatter-add and the column sums) run over `parts` fixed
# runs of whole 32-row blocks instead (sum_parts: 2 for a long enough pass,
# else 1): each part sums its rows in order into its own buffer, then the
# parts are added in order.  The parts depend on the shapes alone, so the
# results are the same bits for every thread count (also 1).  With two
# threads each takes one part, every column: each reads whole rows, where
# split by columns each read half of every row (two threads, T = 100, B = 64,
# H = 512, AMD Zen 4: split by columns the two sums took about 3.7x the CPU
# time, and a whole loss_and_grad 2-3 % longer).  float32 only (the pool
# runs float32 passes); the callers keep the serial loops otherwise.
from libc.string cimport memcpy, memset

from _elementwise cimport add_column_sums, add_row, transpose_block
from _pgemm cimport block_start, rnn_ext_parallel


cdef enum:
    PCOLS_BLOCK = 16
    PCOLS_PARTS = 2
    PCOLS_MIN_PART_ROWS = 64


cdef enum ColKind:
    GATHER = 0      # out[r] = bias + src[ids[r]]  (bias NULL: a copy)
    TRANSPOSE = 1   # out := src.T, src (rows, cols): out's columns split
    SCATTER = 2     # scratch := 0; scratch[ids[r]] += src[r]; out := scratch.T
    COLSUMS = 3     # out := src.sum(axis=0)


cdef struct ColTask:
    int kind
    float* out
    float* scratch
    float* extra    # SCATTER, COLSUMS: parts 1 .. parts-1's buffers (as scratch's, out's)
    const float* src
    const float* bias
    const Py_ssize_t* ids
    Py_ssize_t rows, cols, D
    int parts       # SCATTER, COLSUMS: runs of rows summed apart (sum_parts)


cdef inline int sum_parts(Py_ssize_t rows, Py_ssize_t size, Py_ssize_t n_extra) noexcept nogil:
    """The parts a sum of `rows` rows into a buffer of `size` floats is cut into:
    PCOLS_PARTS when each gets at least PCOLS_MIN_PART_ROWS rows and n_extra
    floats hold the other parts' buffers, else 1.  Shapes alone decide."""
    if (rows >= PCOLS_PARTS * PCOLS_MIN_PART_ROWS
            and (PCOLS_PARTS - 1) * size <= n_extra):
        return PCOLS_PARTS
    return 1


cdef inline void col_span(Py_ssize_t cols, int i, int n, Py_ssize_t* j0,
                          Py_ssize_t* j1) noexcept nogil:
    cdef Py_ssize_t blocks = (cols + PCOLS_BLOCK - 1) // PCOLS_BLOCK
    j0[0] = min(PCOLS_BLOCK * ((blocks * i) // n), cols)
    j1[0] = min(PCOLS_BLOCK * ((blocks * (i + 1)) // n), cols)


cdef inline void col_part(void* ctx, int i, int n) noexcept nogil:
    cdef ColTask* t = <ColTask*>ctx
    cdef Py_ssize_t j0, j1, r, d, w
    cdef int p
    if t.kind == TRANSPOSE:
        # out (cols, rows) := src (rows, cols).T; this thread: out's columns
        # j0..j1, i.e. src's rows j0..j1
        col_span(t.rows, i, n, &j0, &j1)
        if j1 > j0:
            transpose_block(t.out + j0, t.rows, t.src + j0 * t.cols, t.cols, j1 - j0, t.cols)
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
        # out (cols, D) := (Σ_p part p's buffer).T: the other parts added to
        # part 0's in order, then this thread's columns transposed
        for p in range(1, t.parts):
            for d in range(t.D):
                add_row(t.scratch + d * t.cols + j0,
                        t.extra + ((p - 1) * t.D + d) * t.cols + j0, w)
        transpose_block(t.out + j0 * t.D, t.D, t.scratch + j0, t.cols, t.D, w)
    else:
        # out += parts 1 .. parts-1, in order
        for p in range(1, t.parts):
            add_row(t.out + j0, t.extra + (p - 1) * t.cols + j0, w)


cdef inline void sum_part(void* ctx, int i, int n) noexcept nogil:
    """SCATTER, COLSUMS: each part's rows, in order, into its own buffer.  With
    n a multiple of the parts, thread i takes part i // (n / parts) (whole rows
    for two threads), else every part; either way columns are split among the
    threads on one part."""
    cdef ColTask* t = <ColTask*>ctx
    cdef int p, p0 = 0, p1 = t.parts, m = n
    cdef Py_ssize_t j0, j1, w, r, d, lo, hi
    cdef float* buf
    if n % t.parts == 0:
        m = n // t.parts
        p0 = i // m
        p1 = p0 + 1
        i = i % m
    col_span(t.cols, i, m, &j0, &j1)
    w = j1 - j0
    if w <= 0:
        return
    for p in range(p0, p1):
        lo = block_start(<int>t.rows, t.parts, p)
        hi = block_start(<int>t.rows, t.parts, p + 1)
        if t.kind == SCATTER:
            # buf (D, cols) := 0, += each row at its id
            buf = t.scratch if p == 0 else t.extra + (p - 1) * t.D * t.cols
            for d in range(t.D):
                memset(buf + d * t.cols + j0, 0, w * sizeof(float))
            for r in range(lo, hi):
                add_row(buf + t.ids[r] * t.cols + j0, t.src + r * t.cols + j0, w)
        else:
            buf = t.out if p == 0 else t.extra + (p - 1) * t.cols
            memset(buf + j0, 0, w * sizeof(float))
            add_column_sums(buf + j0, t.src + lo * t.cols + j0, hi - lo, w, t.cols)


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


cdef inline void run_sum(ColTask* t, Py_ssize_t size, float* extra, Py_ssize_t n_extra,
                         int nthreads) noexcept nogil:
    """The parts' sums, then their total into out (see the header)."""
    t.extra = extra
    t.parts = sum_parts(t.rows, size, n_extra if extra != NULL else 0)
    if nthreads <= 1:
        # on the calling thread, without the pool's dispatch (a pass at B = 1
        # is ~100 µs)
        sum_part(t, 0, 1)
        if t.kind == SCATTER or t.parts > 1:
            col_part(t, 0, 1)
        return
    rnn_ext_parallel(sum_part, t, nthreads)
    if t.kind == SCATTER or t.parts > 1:
        run_cols(t, nthreads)


cdef inline void pscatter(float* out, float* scratch, const float* src,
                          const Py_ssize_t* ids, Py_ssize_t rows, Py_ssize_t cols,
                          Py_ssize_t D, float* extra, Py_ssize_t n_extra,
                          int nthreads) noexcept nogil:
    """out (cols, D) := Σ_r e_{ids[r]} ⊗ src[r], transposed: src (rows, cols).
    scratch: (D, cols) floats; extra: n_extra floats of scratch, or NULL
    (then one part); both overwritten."""
    cdef ColTask t
    t.kind, t.out, t.scratch, t.src, t.ids = SCATTER, out, scratch, src, ids
    t.rows, t.cols, t.D = rows, cols, D
    run_sum(&t, D * cols, extra, n_extra, nthreads)


cdef inline void pcolumn_sums(float* out, const float* src, Py_ssize_t rows, Py_ssize_t cols,
                              float* extra, Py_ssize_t n_extra, int nthreads) noexcept nogil:
    """out := src.sum(axis=0), src (rows, cols); extra as in pscatter"""
    cdef ColTask t
    t.kind, t.out, t.src, t.rows, t.cols = COLSUMS, out, src, rows, cols
    run_sum(&t, cols, extra, n_extra, nthreads)

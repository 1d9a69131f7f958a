# The large products of a pass on the pass's own threads.
#
# A pass that runs its recurrence on the thread pool of src/wsr.c (n threads,
# one barrier per step) runs its once-per-pass GEMMs (input projections, dW,
# dU, the output layer) on the same pool, the BLAS itself at one thread: C's
# rows (or columns) are always cut into the same PGEMM_PARTS runs of whole
# 32-row blocks, whatever n (also 1), and each part is one BLAS call on one
# thread.  Always the same parts, because OpenBLAS's result for an element
# depends on the shape of the call: a 32-row slice of a product differs in
# the last bits from the same rows of the whole.  So the pass's threads are
# the pool's alone (a BLAS's own workers, spinning between calls, would
# otherwise share the cores with the recurrence), and the results are the
# same bits for every thread count.  Cimported by the modules that link
# src/wsr.c only.
from cython cimport floating

from _blas cimport gemm
from _elementwise cimport add_row


cdef extern from "wsr.h" nogil:
    ctypedef void (*rnn_ext_task_fn)(void* ctx, int i, int n) noexcept nogil
    void rnn_ext_parallel(rnn_ext_task_fn fn, void* ctx, int nthreads)
    int rnn_ext_wsr_gemm_tn(int M, int N, int K, const float* A, ptrdiff_t lda, const float* B,
                            ptrdiff_t ldb, float* C, ptrdiff_t ldc)


# Products below this many flops run on the calling thread: splitting them
# costs more in waking a thread than it saves (~25 µs of work on one core).
cdef enum:
    PGEMM_MIN_FLOPS = 1 << 22
    PGEMM_BLOCK = 32
    PGEMM_PARTS = 2


cdef struct GemmTask:
    char ta
    char tb
    int M, N, K, lda, ldb, ldc
    bint dbl     # double (else float)
    bint rows    # split C's rows (else its columns)
    int parts
    double alpha, beta
    const char* A
    const char* B
    char* C


cdef inline int share(int total, int i, int n) noexcept nogil:
    """Where share i of n of total items starts: total*i/n, rounded down."""
    return <int>((<long long>total * i) // n)


cdef inline int block_start(int total, int parts, int p) noexcept nogil:
    """Where part p of parts of total rows starts: whole blocks of 32."""
    return min(PGEMM_BLOCK * share((total + PGEMM_BLOCK - 1) // PGEMM_BLOCK, p, parts), total)


cdef inline void gemm_part(void* ctx, int i, int n) noexcept nogil:
    """Thread i of n: parts [parts*i/n, parts*(i+1)/n) of C, one BLAS call each."""
    cdef GemmTask* g = <GemmTask*>ctx
    cdef int p
    for p in range(share(g.parts, i, n), share(g.parts, i + 1, n)):
        gemm_piece(g, p)


cdef inline void gemm_piece(const GemmTask* g, int p) noexcept nogil:
    """Part p of g.parts: C's rows (or columns) [lo, hi), whole blocks of 32."""
    cdef int total = g.M if g.rows else g.N
    cdef int lo = block_start(total, g.parts, p), hi = block_start(total, g.parts, p + 1)
    if lo >= hi:
        return
    cdef size_t item = sizeof(double) if g.dbl else sizeof(float)
    cdef const char* A = g.A
    cdef const char* B = g.B
    cdef char* C = g.C
    cdef int M = g.M, N = g.N
    if g.rows:
        # rows lo..hi of op(A): A's rows (no transpose) or columns (transposed)
        A += item * lo * (g.lda if g.ta == c'N' else 1)
        C += item * lo * g.ldc
        M = hi - lo
    else:
        # columns lo..hi of op(B): B's columns (no transpose) or rows (transposed)
        B += item * lo * (1 if g.tb == c'N' else g.ldb)
        C += item * lo
        N = hi - lo
    if g.dbl:
        gemm(g.ta, g.tb, M, N, g.K, g.alpha, <const double*>A, g.lda, <const double*>B, g.ldb,
             g.beta, <double*>C, g.ldc)
    else:
        gemm(g.ta, g.tb, M, N, g.K, <float>g.alpha, <const float*>A, g.lda, <const float*>B,
             g.ldb, <float>g.beta, <float*>C, g.ldc)


cdef inline void pgemm(int nthreads, char ta, char tb, int M, int N, int K, floating alpha,
                       const floating* A, int lda, const floating* B, int ldb,
                       floating beta, floating* C, int ldc) noexcept nogil:
    """gemm (src/_blas.pxd) on up to nthreads threads of the pass's pool.

    A large product is always cut into the same parts, whatever nthreads
    (also 1); a small one (below PGEMM_MIN_FLOPS) is one BLAS call.
    """
    cdef GemmTask g
    cdef bint rows = M >= N
    cdef int blocks = ((M if rows else N) + PGEMM_BLOCK - 1) // PGEMM_BLOCK
    cdef int parts = min(<int>PGEMM_PARTS, blocks)
    if parts <= 1 or nthreads <= 0 or 2.0 * M * N * K < PGEMM_MIN_FLOPS:
        gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
        return
    g.ta, g.tb, g.M, g.N, g.K, g.lda, g.ldb, g.ldc = ta, tb, M, N, K, lda, ldb, ldc
    g.dbl = floating is double
    g.rows = rows
    g.parts = parts
    g.alpha, g.beta = alpha, beta
    g.A, g.B, g.C = <const char*>A, <const char*>B, <char*>C
    rnn_ext_parallel(gemm_part, &g, min(nthreads, parts))


# A weight gradient, C = A.T @ B over all T*B rows (K of them) into a C of a
# few hundred rows: cutting C's rows or columns would have every part pack
# the whole of the other operand (K rows), so such a product is cut along K
# instead: PGEMM_PARTS fixed runs of whole 32-row blocks, part 0 into C, the
# others into scratch, then C += each in turn.  The same parts and the same
# final sums whatever the thread count (also 1), so the same bits.  In
# float32 each part is the recurrence path's own weight-gradient kernel where
# it has one for the shape (src/wsr.h: rnn_ext_wsr_gemm_tn), else the BLAS.

cdef struct SumTask:
    bint dbl
    int M, N, K, lda, ldb, ldc, parts
    const char* A
    const char* B
    char* C
    char* scratch   # (parts - 1) blocks of M*N, each row-major (M, N)


cdef inline void sum_piece(const SumTask* g, int p) noexcept nogil:
    """Part p: rows [lo, hi) of A and B, whole blocks of 32; into C or scratch."""
    cdef int lo = block_start(g.K, g.parts, p), hi = block_start(g.K, g.parts, p + 1)
    cdef size_t item = sizeof(double) if g.dbl else sizeof(float)
    cdef const char* A = g.A + item * lo * g.lda
    cdef const char* B = g.B + item * lo * g.ldb
    cdef char* C = g.C
    cdef int ldc = g.ldc
    if p > 0:
        C = g.scratch + item * (p - 1) * g.M * g.N
        ldc = g.N
    if g.dbl:
        gemm(c'T', c'N', g.M, g.N, hi - lo, 1.0, <const double*>A, g.lda, <const double*>B,
             g.ldb, 0.0, <double*>C, ldc)
    elif not rnn_ext_wsr_gemm_tn(g.M, g.N, hi - lo, <const float*>A, g.lda, <const float*>B,
                                 g.ldb, <float*>C, ldc):
        # the recurrence's path has no weight-gradient kernel: the BLAS
        gemm(c'T', c'N', g.M, g.N, hi - lo, <float>1, <const float*>A, g.lda,
             <const float*>B, g.ldb, <float>0, <float*>C, ldc)


cdef inline void sum_part(void* ctx, int i, int n) noexcept nogil:
    """Thread i of n: parts [parts*i/n, parts*(i+1)/n) of the K split."""
    cdef SumTask* g = <SumTask*>ctx
    cdef int p
    for p in range(share(g.parts, i, n), share(g.parts, i + 1, n)):
        sum_piece(g, p)


cdef inline void sum_add(void* ctx, int i, int n) noexcept nogil:
    """Thread i of n: rows [M*i/n, M*(i+1)/n) of C += every scratch part, in order."""
    cdef SumTask* g = <SumTask*>ctx
    cdef int r, p
    cdef Py_ssize_t s
    for p in range(1, g.parts):
        for r in range(share(g.M, i, n), share(g.M, i + 1, n)):
            s = (<Py_ssize_t>(p - 1) * g.M + r) * g.N
            if g.dbl:
                add_row(<double*>g.C + <Py_ssize_t>r * g.ldc, <const double*>g.scratch + s, g.N)
            else:
                add_row(<float*>g.C + <Py_ssize_t>r * g.ldc, <const float*>g.scratch + s, g.N)


cdef inline void pgemm_tn_sum(int nthreads, int M, int N, int K, const floating* A, int lda,
                              const floating* B, int ldb, floating* C, int ldc,
                              floating* scratch, Py_ssize_t scratch_len) noexcept nogil:
    """C := A.T @ B, row-major, A (K, M) and B (K, N): pgemm('T', 'N', ...) with
    beta 0, cut along K when K is long (at least twice M and N) and scratch
    holds (PGEMM_PARTS - 1) * M * N elements; as pgemm otherwise.

    scratch may be NULL (then as pgemm); its contents are overwritten.
    """
    cdef SumTask g
    cdef int parts = min(<int>PGEMM_PARTS, (K + PGEMM_BLOCK - 1) // PGEMM_BLOCK)
    if (parts <= 1 or nthreads <= 0 or scratch == NULL or 2.0 * M * N * K < PGEMM_MIN_FLOPS
            or K < 2 * M or K < 2 * N or <Py_ssize_t>(parts - 1) * M * N > scratch_len):
        pgemm(nthreads, c'T', c'N', M, N, K, <floating>1, A, lda, B, ldb, <floating>0, C, ldc)
        return
    g.dbl = floating is double
    g.M, g.N, g.K, g.lda, g.ldb, g.ldc, g.parts = M, N, K, lda, ldb, ldc, parts
    g.A, g.B, g.C, g.scratch = <const char*>A, <const char*>B, <char*>C, <char*>scratch
    rnn_ext_parallel(sum_part, &g, min(nthreads, parts))
    rnn_ext_parallel(sum_add, &g, min(nthreads, parts))

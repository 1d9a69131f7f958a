# The one BLAS shim of rnn_ext.
#
# Every array in rnn_ext is row-major; Fortran BLAS is column-major.  A
# row-major (M, N) matrix is the column-major (N, M) matrix of its transpose,
# so C = op(A) op(B) in row-major is C^T = op(B)^T op(A)^T in column-major:
# the operands swap and the transpose flags stay.  That swap happens here and
# nowhere else.  BLAS comes from scipy.linalg.cython_blas: no link step, the
# same on every platform.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(char ta, char tb, int M, int N, int K, floating alpha,
                      const floating* A, int lda, const floating* B, int ldb,
                      floating beta, floating* C, int ldc) noexcept nogil:
    """C := alpha op(A) op(B) + beta C, row-major; C is (M, N), op(A) (M, K)."""
    if floating is float:
        sgemm(&tb, &ta, &N, &M, &K, &alpha, <float*>B, &ldb, <float*>A, &lda,
              &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &N, &M, &K, &alpha, <double*>B, &ldb, <double*>A, &lda,
              &beta, C, &ldc)


cdef inline void gemv(char ta, int M, int N, floating alpha, const floating* A,
                      int lda, const floating* x, floating beta,
                      floating* y) noexcept nogil:
    """y := alpha op(A) x + beta y, row-major A of shape (M, N), unit strides."""
    # Row-major A is column-major A^T: no-transpose here is 'T' for BLAS.
    cdef char t = c'T' if ta == c'N' else c'N'
    cdef int one = 1
    if floating is float:
        sgemv(&t, &N, &M, &alpha, <float*>A, &lda, <float*>x, &one, &beta, y, &one)
    else:
        dgemv(&t, &N, &M, &alpha, <double*>A, &lda, <double*>x, &one, &beta, y, &one)

"""The weight-gradient product C = A.T @ B (src/wsr.h: rnn_ext_wsr_gemm_tn).

Paths with a kernel of their own (AVX-512 and AVX2) must give, for shapes
around every tile and block edge, exactly the integer result when every
product and partial sum is an integer below 2^24 (so any misplaced row,
column or k step shows), and on random data a result within the float32
bound of a K-term dot product, K u sum_k |a_k b_k|.  Paths without one, and
the shapes the kernel leaves to the BLAS, return None.  The whole pass with
this kernel is checked against the oracle and across thread counts by the
pass's own tests (test_kernel_vs_oracle.py, test_pool_threads.py).
"""

import os

import numpy as np
import pytest

from rnn_ext import _wsr

FORCED = os.environ.get("RNN_EXT_SIMD")
PATHS = (FORCED,) if FORCED else _wsr.available_paths()
WITH_KERNEL = {"avx512", "avx2"}
U32 = 2.0**-24

# K around the 128-row blocks, M around the 8-row tiles, N around the 32-column panels
SHAPES = [(K, M, N) for K in (1, 2, 127, 128, 129, 300) for M in (1, 5, 8, 9, 65)
          for N in (1, 15, 16, 17, 32, 33, 70)]


KERNEL_PATHS = [p for p in PATHS if p in WITH_KERNEL]


def _use(name):
    before = _wsr.path()
    _wsr.set_path(name)
    return before


@pytest.fixture(params=PATHS)
def path(request):
    before = _use(request.param)
    yield request.param
    _wsr.set_path(before)


@pytest.fixture(params=KERNEL_PATHS)
def kernel_path(request):
    before = _use(request.param)
    yield request.param
    _wsr.set_path(before)


def small_ints(rng, shape):
    return rng.integers(-3, 4, size=shape).astype(np.float32)


def test_paths_without_a_kernel_leave_it_to_the_blas(path):
    A = np.ones((40, 8), np.float32)
    B = np.ones((40, 8), np.float32)
    got = _wsr.gemm_tn(A, B)
    if path in WITH_KERNEL:
        np.testing.assert_array_equal(got, np.full((8, 8), 40.0, np.float32))
    else:
        assert got is None


@pytest.mark.parametrize("K, M, N", SHAPES)
def test_exact_on_integers(kernel_path, K, M, N):
    rng = np.random.default_rng(K * 10_000 + M * 100 + N)
    A, B = small_ints(rng, (K, M)), small_ints(rng, (K, N))
    A_in, B_in = A.copy(), B.copy()
    want = A.astype(np.int64).T @ B.astype(np.int64)
    got = _wsr.gemm_tn(A, B)
    assert got.shape == (M, N) and got.dtype == np.float32
    np.testing.assert_array_equal(got.astype(np.int64), want)
    # the inputs are only read
    np.testing.assert_array_equal(A, A_in)
    np.testing.assert_array_equal(B, B_in)


@pytest.mark.parametrize("K, M, N", [(6400, 65, 512), (3200, 512, 512), (1000, 128, 700),
                                     (777, 33, 97), (300, 256, 1024)])
def test_within_the_dot_product_bound(kernel_path, K, M, N):
    rng = np.random.default_rng(K + M + N)
    # magnitudes over several binades, both signs
    A = (rng.standard_normal((K, M)) * np.exp(rng.uniform(-3, 3, (K, M)))).astype(np.float32)
    B = (rng.standard_normal((K, N)) * np.exp(rng.uniform(-3, 3, (K, N)))).astype(np.float32)
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    got = _wsr.gemm_tn(A, B).astype(np.float64)
    err = np.abs(got - A64.T @ B64)
    bound = 1.01 * K * U32 * (np.abs(A64).T @ np.abs(B64))
    assert np.all(err <= bound), float(np.max(err / bound))


@pytest.mark.parametrize("K, M, N", [(3200, 1024, 256), (64, 513, 8), (64, 512, 513)])
def test_shapes_it_leaves_to_the_blas(path, K, M, N):
    # more than 512 rows, or C above 2^18 floats: OpenBLAS is faster there
    A = np.zeros((K, M), np.float32)
    B = np.zeros((K, N), np.float32)
    assert _wsr.gemm_tn(A, B) is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="as many rows"):
        _wsr.gemm_tn(np.zeros((3, 2), np.float32), np.zeros((4, 2), np.float32))
    with pytest.raises((TypeError, ValueError)):
        _wsr.gemm_tn(np.zeros((3, 2), np.float64), np.zeros((3, 2), np.float32))
